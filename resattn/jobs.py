"""Fine-tuning jobs in the background: ``python -m resattn.jobs --help``.

A job is one run of ``python -m resattn.train`` in its own OS process and process group, so it survives a
browser reload or a restart of the Streamlit server, and cannot freeze the app. Records live in SQLite
(``jobs.sqlite`` in the jobs directory: ``RESATTN_JOBS_DIR``, default ``~/.cache/resattn/jobs``); every job has
its own folder ``job_NNNNN/``: ``job.json`` (what was asked), the trainer's ``config.json``, ``metrics.jsonl``,
``snapshots/epoch_NNN.npz`` (probe masks), the checkpoint ``job-N.safetensors`` (named after the job, so it is
recognisable in a model picker or once copied elsewhere), the log ``train.log`` and, for an uploaded zip, the
checked and extracted ``data/``.

Scheduling, without a server process:

* each running job has a small **supervisor** (``_supervise ID``, started detached with its own session). It
  starts the trainer (its own session too), waits for it, records the outcome — succeeded, failed with the log's
  tail, or cancelled — and then starts the next queued job, so the queue drains with no browser open. The
  supervisor runs ``jobs.py`` by path with ``python -I`` and imports only the standard library (about 15 MB
  resident instead of torch's ~700 MB);
* :meth:`JobManager.reconcile` runs whenever a manager starts, lists jobs or submits: a ``running`` job whose
  supervisor is gone (killed, out of memory, machine restart) is marked failed — a process is identified by
  its pid *and* its start time from ``/proc/<pid>/stat``, so a reused pid is not taken for the job — and queued
  jobs are started while fewer than ``max_running`` (``RESATTN_JOBS_MAX_RUNNING``, default 1) run;
* cancel sets a flag and sends SIGTERM to the trainer's process group (the trainer saves and stops after the
  current step); the supervisor sends SIGKILL to the group and every descendant (``torchrun`` workers start
  their own sessions) after :data:`CANCEL_GRACE_S` seconds. The log is kept.

Device: CUDA when ``torch.cuda.is_available()`` (the trainer's bf16 / channels_last path), through
``python -m torch.distributed.run --standalone --nproc_per_node N`` (torchrun) when there are N > 1 GPUs; else
the CPU with ``--threads max(1, cores − 1)`` at niceness 10, leaving a core to the app. The device is recorded.

Data: ``--data`` may name a configured dataset (``RESATTN_DATASETS="cifar10=/data/cifar10-jpeg.zip,
imagenette=/data/imagenette-224.zip"``), any path the trainer accepts, or ``--upload ZIP``: an untrusted zip
checked and extracted by :mod:`resattn.archive` into the job's folder before the job is queued. Datasets are
decoded once into ``RESATTN_DATA_CACHE`` (default ``~/.cache/resattn/data``) and shared by every job.

Who may start and stop jobs (the Train page; the command line is trusted): with a passphrase set
(``RESATTN_JOBS_PASSPHRASE`` or the Streamlit secret ``jobs_passphrase``), submitting and cancelling need it and
its holders may cancel any job; without one, anyone may submit and a session cancels only the jobs it started.
A session may have at most ``RESATTN_JOBS_MAX_QUEUED`` (default 3) queued jobs.
"""

from __future__ import annotations

import argparse
import hmac
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "STATES", "ACTIVE", "Job", "Progress", "JobError", "JobManager", "jobs_dir", "configured_datasets",
    "detect_device", "cpu_threads", "trainer_command", "fine_tune_options", "counterpart", "describe_options",
    "passphrase_matches", "submit_refusal", "cancel_refusal", "succeeded_checkpoints", "process_start",
    "process_alive", "main",
]

#: Every state a job can be in; ``queued`` and ``running`` are active, the others final.
STATES = ("queued", "running", "succeeded", "failed", "cancelled")
ACTIVE = ("queued", "running")
DB_NAME = "jobs.sqlite"
LOG_NAME = "train.log"
#: Seconds between SIGTERM and SIGKILL when a job is cancelled.
CANCEL_GRACE_S = 5.0
#: Niceness of CPU jobs, so the app (and its Explore latency) comes first on a small machine.
CPU_NICENESS = 10
#: Trainer options that name paths: made absolute at submission, since the trainer runs in the job's folder.
PATH_OPTIONS = ("--data", "--init-from", "--cache-dir")
#: Trainer options the job system sets itself.
MANAGED_OPTIONS = ("--out", "--state-dir", "--checkpoint", "--resume", "--progress")
ENV_DIR, ENV_DATASETS, ENV_PASSPHRASE = "RESATTN_JOBS_DIR", "RESATTN_DATASETS", "RESATTN_JOBS_PASSPHRASE"
ENV_MAX_RUNNING, ENV_MAX_QUEUED = "RESATTN_JOBS_MAX_RUNNING", "RESATTN_JOBS_MAX_QUEUED"
ENV_DATA_CACHE = "RESATTN_DATA_CACHE"
HERE = Path(__file__).resolve()

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
    error TEXT
);
"""


class JobError(RuntimeError):
    """A job request cannot be carried out; the message says why."""


# ---------------------------------------------------------------------------------------------- configuration


def jobs_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """The jobs directory: ``path``, else ``RESATTN_JOBS_DIR``, else ``~/.cache/resattn/jobs``."""
    return Path(path or os.environ.get(ENV_DIR) or Path.home() / ".cache" / "resattn" / "jobs").expanduser()


def configured_datasets(text: str | None = None) -> dict[str, str]:
    """``RESATTN_DATASETS`` (``name=path,name=path``) as a dict; entries without ``=`` are ignored."""
    text = os.environ.get(ENV_DATASETS, "") if text is None else text
    found: dict[str, str] = {}
    for item in text.split(","):
        name, sep, path = item.partition("=")
        if sep and name.strip() and path.strip():
            found[name.strip()] = os.path.expanduser(path.strip())
    return found


def cpu_threads() -> int:
    """Threads for a CPU job: every core but one, which stays with the app."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


