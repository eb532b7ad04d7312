"""The job records: ``jobs.sqlite`` in the jobs directory (schema, connections, write transactions, queries)
and each job's folder ``job_NNNNN/``, as :class:`Job` and :class:`Progress` values.

Every call opens its own connection and every state change runs in a ``BEGIN IMMEDIATE`` transaction, so
several threads and processes (the app, the command line, every job's supervisor) may use one store at once;
the journal is in WAL mode, so readers never wait for the writer. A process that must not die of a lock held
longer than the busy timeout (``RESATTN_JOBS_DB_TIMEOUT``, 30 s) — a supervisor — writes with
:meth:`JobStore.retrying`, which waits it out.

Job ids and folders are never reused: a new database (the old one deleted) numbers its jobs after the highest
``job_NNNNN`` folder, so a trainer orphaned by the deletion can only ever write into its own folder. A succeeded
job's folder also holds ``result.json``: :func:`succeeded_checkpoints` lists the trained models from these files,
so the pages that only offer models never open the database (and never wait for its lock). Standard library only.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .config import ACTIVE, DB_NAME, LOG_NAME, JobError, jobs_dir

_T = TypeVar("_T")
ENV_DB_TIMEOUT = "RESATTN_JOBS_DB_TIMEOUT"
RESULT_NAME = "result.json"
_FOLDER = re.compile(r"job_(\d+)")


def database_problem(root: Path, exc: sqlite3.DatabaseError) -> str:
    """What to tell a person about an error of the jobs database (the command line and the Train page)."""
    path = root / DB_NAME
    if "locked" in str(exc) or "busy" in str(exc):
        return f"the jobs database {path} is locked by another process ({exc}); try again in a moment"
    return (f"the jobs database {path} cannot be used ({exc}). Move it aside to start a new one: the job folders "
            "are kept, and new jobs are numbered after them")


def db_timeout() -> float:
    """Seconds a connection waits for a lock before ``database is locked`` (``RESATTN_JOBS_DB_TIMEOUT``, 30)."""
    try:
        return max(0.0, float(os.environ.get(ENV_DB_TIMEOUT, 30)))
    except ValueError:
        return 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    state TEXT NOT NULL,
    label TEXT NOT NULL,
    options TEXT NOT NULL,
    owner TEXT,
    grp TEXT,
    device TEXT NOT NULL,
    nproc INTEGER NOT NULL DEFAULT 1,
    threads INTEGER,
    folder TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    ended REAL,
    pid INTEGER,
    pid_start INTEGER,
    trainer_pid INTEGER,
    trainer_start INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    returncode INTEGER,
    error TEXT,
    max_seconds REAL
);
"""
#: Columns added since the first schema, with their types: added to an older database when it is opened.
_ADDED = {"max_seconds": "REAL"}


def patiently(action: Callable[[], _T], pause: float = 1.0, say: Callable[[str], object] = print) -> _T:
    """``action()``, tried again every ``pause`` seconds while it fails because the database is locked (said once
    through ``say``); any other error is raised."""
    warned = False
    while True:
        try:
            return action()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if not warned:
                say(f"[resattn.jobs] the jobs database is locked ({exc}); trying again every {pause:g} s")
                warned = True
            time.sleep(pause)


@dataclass
class Progress:
    """How far a job is: from the trainer's ``metrics.jsonl`` (per epoch) and its progress bar in the log."""

    fraction: float = 0.0  # 0–1
    iteration: int = 0
    iterations: int | None = None
    epoch: int = 0  # epochs finished
    epochs: int | None = None
    eta_s: float | None = None
    rate: float | None = None  # iterations per second