def detect_device(requested: str = "auto") -> tuple[str, int]:
    """(``"cuda"``, GPU count) when CUDA is available and not refused, else (``"cpu"``, 1)."""
    if requested == "cpu":
        return "cpu", 1
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if requested == "cuda" and not count:
        raise JobError("--device cuda was asked for, but CUDA is not available on this machine")
    return ("cuda", count) if count else ("cpu", 1)


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


# ---------------------------------------------------------------------------------------------- processes


def _proc_stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, ppid, process group, start time in clock ticks since boot) from ``/proc/<pid>/stat``."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses
    return fields[0], int(fields[1]), int(fields[2]), int(fields[19])


_HAS_PROC = Path("/proc/self/stat").exists()


def process_start(pid: int | None) -> int | None:
    """The start time of a live process (clock ticks since boot; 0 without ``/proc``), or None if it is gone or
    a zombie. (pid, start time) names one process even after its pid is reused."""
    if not pid:
        return None
    if not _HAS_PROC:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return 0
    stat = _proc_stat(pid)
    return None if stat is None or stat[0] in "ZXx" else stat[3]


def process_alive(pid: int | None, start: int | None) -> bool:
    """Whether process ``pid`` still runs and is the one that started at ``start`` (not a reused pid)."""
    now = process_start(pid)
    return now is not None and (start is None or not _HAS_PROC or now == start)


def _descendants(pid: int) -> list[tuple[int, int]]:
    """(pid, start time) of every live descendant of ``pid`` (torchrun's workers run in their own sessions)."""
    if not _HAS_PROC:
        return []
    children: dict[int, list[tuple[int, int]]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _proc_stat(int(entry))
            if stat is not None and stat[0] not in "ZXx":
                children.setdefault(stat[1], []).append((int(entry), stat[3]))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child[0])
    return found


def _signal_group(pid: int, sig: int) -> None:
    """Send ``sig`` to the process group led by ``pid``, if it still has members."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_tree(pid: int, start: int | None, sig: int, known: Sequence[tuple[int, int]] = ()) -> None:
    """Signal ``pid``'s process group and every descendant's group (each checked against its start time)."""
    tree = list(known)
    if process_alive(pid, start):
        tree += _descendants(pid)
        _signal_group(pid, sig)
    for child, child_start in tree:
        if process_alive(child, child_start):
            try:
                os.killpg(os.getpgid(child), sig)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                os.kill(child, sig)
            except (ProcessLookupError, PermissionError):
                pass


def _exited(proc: subprocess.Popen) -> bool:
    """Whether a child has exited, *without reaping it* where the OS allows (``waitid`` with ``WNOWAIT``): until
    it is reaped its pid, and so its process-group id, cannot be reused, so the group can still be signalled."""
    if hasattr(os, "waitid"):
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None
    return proc.poll() is not None


_CHILDREN: list[subprocess.Popen] = []  # supervisors this process started: reaped in reconcile()
_CHILDREN_LOCK = threading.Lock()


def _reap_children() -> None:
    with _CHILDREN_LOCK:
        _CHILDREN[:] = [p for p in _CHILDREN if p.poll() is None]


# ---------------------------------------------------------------------------------------------- commands


def _option(options: Sequence[str], name: str) -> str | None:
    """The value of ``--name VALUE`` or ``--name=VALUE`` in an option list (the last one wins), else None."""
    value = None
    for i, item in enumerate(options):
        if item == name and i + 1 < len(options):
            value = options[i + 1]
        elif item.startswith(name + "="):
            value = item.split("=", 1)[1]
    return value


def _without(options: Sequence[str], name: str) -> list[str]:
    """``options`` without ``--name VALUE`` / ``--name=VALUE``."""
    out, skip = [], False
    for item in options:
        if skip:
            skip = False
        elif item == name:
            skip = True
        elif not item.startswith(name + "="):
            out.append(item)
    return out


def trainer_command(
    options: Sequence[str], folder: str | os.PathLike[str], device: str = "cpu", nproc: int = 1,
    threads: int | None = None, python: str = sys.executable, checkpoint: str | os.PathLike[str] | None = None,
) -> list[str]:
    """The command a supervisor runs: ``resattn.train`` with the job's options, writing into ``folder`` (the
    checkpoint to ``checkpoint``, default ``folder/model.safetensors``).

    ``device="cuda"`` with ``nproc`` > 1 runs under torchrun (``python -m torch.distributed.run --standalone
    --nproc_per_node N``, the same program as the ``torchrun`` script); a CPU job gets ``--threads``.
    """
    folder = Path(folder)
    extra = ["--out", str(folder), "--state-dir", str(folder / "state"), "--progress", "bar"]
    if checkpoint is not None:
        extra += ["--checkpoint", str(checkpoint)]
    if _option(options, "--device") is None:
        extra += ["--device", device]
    if device == "cpu" and threads and _option(options, "--threads") is None:
        extra += ["--threads", str(threads)]
    train = ["-m", "resattn.train", *options, *extra]
    if device == "cuda" and nproc > 1:
        return [python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *train]
    return [python, *train]


def trainer_env(device: str, threads: int | None, base: dict[str, str] | None = None) -> dict[str, str]:
    """The trainer's environment: ``resattn`` importable from this checkout, one progress line per second in the
    log, unbuffered output, the thread cap on a CPU, and no job-system secrets."""
    env = dict(os.environ if base is None else base)
    env.pop(ENV_PASSPHRASE, None)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE.parents[1]), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env["TQDM_MININTERVAL"] = "1"
    if device == "cpu" and threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def fine_tune_options(
    base: str | os.PathLike[str] | None,
    data: str | None,
    *,
    train_only: str = "stage3",
    epochs: float = 1.0,
    lr: float | None = 0.05,
    classes: Sequence[str] | None = None,
    label_noise: float = 0.0,
    batch_size: int | None = None,
    train_limit: int | None = None,
    test_limit: int | None = None,
    probe: int = 4,
    seed: int = 0,
    extra: Sequence[str] = (),
) -> list[str]:
    """Trainer options for the presets of the Train page: fine-tune ``base`` (``--init-from``) training only
    ``train_only`` (``stage3``: the last stage and the classifier; ``all``; ``head``), on a subset of
    ``classes``, with label noise at ``label_noise`` (the paper's Table 5 protocol), writing the masks of
    ``probe`` fixed test images after every epoch."""
    options: list[str] = []
    if base is not None:
        options += ["--init-from", str(base)]
    if data is not None:
        options += ["--data", str(data)]
    options += ["--train-only", train_only, "--epochs", f"{epochs:g}", "--seed", str(seed), "--probe", str(probe)]
    if lr is not None:
        options += ["--lr", f"{lr:g}"]
    if classes:
        options += ["--classes", ",".join(classes)]
    if label_noise:
        options += ["--label-noise", f"{label_noise:g}"]
    for name, value in (("--batch-size", batch_size), ("--train-limit", train_limit), ("--test-limit", test_limit)):
        if value:
            options += [name, str(value)]
    return options + list(extra)


def describe_options(options: Sequence[str], upload: str | None = None) -> str:
    """A one-line label for a job: what is trained, from what, on what."""
    parts = []
    base = _option(options, "--init-from")
    parts.append(f"from {Path(base).stem}" if base else f"{_option(options, '--model') or 'attention56_cifar'} "
                 f"from scratch ({(_option(options, '--learning') or 'arl').upper()})")
    trained = _option(options, "--train-only") or "all"
    parts.append({"stage3": "last stage", "head": "classifier only"}.get(trained, "whole network"))
    data = _option(options, "--data") or "cifar10"
    parts.append(f"on uploaded {upload}" if upload else
                 f"on {Path(data).name.removesuffix('.zip') if os.sep in data or data.endswith('.zip') else data}")
    classes = _option(options, "--classes")
    if classes:
        parts.append(f"{len([c for c in classes.split(',') if c.strip()])} classes")
    noise = _option(options, "--label-noise")
    if noise and float(noise) > 0:
        parts.append(f"label noise {float(noise):g}")
    epochs = _option(options, "--epochs")
    if epochs:
        parts.append(f"{float(epochs):g} epoch{'s' if float(epochs) != 1 else ''}")
    return " · ".join(parts)


def counterpart(checkpoint: str | os.PathLike[str], candidates: Sequence[str | os.PathLike[str]]) -> Path | None:
    """The checkpoint among ``candidates`` that matches ``checkpoint`` (same model, dataset and overrides)
    except for ARL vs NAL, or None. The ARL/NAL pair from checkpoints is fine-tuned from both."""
    from .checkpoint import CheckpointError, read_meta

    meta = read_meta(checkpoint)
    mine = dict(meta.get("overrides") or {})
    learning = mine.pop("learning", "arl")
    for candidate in candidates:
        if Path(candidate).resolve() == Path(checkpoint).resolve():
            continue
        try:
            other = read_meta(candidate)
        except CheckpointError:
            continue
        theirs = dict(other.get("overrides") or {})
        if (other.get("model") == meta.get("model") and other.get("dataset") == meta.get("dataset")
                and theirs.pop("learning", "arl") != learning and theirs == mine):
            return Path(candidate)
    return None


# ---------------------------------------------------------------------------------------------- records


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
            "error")


def _job(row: Sequence[Any], root: Path) -> Job:
    values = dict(zip(_COLUMNS, row))
    values["options"] = json.loads(values["options"])
    values["group"] = values.pop("grp")
    values["folder"] = root / values["folder"]
    values["cancel_requested"] = bool(values["cancel_requested"])
    return Job(**values)


# ---------------------------------------------------------------------------------------------- log and metrics

_PLAN = re.compile(r"(\d+) iterations \((\d+) per epoch, (\d+) epochs\)")
_BAR = re.compile(r"epoch (\d+)/(\d+):\s*\d+%\|[^|]*\|\s*(\d+)/(\d+) \[[^\]]*?,\s*([\d.]+)(it/s|s/it)")


def _read_head(path: Path, size: int = 32 * 1024) -> str:
    try:
        with path.open("rb") as fh:
            return fh.read(size).decode("utf-8", "replace")
    except OSError:
        return ""


def _read_tail(path: Path, size: int = 64 * 1024) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - size))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def clean_log(text: str) -> list[str]:
    """Log lines as a terminal would show them: of a line rewritten with carriage returns (a progress bar), the
    last non-blank version."""
    lines = []
    for line in text.splitlines():
        pieces = [p for p in line.split("\r") if p.strip()]
        if pieces:
            lines.append(pieces[-1].rstrip())
    return lines


def read_metrics(folder: Path) -> list[dict[str, Any]]:
    """The trainer's ``metrics.jsonl`` lines (one per epoch); a half-written last line is skipped."""
    try:
        text = (folder / "metrics.jsonl").read_text()
    except OSError:
        return []
    rows = []
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return rows


# ---------------------------------------------------------------------------------------------- the manager


class JobManager:
    """Submit, list, watch and cancel jobs kept in ``root/jobs.sqlite``; every method is safe to call from
    several threads and processes at once (SQLite transactions; one connection per call)."""

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        max_running: int | None = None,
        reconcile: bool = True,
        cache_dir: str | os.PathLike[str] | None = None,
        limits: Any = None,
    ) -> None:
        self.root = jobs_dir(root)
        self.max_running = _env_int(ENV_MAX_RUNNING, 1) if max_running is None else max_running
        default_cache = os.environ.get(ENV_DATA_CACHE) or Path.home() / ".cache" / "resattn" / "data"
        self.cache_dir = Path(cache_dir or default_cache).expanduser()
        self.limits = limits  # resattn.archive.Limits for uploads (None: its defaults)
        self._final: dict[tuple[int, float], Progress] = {}  # progress of ended jobs never changes
        self.root.mkdir(parents=True, exist_ok=True)
        conn = self._connect()
        try:
            conn.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer
            conn.executescript(_SCHEMA)
        finally:
            conn.close()
        if reconcile:
            self.reconcile()

    # -- database

    @property
    def db_path(self) -> Path:
        return self.root / DB_NAME

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.db_path, timeout=30, isolation_level=None)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: one writer at a time across processes, so state changes never interleave."""
        conn = self._connect()
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

    def _select(self, conn: sqlite3.Connection, where: str = "", args: Sequence[Any] = ()) -> list[Job]:
        rows = conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs {where}", args).fetchall()
        return [_job(row, self.root) for row in rows]

    def _update(self, conn: sqlite3.Connection, job_id: int, **values: Any) -> None:
        names = ", ".join(f"{k} = ?" for k in values)
        conn.execute(f"UPDATE jobs SET {names} WHERE id = ?", [*values.values(), job_id])

    # -- reading

    def get(self, job_id: int) -> Job:
        """One job; :class:`JobError` if there is none with that id."""
        conn = self._connect()
        try:
            found = self._select(conn, "WHERE id = ?", (int(job_id),))
        finally:
            conn.close()
        if not found:
            raise JobError(f"there is no job {job_id} in {self.root}")
        return found[0]

    def list(self, reconcile: bool = True) -> list[Job]:
        """Every job, newest first (after :meth:`reconcile`, so no dead job shows as running)."""
        if reconcile:
            self.reconcile()
        conn = self._connect()
        try:
            return self._select(conn, "ORDER BY id DESC")
        finally:
            conn.close()

    def progress(self, job: Job) -> Progress:
        """Progress 0–1, iteration, epochs and ETA, from ``metrics.jsonl`` and the progress bar in the log."""
        if job.ended is not None and (job.id, job.ended) in self._final:
            return self._final[(job.id, job.ended)]
        metrics = read_metrics(job.folder)
        log = _read_tail(job.log_path) if job.state != "queued" else ""
        plan = _PLAN.findall(_read_head(job.log_path)) or _PLAN.findall(log) if log else []
        total, per_epoch, epochs = (int(v) for v in plan[-1]) if plan else (None, None, None)
        last = metrics[-1] if metrics else {}
        iteration = int(last.get("iteration", 0))
        rate = None
        bars = _BAR.findall(log)
        if bars and per_epoch:
            epoch, _, done, _, speed, unit = bars[-1]
            iteration = max(iteration, (int(epoch) - 1) * per_epoch + int(done))
            rate = float(speed) if unit == "it/s" else 1 / max(float(speed), 1e-9)
        fraction = iteration / total if total else float(last.get("progress", 0.0))
        if job.state == "succeeded":
            fraction = 1.0
        eta = None
        if job.state == "running" and total:
            if rate:
                eta = (total - iteration) / rate
            elif fraction > 0 and job.started:
                eta = (time.time() - job.started) * (1 - fraction) / fraction
        progress = Progress(min(1.0, fraction), iteration, total, len(metrics), epochs, eta, rate)
        if job.ended is not None and not job.active:
            self._final[(job.id, job.ended)] = progress
        return progress

    def log_tail(self, job: Job, lines: int = 40) -> str:
        """The last ``lines`` lines of the job's log, progress-bar redraws collapsed."""
        return "\n".join(clean_log(_read_tail(job.log_path))[-lines:])

    def metrics(self, job: Job) -> list[dict[str, Any]]:
        return read_metrics(job.folder)

    def snapshots(self, job: Job) -> list[Path]:
        """The probe-mask files ``snapshots/epoch_NNN.npz`` (epoch 0: the base checkpoint's masks)."""
        return sorted((job.folder / "snapshots").glob("epoch_[0-9][0-9][0-9].npz"))

    def queued_count(self, owner: str) -> int:
        conn = self._connect()
        try:
            query = "SELECT COUNT(*) FROM jobs WHERE owner = ? AND state = 'queued'"
            return conn.execute(query, (owner,)).fetchone()[0]
        finally:
            conn.close()

    # -- submitting

    def _check_options(self, options: Sequence[str]) -> None:
        for name in MANAGED_OPTIONS:
            if any(o == name or o.startswith(name + "=") for o in options):
                raise JobError(f"{name} is set by the job system (every job writes into its own folder)")
        from .train import build_parser

        parser = build_parser()

        def refuse(message: str) -> None:
            raise JobError(f"invalid training options: {message}")

        parser.error = refuse  # type: ignore[method-assign]
        parser.parse_args(list(options))

    def _prepare(self, options: Sequence[str]) -> list[str]:
        options = list(options)
        if options[:1] == ["--"]:
            options = options[1:]
        data = _option(options, "--data")
        datasets = configured_datasets()
        if data in datasets:
            data = datasets[data]
            options = _without(options, "--data") + ["--data", data]
        self._check_options(options)
        for name in PATH_OPTIONS:  # the trainer runs in the job's folder: relative paths must not change meaning
            value = _option(options, name)
            if value is not None and value != "cifar10":
                prefix, path = ("cifar10:", value[8:]) if value.startswith("cifar10:") else ("", value)
                options = _without(options, name) + [name, prefix + os.path.abspath(os.path.expanduser(path))]
        data = _option(options, "--data")
        if data is not None and data != "cifar10" and not data.startswith("cifar10:") and not os.path.exists(data):
            known = (f" (configured datasets: {', '.join(datasets)})" if datasets
                     else f" (set {ENV_DATASETS} to name datasets)")
            raise JobError(f"--data {data}: no such dataset file or folder{known}")
        base = _option(options, "--init-from")
        if base is not None:
            from .checkpoint import read_meta

            read_meta(base)  # resattn.CheckpointError now, not a failed job later
        return options

    def submit(
        self,
        options: Sequence[str],
        *,
        owner: str | None = None,
        upload: str | os.PathLike[str] | None = None,
        label: str | None = None,
        group: str | None = None,
        device: tuple[str, int] | None = None,
    ) -> Job:
        """Queue a run of ``resattn.train`` with ``options`` (any of its options but the managed ones) and start
        it if there is room. ``--data NAME`` of a configured dataset is replaced by its path; ``upload`` is an
        untrusted zip, checked and extracted into the job's folder first (:class:`resattn.archive.ArchiveError`
        if refused). Returns the job as queued."""
        return self._submit([list(options)], owner=owner, upload=upload, labels=[label], group=group, device=device)[0]

    def submit_pair(
        self,
        options: Sequence[str],
        *,
        candidates: Sequence[str | os.PathLike[str]] = (),
        owner: str | None = None,
        upload: str | os.PathLike[str] | None = None,
        device: tuple[str, int] | None = None,
    ) -> list[Job]:
        """An ARL and a NAL job submitted together on the same data, seed and budget.

        With ``--init-from`` they fine-tune matching checkpoints: the given one and its :func:`counterpart`
        among ``candidates`` (same model, dataset and overrides, the other learning); without it both train
        from scratch, one with ``--learning arl``, one with ``--learning nal``. Returns [ARL job, NAL job].
        """
        options = _without(options, "--learning")
        base = _option(options, "--init-from")
        if base is None:
            variants = [options + ["--learning", "arl"], options + ["--learning", "nal"]]
        else:
            from .checkpoint import read_meta

            other = counterpart(base, candidates)
            if other is None:
                raise JobError(f"no checkpoint matches {Path(base).name} with the other attention learning "
                               "(same model, dataset and overrides); the pair needs both")
            pair = {str((read_meta(p).get("overrides") or {}).get("learning", "arl")): p for p in (base, other)}
            variants = [_without(options, "--init-from") + ["--init-from", str(pair[k])] for k in ("arl", "nal")]
        group = f"pair-{secrets.token_hex(4)}"
        labels = [f"ARL vs NAL ({k}) · {describe_options(v)}" for k, v in zip(("ARL", "NAL"), variants)]
        return self._submit(variants, owner=owner, upload=upload, labels=labels, group=group, device=device)

    def _submit(
        self,
        variants: list[list[str]],
        *,
        owner: str | None,
        upload: str | os.PathLike[str] | None,
        labels: Sequence[str | None],
        group: str | None,
        device: tuple[str, int] | None,
    ) -> list[Job]:
        if upload is not None and any(_option(v, "--data") for v in variants):
            raise JobError("give either --data or an uploaded zip, not both")
        variants = [self._prepare(v) for v in variants]
        staging = self.root / ".staging" / secrets.token_hex(8) if upload is not None else None
        try:
            if staging is not None:
                from .archive import Limits, extract_dataset

                extract_dataset(upload, staging / "data", self.limits or Limits())  # type: ignore[arg-type]
            jobs = []
            with self._tx() as conn:
                for i, options in enumerate(variants):
                    dev, nproc = device or detect_device(_option(options, "--device") or "auto")
                    threads = int(_option(options, "--threads") or cpu_threads()) if dev == "cpu" else None
                    label = labels[i] or describe_options(options, Path(upload).name if upload else None)
                    cur = conn.execute(
                        "INSERT INTO jobs (state, label, options, owner, grp, device, nproc, threads, folder, created) "
                        "VALUES ('queued', ?, '[]', ?, ?, ?, ?, ?, '', ?)",
                        (label, owner, group, dev, nproc, threads, time.time()),
                    )
                    job_id = int(cur.lastrowid)  # type: ignore[arg-type]
                    folder = self.root / f"job_{job_id:05d}"
                    if folder.exists():  # left over from a deleted jobs.sqlite: keep it, aside
                        folder.rename(folder.with_name(f"{folder.name}.old-{int(time.time())}"))
                    folder.mkdir(parents=True)
                    if staging is not None:
                        if i == 0:
                            os.replace(staging / "data", folder / "data")
                            data_path = folder / "data"
                        options = options + ["--data", str(data_path)]
                    elif _option(options, "--cache-dir") is None:
                        options = options + ["--cache-dir", str(self.cache_dir)]  # decode a dataset once for all jobs
                    self._update(conn, job_id, options=json.dumps(options), folder=folder.name)
                    (folder / "job.json").write_text(json.dumps(
                        {"id": job_id, "label": label, "options": options, "device": dev, "nproc": nproc,
                         "threads": threads, "group": group, "upload": Path(upload).name if upload else None,
                         "created": time.time()}, indent=2) + "\n")
                    jobs.extend(self._select(conn, "WHERE id = ?", (job_id,)))
        finally:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
        self.reconcile()
        return jobs

    # -- scheduling

    def _launch(self, conn: sqlite3.Connection, job: Job) -> None:
        """Start a queued job's supervisor (inside the caller's write transaction, so no other launcher or
        reconcile can see the job running without its pid)."""
        command = [sys.executable, "-I", "-c", _BOOT, str(HERE), "--dir", str(self.root),
                   "--max-running", str(self.max_running), "_supervise", str(job.id)]
        try:
            with (job.folder / LOG_NAME).open("ab") as log:
                proc = subprocess.Popen(command, cwd=job.folder, stdin=subprocess.DEVNULL, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
        except OSError as exc:
            self._update(conn, job.id, state="failed", ended=time.time(), error=f"the job could not start: {exc}")
            return
        with _CHILDREN_LOCK:
            _CHILDREN.append(proc)
        self._update(conn, job.id, state="running", started=time.time(), pid=proc.pid,
                     pid_start=process_start(proc.pid))

    def _dead(self, job: Job) -> bool:
        return job.state == "running" and not process_alive(job.pid, job.pid_start)

    def reconcile(self) -> list[int]:
        """Mark running jobs whose supervisor is gone as failed (cancelled if a cancel was asked for), stopping
        an orphaned trainer; then start queued jobs while fewer than ``max_running`` run. Returns the ids of
        the jobs it changed."""
        _reap_children()
        conn = self._connect()
        try:  # a cheap read first: most calls find nothing to do and take no write lock
            running = self._select(conn, "WHERE state = 'running'")
            queued = conn.execute("SELECT COUNT(*) FROM jobs WHERE state = 'queued'").fetchone()[0]
        finally:
            conn.close()
        if not any(self._dead(j) for j in running) and not (queued and len(running) < self.max_running):
            return []
        changed = []
        with self._tx() as conn:
            running = self._select(conn, "WHERE state = 'running'")
            for job in running:
                if not self._dead(job):
                    continue
                trainer_alive = process_alive(job.trainer_pid, job.trainer_start)
                if trainer_alive:
                    _kill_tree(job.trainer_pid, job.trainer_start, signal.SIGKILL)  # type: ignore[arg-type]
                reason = (f"the job's supervisor (pid {job.pid}) is gone — killed, out of memory or the machine "
                          "restarted" + ("; its orphaned trainer was stopped" if trainer_alive else ""))
                tail = self.log_tail(job, 30)
                state = "cancelled" if job.cancel_requested else "failed"
                self._update(conn, job.id, state=state, ended=time.time(),
                             error=None if state == "cancelled" else reason + ("\n" + tail if tail else ""))
                changed.append(job.id)
            free = self.max_running - sum(not self._dead(j) for j in running)
            if free > 0:
                for job in self._select(conn, "WHERE state = 'queued' ORDER BY id LIMIT ?", (free,)):
                    self._launch(conn, job)
                    changed.append(job.id)
        return changed

    # -- cancelling

    def cancel(self, job_id: int, wait: float = 0.0) -> Job:
        """Cancel a queued job at once, or ask a running one to stop: SIGTERM to the trainer's process group,
        SIGKILL after :data:`CANCEL_GRACE_S` (by its supervisor). Waits up to ``wait`` seconds for the final
        state. :class:`JobError` if the job has already ended."""
        with self._tx() as conn:
            found = self._select(conn, "WHERE id = ?", (int(job_id),))
            if not found:
                raise JobError(f"there is no job {job_id}")
            job = found[0]
            if not job.active:
                raise JobError(f"job {job_id} has already ended ({job.state})")
            if job.state == "queued":
                self._update(conn, job.id, state="cancelled", ended=time.time())
            else:
                self._update(conn, job.id, cancel_requested=1)
        if job.state == "queued":
            return self.get(job.id)
        if process_alive(job.trainer_pid, job.trainer_start):
            _signal_group(job.trainer_pid, signal.SIGTERM)  # type: ignore[arg-type]
        if not process_alive(job.pid, job.pid_start):
            self.reconcile()  # no supervisor to finish the job: stop the trainer and record it here
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and self.get(job.id).active:
            time.sleep(0.2)
            _reap_children()
        return self.get(job.id)

    # -- the supervisor

    def supervise(self, job_id: int) -> int:
        """Run one job's trainer to its end and record the outcome; then start the next queued job."""
        with self._tx() as conn:  # a write transaction: waits until the launcher has recorded our pid
            found = self._select(conn, "WHERE id = ?", (job_id,))
        if not found or found[0].state != "running" or found[0].pid != os.getpid():
            print(f"[resattn.jobs] job {job_id} is not this supervisor's to run; exiting", flush=True)
            return 1
        job = found[0]
        stop = {"term": False}
        signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__("term", True))
        command = trainer_command(job.options, job.folder, job.device, job.nproc, job.threads,
                                  checkpoint=job.checkpoint_path)
        print(f"[resattn.jobs] job {job.id} on {job.device_label}: {shlex.join(command)}", flush=True)
        if job.device == "cpu":
            try:
                os.nice(CPU_NICENESS)  # the trainer inherits it
            except OSError:
                pass
        try:
            proc = subprocess.Popen(command, cwd=job.folder, stdin=subprocess.DEVNULL, stdout=sys.stdout,
                                    stderr=subprocess.STDOUT, env=trainer_env(job.device, job.threads),
                                    start_new_session=True)
        except OSError as exc:
            return self._finish(job, "failed", None, f"the trainer could not start: {exc}")
        start = process_start(proc.pid)
        with self._tx() as conn:
            self._update(conn, job.id, trainer_pid=proc.pid, trainer_start=start)
        term_at: float | None = None
        tree: list[tuple[int, int]] = []
        checked = 0.0
        while not _exited(proc):
            time.sleep(0.25)
            now = time.monotonic()
            if term_at is None and now - checked >= 0.5:
                checked = now
                if stop["term"] or self.get(job.id).cancel_requested:
                    tree = _descendants(proc.pid)
                    _signal_group(proc.pid, signal.SIGTERM)
                    term_at = now
            elif term_at is not None and now - term_at > CANCEL_GRACE_S:
                _kill_tree(proc.pid, start, signal.SIGKILL, tree)
                term_at = float("inf")
        # the trainer has exited but is not reaped, so its pid (and group id) cannot be reused yet: clear the group
        _signal_group(proc.pid, signal.SIGKILL)
        for child, child_start in tree:
            if process_alive(child, child_start):
                _kill_tree(child, child_start, signal.SIGKILL)
        rc = proc.wait()
        if rc == 0 and job.checkpoint_path.is_file():  # finished, even if a cancel came too late
            shutil.rmtree(job.folder / "state", ignore_errors=True)  # resume state: the checkpoint is the result
            return self._finish(job, "succeeded", rc, None)
        if stop["term"] or self.get(job.id).cancel_requested:
            return self._finish(job, "cancelled", rc, None)
        if rc == 0:
            reason = ("the trainer stopped without writing a checkpoint (was it sent SIGTERM from outside the job "
                      "system?)")
        elif rc < 0:
            reason = f"the trainer was killed by {signal.Signals(-rc).name}" + (" (out of memory?)" if rc == -9 else "")
        else:
            reason = f"the trainer exited with code {rc}"
        return self._finish(job, "failed", rc, reason)

    def _finish(self, job: Job, state: str, rc: int | None, reason: str | None) -> int:
        error = None
        if reason is not None:
            tail = self.log_tail(job, 30)
            error = reason + ("\n" + tail if tail else "")
        with self._tx() as conn:
            self._update(conn, job.id, state=state, ended=time.time(), returncode=rc, error=error)
        print(f"[resattn.jobs] job {job.id} {state}" + (f": {reason}" if reason else ""), flush=True)
        self.reconcile()  # the next queued job
        return 0