@dataclass
class Job:
    """One job's record (a row of ``jobs.sqlite``)."""

    id: int
    state: str
    label: str
    options: list[str]
    owner: str | None
    group: str | None
    device: str
    nproc: int
    threads: int | None
    folder: Path
    created: float
    started: float | None = None
    ended: float | None = None
    pid: int | None = None
    pid_start: int | None = None
    trainer_pid: int | None = None
    trainer_start: int | None = None
    cancel_requested: bool = False
    returncode: int | None = None
    error: str | None = None
    max_seconds: float | None = None  # wall time the job may run (its supervisor stops it then)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def device_label(self) -> str:
        if self.device == "cuda":
            return "cuda" if self.nproc == 1 else f"cuda ×{self.nproc} (torchrun)"
        return f"cpu ({self.threads} thread{'s' if self.threads != 1 else ''})" if self.threads else "cpu"

    @property
    def checkpoint_path(self) -> Path:
        """Where the trainer writes the job's checkpoint."""
        return self.folder / f"job-{self.id}.safetensors"

    @property
    def checkpoint(self) -> Path | None:
        """The trained checkpoint of a succeeded job, else None."""
        path = self.checkpoint_path
        return path if self.state == "succeeded" and path.is_file() else None

    @property
    def log_path(self) -> Path:
        return self.folder / LOG_NAME

    def to_dict(self, progress: Progress | None = None) -> dict[str, Any]:
        """The JSON form (``list --json``, ``show --json``)."""
        p = progress or Progress()
        return {
            "id": self.id, "state": self.state, "label": self.label, "device": self.device, "nproc": self.nproc,
            "threads": self.threads, "progress": round(p.fraction, 4), "iteration": p.iteration,
            "iterations": p.iterations, "epoch": p.epoch, "epochs": p.epochs,
            "eta_s": None if p.eta_s is None else round(p.eta_s, 1),
            "checkpoint": str(self.checkpoint) if self.checkpoint else None, "error": self.error,
            "created": self.created, "started": self.started, "ended": self.ended, "group": self.group,
            "folder": str(self.folder), "options": self.options,
        }


_COLUMNS = ("id", "state", "label", "options", "owner", "grp", "device", "nproc", "threads", "folder", "created",
            "started", "ended", "pid", "pid_start", "trainer_pid", "trainer_start", "cancel_requested", "returncode",
            "error", "max_seconds")
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM jobs"


def _job(row: Sequence[Any], root: Path) -> Job:
    values = dict(zip(_COLUMNS, row))
    values["options"] = json.loads(values["options"])
    values["group"] = values.pop("grp")
    values["folder"] = root / values["folder"]
    values["cancel_requested"] = bool(values["cancel_requested"])
    return Job(**values)