# The supervisor's entry point: this file run by path with the standard library only (``python -I``), not the
# resattn package, whose import loads torch.
_BOOT = ("import runpy, sys; path = sys.argv[1]; sys.argv = [path] + sys.argv[2:]; "
         "runpy.run_path(path, run_name='__main__')")


def succeeded_checkpoints(root: str | os.PathLike[str] | None = None) -> list[tuple[Job, Path]]:
    """(job, checkpoint) of every succeeded job, newest first; nothing (and no folder created) when there is no
    jobs database yet. Cheap: one query, no reconcile, no process started."""
    root = jobs_dir(root)
    if not (root / DB_NAME).is_file():
        return []
    conn = sqlite3.connect(root / DB_NAME, timeout=30, isolation_level=None)
    try:
        query = f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE state = 'succeeded' ORDER BY id DESC"
        rows = conn.execute(query).fetchall()
    except sqlite3.DatabaseError:
        return []
    finally:
        conn.close()
    jobs = [_job(row, root) for row in rows]
    return [(job, job.checkpoint) for job in jobs if job.checkpoint is not None]


# ---------------------------------------------------------------------------------------------- access rules


def passphrase_matches(given: str | None, required: str | None) -> bool:
    """Whether ``given`` is the passphrase (constant-time comparison); always True when none is required."""
    if not required:
        return True
    return hmac.compare_digest((given or "").encode(), required.encode())


def submit_refusal(manager: JobManager, owner: str, *, passphrase_set: bool, unlocked: bool, max_queued: int,
                   count: int = 1) -> str | None:
    """Why session ``owner`` may not submit ``count`` job(s) now, or None if it may."""
    if passphrase_set and not unlocked:
        return "Starting jobs on this server needs the passphrase."
    queued = manager.queued_count(owner)
    if queued + count > max_queued:
        return (f"This session already has {queued} queued job(s); the limit is {max_queued} per session. "
                "Wait for them to start, or cancel one.")
    return None


def cancel_refusal(job: Job, owner: str, *, passphrase_set: bool, unlocked: bool) -> str | None:
    """Why session ``owner`` may not cancel ``job``, or None if it may: with a passphrase set, its holders may
    cancel any job; without one, a session cancels only the jobs it started."""
    if not job.active:
        return f"Job {job.id} has already ended ({job.state})."
    if passphrase_set:
        return None if unlocked else "Cancelling jobs on this server needs the passphrase."
    if job.owner != owner:
        return f"Job {job.id} was started by another session; only that session can cancel it."
    return None


# ---------------------------------------------------------------------------------------------- command line


def _print_table(manager: JobManager, jobs: Sequence[Job]) -> None:
    if not jobs:
        print(f"no jobs in {manager.root}")
        return
    print(f"{'id':>4}  {'state':<10}{'progress':>9}  {'device':<18}label")
    for job in jobs:
        p = manager.progress(job)
        print(f"{job.id:>4}  {job.state:<10}{p.fraction:>8.0%}  {job.device_label:<18}{job.label}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m resattn.jobs", allow_abbrev=False,
                                description="Background fine-tuning jobs (resattn.train runs).")
    p.add_argument("--dir", help=f"jobs directory (default ${ENV_DIR} or ~/.cache/resattn/jobs)")
    p.add_argument("--max-running", type=int, help=f"jobs run at once (default ${ENV_MAX_RUNNING} or 1)")
    sub = p.add_subparsers(dest="command", required=True, metavar="{submit,list,show,cancel,logs}")
    s = sub.add_parser("submit", allow_abbrev=False, help="queue a job; prints its id",
                       description="Queue a run of resattn.train; every other option is passed to it "
                       "(python -m resattn.train --help). --data may name a dataset of $RESATTN_DATASETS.")
    s.add_argument("--pair", action="store_true", help="submit an ARL and a NAL job on the same data, seed and budget")
    s.add_argument("--upload", help="a zip of images in class folders, checked and extracted into the job's folder")
    s.add_argument("--label", help="a label for the job list (default: made from the options)")
    s.add_argument("--candidates", nargs="*", default=None,
                   help="checkpoints to find the --pair counterpart of --init-from in "
                        "(default: the folder of --init-from)")
    ls = sub.add_parser("list", help="every job, newest first")
    ls.add_argument("--json", action="store_true", help="print JSON")
    show = sub.add_parser("show", help="one job")
    show.add_argument("id", type=int)
    show.add_argument("--json", action="store_true", help="print JSON")
    cancel = sub.add_parser("cancel", help="cancel a queued or running job")
    cancel.add_argument("id", type=int)
    cancel.add_argument("--wait", type=float, default=CANCEL_GRACE_S + 5, help="seconds to wait for it to stop")
    logs = sub.add_parser("logs", help="a job's log")
    logs.add_argument("id", type=int)
    logs.add_argument("--lines", type=int, help="only the last N lines")
    sup = sub.add_parser("_supervise")  # internal: one job's supervisor (see the module docstring)
    sup.add_argument("id", type=int)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.command != "submit":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "_supervise":
        manager = JobManager(args.dir, max_running=args.max_running, reconcile=False)
        return manager.supervise(args.id)
    try:
        manager = JobManager(args.dir, max_running=args.max_running)
        if args.command == "submit":
            if args.pair:
                base = _option(rest, "--init-from")
                candidates = args.candidates if args.candidates is not None else (
                    sorted(Path(base).parent.glob("*.safetensors")) if base else [])
                jobs = manager.submit_pair(rest, candidates=candidates, owner="cli", upload=args.upload)
            else:
                jobs = [manager.submit(rest, owner="cli", upload=args.upload, label=args.label)]
            for job in jobs:
                print(job.id)
        elif args.command == "list":
            jobs = manager.list()
            if args.json:
                print(json.dumps([j.to_dict(manager.progress(j)) for j in jobs], indent=2))
            else:
                _print_table(manager, jobs)
        elif args.command == "show":
            manager.reconcile()
            job = manager.get(args.id)
            if args.json:
                print(json.dumps(job.to_dict(manager.progress(job)), indent=2))
            else:
                p = manager.progress(job)
                print(f"job {job.id}: {job.state}, {p.fraction:.0%} ({p.iteration}/{p.iterations or '?'} iterations), "
                      f"{job.device_label}\n{job.label}\nfolder: {job.folder}")
                if job.checkpoint:
                    print(f"checkpoint: {job.checkpoint}")
                if job.error:
                    print(f"error: {job.error}")
        elif args.command == "cancel":
            job = manager.cancel(args.id, wait=args.wait)
            print(f"job {job.id}: {job.state}")
        elif args.command == "logs":
            lines = clean_log(job_log(manager.get(args.id)))
            print("\n".join(lines[-args.lines:] if args.lines else lines))
    except JobError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # resattn.archive.ArchiveError, a bad checkpoint
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def job_log(job: Job) -> str:
    """The whole log of a job ('' before it started)."""
    try:
        return job.log_path.read_text(errors="replace")
    except OSError:
        return ""


if __name__ == "__main__":
    raise SystemExit(main())