class JobStore:
    """The jobs of one jobs directory ``root``: the database ``root/jobs.sqlite`` (created on first use) and the
    job folders ``root/job_NNNNN/``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.db_path.exists():  # a deleted database's journal must not bring its rows back
            for suffix in ("-wal", "-shm"):
                Path(f"{self.db_path}{suffix}").unlink(missing_ok=True)
        conn = self.connect(create=True)
        try:
            conn.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer
            conn.executescript(_SCHEMA)
            have = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
            for name, kind in _ADDED.items():
                if name not in have:
                    conn.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")
            self._number_after_folders(conn)
            for job in self.select(conn, "WHERE state = 'succeeded'"):  # jobs that succeeded before result files
                if job.checkpoint is not None and not (job.folder / RESULT_NAME).exists():
                    write_result(job)
        finally:
            conn.close()

    def _number_after_folders(self, conn: sqlite3.Connection) -> None:
        """Start a new database's ids after the highest ``job_NNNNN`` folder already here (ids and folders are
        never reused: an orphaned trainer of a deleted database writes only into its own folder)."""
        highest = max((int(m.group(1)) for p in self.root.iterdir() if (m := _FOLDER.match(p.name))), default=0)
        if not highest:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'jobs'").fetchone()
            if row is None:
                conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('jobs', ?)", (highest,))
            elif row[0] < highest:
                conn.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'jobs'", (highest,))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @property
    def db_path(self) -> Path:
        return self.root / DB_NAME

    def connect(self, create: bool = False) -> sqlite3.Connection:
        """A new connection in autocommit mode (transactions are explicit: :meth:`transaction`). Only the store's
        constructor creates the database file: a process that outlived a deleted database gets
        ``sqlite3.OperationalError`` instead of a new, empty one."""
        where = f"{self.db_path.resolve().as_uri()}?mode={'rwc' if create else 'rw'}"
        return sqlite3.connect(where, timeout=db_timeout(), isolation_level=None, uri=True)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: one writer at a time across processes, so state changes never interleave."""
        conn = self.connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            conn.close()

    def retrying(self, action: Callable[[sqlite3.Connection], _T], pause: float = 1.0) -> _T:
        """``action(conn)`` in a write transaction, tried again after ``pause`` seconds for as long as the
        database is locked: a lock held longer than the busy timeout delays a supervisor, it does not kill it."""

        def once() -> _T:
            with self.transaction() as conn:
                return action(conn)

        return patiently(once, pause)

    def select(self, conn: sqlite3.Connection, where: str = "", args: Sequence[Any] = ()) -> list[Job]:
        """The jobs matching an SQL ``WHERE``/``ORDER BY`` tail, read on ``conn``."""
        return [_job(row, self.root) for row in conn.execute(f"{_SELECT} {where}", args).fetchall()]

    def find(self, conn: sqlite3.Connection, job_id: int) -> Job | None:
        """Job ``job_id`` read on ``conn``, or None if there is none."""
        found = self.select(conn, "WHERE id = ?", (int(job_id),))
        return found[0] if found else None

    def update(self, conn: sqlite3.Connection, job_id: int, **values: Any) -> None:
        """Set columns of job ``job_id`` (inside the caller's transaction)."""
        names = ", ".join(f"{k} = ?" for k in values)
        conn.execute(f"UPDATE jobs SET {names} WHERE id = ?", [*values.values(), job_id])

    def read(self, where: str = "", args: Sequence[Any] = ()) -> list[Job]:
        """:meth:`select` on a connection of its own (no transaction: a consistent snapshot, no lock)."""
        conn = self.connect()
        try:
            return self.select(conn, where, args)
        finally:
            conn.close()

    def get(self, job_id: int) -> Job:
        """One job; :class:`JobError` if there is none with that id."""
        found = self.read("WHERE id = ?", (int(job_id),))
        if not found:
            raise JobError(f"there is no job {job_id} in {self.root}")
        return found[0]

    def count(self, states: Sequence[str] = ("queued",), owner: str | None = None) -> int:
        """How many jobs are in one of ``states`` (of owner ``owner`` only, when given)."""
        marks = ", ".join("?" * len(states))
        where, args = f"state IN ({marks})", list(states)
        if owner is not None:
            where, args = where + " AND owner = ?", args + [owner]
        conn = self.connect()
        try:
            return conn.execute(f"SELECT COUNT(*) FROM jobs WHERE {where}", args).fetchone()[0]
        finally:
            conn.close()

    def count_queued(self, owner: str | None = None) -> int:
        """How many jobs are queued (of owner ``owner`` only, when given)."""
        return self.count(("queued",), owner)

    def insert(self, conn: sqlite3.Connection, *, label: str, owner: str | None, group: str | None, device: str,
               nproc: int, threads: int | None, max_seconds: float | None = None) -> tuple[int, Path]:
        """Add a queued job's row and make its empty folder ``job_NNNNN``; returns (id, folder). Its options
        are recorded by :meth:`record` once they are final (they may name files in the folder)."""
        cur = conn.execute(
            "INSERT INTO jobs (state, label, options, owner, grp, device, nproc, threads, folder, created, "
            "max_seconds) VALUES ('queued', ?, '[]', ?, ?, ?, ?, ?, '', ?, ?)",
            (label, owner, group, device, nproc, threads, time.time(), max_seconds),
        )
        job_id = int(cur.lastrowid)  # type: ignore[arg-type]
        folder = self.root / f"job_{job_id:05d}"
        try:
            folder.mkdir(parents=True)  # never an existing folder: another job's trainer may still write there
        except FileExistsError:
            raise JobError(f"{folder} already exists; a job folder is never reused (move it away)") from None
        return job_id, folder

    def record(self, conn: sqlite3.Connection, folder: Path, request: dict[str, Any]) -> Job:
        """Record a new job's final ``request["options"]`` and write ``request`` (what was asked) to its
        ``job.json``; returns the job."""
        job_id = request["id"]
        self.update(conn, job_id, options=json.dumps(request["options"]), folder=folder.name)
        (folder / "job.json").write_text(json.dumps(request, indent=2) + "\n")
        return self.select(conn, "WHERE id = ?", (job_id,))[0]


def write_result(job: Job) -> None:
    """Record in a succeeded job's folder that it succeeded (``result.json``), for :func:`succeeded_checkpoints`."""
    tmp = job.folder / f".{RESULT_NAME}.tmp"
    tmp.write_text(json.dumps({"id": job.id, "state": "succeeded", "checkpoint": job.checkpoint_path.name,
                               "label": job.label}) + "\n")
    os.replace(tmp, job.folder / RESULT_NAME)


def succeeded_checkpoints(root: str | os.PathLike[str] | None = None) -> list[tuple[int, Path]]:
    """(job id, checkpoint) of every succeeded job, newest first, from the jobs' ``result.json`` files: the
    database is never opened (nor a folder created), so a locked or broken one costs a model picker nothing."""
    root = jobs_dir(root)
    found = []
    for result in root.glob(f"job_*/{RESULT_NAME}"):
        try:
            record = json.loads(result.read_text())
            checkpoint = result.parent / Path(str(record["checkpoint"])).name
            job_id = int(record["id"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if record.get("state") == "succeeded" and checkpoint.is_file():
            found.append((job_id, checkpoint))
    return sorted(found, reverse=True)
