"""Records that tell the truth with nobody watching (issues 22 and 23): staging left by a killed submitter, dead
supervisors, cancels that race a supervisor, a locked, corrupt or deleted database, and job folders that are
never reused. Every process started here is stopped in teardown."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from resattn import jobs
from resattn.jobs import JobError, JobManager, process_alive, process_start, uploads

from .test_jobs import LONG, ROOT, guards, manager_for, stop_all, tiny, wait_for
from .test_jobs import dataset  # noqa: F401 - the shared fixture


@pytest.fixture
def root(tmp_path):
    folder = tmp_path / "jobs"
    yield folder
    stop_all(folder)


def _children(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = jobs._proc_stat(int(entry.name))
            if stat is not None and stat[1] == parent and stat[0] not in "ZX":
                found.append(int(entry.name))
    return found


def _until(condition, timeout: float = 60.0, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"not within {timeout} s")


# ---------------------------------------------------------------------------------------------- staging


def test_staging_of_a_live_process_is_kept_and_of_a_dead_one_removed(tmp_path):
    mine = uploads.staging_folder(tmp_path)
    mine.mkdir(parents=True)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = tmp_path / uploads.STAGING / f"{gone.pid}-{12345}-abcd"  # a pid that has exited (or been reused)
    old_style = tmp_path / uploads.STAGING / "0123456789abcdef"  # named by earlier code: no owner to ask
    dead.mkdir()
    old_style.mkdir()
    assert sorted(uploads.clean_staging(tmp_path)) == sorted([dead, old_style])
    assert mine.is_dir() and not dead.exists() and not old_style.exists()


def test_a_submitter_killed_mid_check_leaves_no_staging_and_no_checker(root, tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (2000, 2000)).save(buffer, "PNG")
    upload = tmp_path / "slow.zip"
    with zipfile.ZipFile(upload, "w") as zf:
        for i in range(120):  # 480 M pixels: many seconds of checking
            zf.writestr(f"{'cat' if i % 2 else 'dog'}/{i}.png", buffer.getvalue())
    script = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from resattn.jobs import JobManager; "
              f"JobManager({str(root)!r}, max_running=0).submit(['--epochs', '1'], upload={str(upload)!r})")
    submitter = subprocess.Popen([sys.executable, "-c", script])
    try:
        staged = _until(lambda: list((root / uploads.STAGING).glob("*")) if (root / uploads.STAGING).exists() else [])
        checker = _until(lambda: _children(submitter.pid))[0]
        checker_start = process_start(checker)
        _until(lambda: list(staged[0].rglob("*.png")), timeout=120)  # it is extracting
        submitter.kill()
        submitter.wait()
        _until(lambda: not process_alive(checker, checker_start), timeout=10)  # the check stopped itself
        assert staged[0].exists()  # left behind ...
        JobManager(root, max_running=0)  # ... until the next reconcile
        assert not staged[0].exists() and JobManager(root, max_running=0).list() == []
    finally:
        submitter.kill()


# ---------------------------------------------------------------------------------------------- nobody watching


def _passive(root: Path, job_id: int, what, timeout: float = 90.0):
    """Wait for ``what(job)`` reading the record only: no reconcile, nothing started or recorded by the test."""
    store = jobs.JobStore(root)
    return _until(lambda: (lambda j: j if what(j) else None)(store.get(job_id)), timeout=timeout, step=0.2)


def _trainer_up(job) -> bool:
    return bool(job.trainer_pid) and process_alive(job.trainer_pid, job.trainer_start)


def test_a_dead_supervisor_is_recorded_and_the_queue_moves_with_nobody_watching(root, dataset):
    m = manager_for(root, max_running=1)
    first = m.submit(tiny(dataset, *LONG))
    second = m.submit(tiny(dataset, "--epochs", "1"))
    running = _passive(root, first.id, _trainer_up)
    os.kill(running.pid, signal.SIGKILL)  # the supervisor only: its trainer runs on, unsupervised
    failed = _passive(root, first.id, lambda j: not j.active, timeout=30)
    assert failed.state == "failed" and "is gone" in failed.error and "orphaned trainer was stopped" in failed.error
    _until(lambda: not process_alive(running.trainer_pid, running.trainer_start), timeout=10)
    done = _passive(root, second.id, lambda j: not j.active)  # started by the guard, run by its own supervisor
    assert done.state == "succeeded", done.error
    assert "its supervisor (pid" in jobs.job_log(failed) and "reconciling" in jobs.job_log(failed)


def test_an_orphaned_trainer_that_finished_is_recorded_with_its_checkpoint(root, dataset):
    m = manager_for(root, max_running=1)
    job = m.submit(tiny(dataset, "--epochs", "1"))
    running = _passive(root, job.id, _trainer_up)
    for pid in guards(root):  # supervisor and guard both gone, as after a kill of everything but the trainer
        os.kill(pid, signal.SIGKILL)
    os.kill(running.pid, signal.SIGKILL)
    _until(lambda: not process_alive(running.trainer_pid, running.trainer_start), timeout=90)
    assert jobs.JobStore(root).get(job.id).state == "running"  # nobody left to record it ...
    fresh = JobManager(root, max_running=0)  # ... until the next reconcile, which finds the finished checkpoint
    done = fresh.get(job.id)
    assert done.state == "succeeded" and done.error is None and done.checkpoint == done.checkpoint_path
    assert jobs.succeeded_checkpoints(root) == [(job.id, done.checkpoint_path)]


def test_a_supervisor_whose_cancel_was_asked_before_it_died_ends_cancelled(root, dataset):
    """Issue 23: the cancel flag is set (no signal sent), then the supervisor dies before acting on it."""
    m = manager_for(root, max_running=1)
    job = m.submit(tiny(dataset, *LONG))
    running = _passive(root, job.id, _trainer_up)
    with m.store.transaction() as conn:
        m.store.update(conn, job.id, cancel_requested=1)
    os.kill(running.pid, signal.SIGKILL)
    ended = _passive(root, job.id, lambda j: not j.active, timeout=30)
    assert ended.state == "cancelled" and ended.error is None
    _until(lambda: not process_alive(running.trainer_pid, running.trainer_start), timeout=10)


def test_a_cancel_asked_before_the_trainer_is_recorded_is_obeyed(root, dataset):
    """Issue 23: the flag is set in the launching transaction itself, before the supervisor has even read its
    job, let alone recorded a trainer; a one-epoch job would otherwise succeed within seconds."""
    m = manager_for(root, max_running=0)
    job = m.submit(tiny(dataset, "--epochs", "1"))
    with m.store.transaction() as conn:
        m.store.update(conn, job.id, cancel_requested=1)
        jobs.supervisor.launch(m.store, conn, m.store.find(conn, job.id), 1)
    ended = _passive(root, job.id, lambda j: not j.active)
    assert ended.state == "cancelled" and ended.error is None and ended.checkpoint is None
    assert not ended.checkpoint_path.exists()


def test_a_trainer_that_ignores_sigterm_is_killed_within_the_grace_period(monkeypatch):
    """Issue 23: SIGTERM first, then SIGKILL to the whole tree once the grace period is over."""
    from resattn.jobs import supervisor

    monkeypatch.setattr(supervisor, "CANCEL_GRACE_S", 1.0)
    stubborn = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
                                 "signal.SIG_IGN); print('ready', flush=True); time.sleep(120)"],
                                stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stubborn.stdout.readline()  # its handler is set
        started = time.monotonic()
        supervisor._watch(stubborn, process_start(stubborn.pid), lambda: True)
        elapsed = time.monotonic() - started
        assert stubborn.wait(timeout=5) == -signal.SIGKILL
        assert 1.0 < elapsed < 1.0 + 1.5  # after the grace period, and soon after it
    finally:
        stubborn.kill()


# ---------------------------------------------------------------------------------------------- the database


def _cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "resattn.jobs", "--dir", str(root), *args], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)


def test_a_corrupt_database_is_reported_in_one_line_not_a_traceback(tmp_path):
    root = tmp_path / "jobs"
    root.mkdir()
    (root / jobs.DB_NAME).write_bytes(b"this is not a database, it is a lecture's notes\n" * 200)
    for command in (["list"], ["show", "1"], ["cancel", "1"], ["submit", "--epochs", "1"]):
        done = _cli(root, *command)
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        assert done.stderr.startswith(f"error: the jobs database {root / jobs.DB_NAME} cannot be used (")
        assert "Move it aside" in done.stderr


class _Lock:
    """A lock on the jobs database that stops readers as well as writers (SQLite's exclusive locking mode)."""

    def __init__(self, root: Path) -> None:
        import sqlite3

        self.conn = sqlite3.connect(root / jobs.DB_NAME, isolation_level=None)
        self.conn.execute("PRAGMA locking_mode=EXCLUSIVE")
        self.conn.execute("BEGIN EXCLUSIVE")
        self.conn.execute("UPDATE jobs SET label = label")

    def release(self) -> None:
        self.conn.execute("ROLLBACK")
        self.conn.close()


def test_a_lock_longer_than_the_busy_timeout_delays_a_supervisor_and_does_not_kill_it(root, dataset, monkeypatch):
    monkeypatch.setenv(jobs.store.ENV_DB_TIMEOUT, "0.5")  # the supervisor inherits it: a 4 s lock is 8 timeouts
    m = manager_for(root, max_running=1)
    job = m.submit(tiny(dataset, "--epochs", "1"))
    running = _passive(root, job.id, _trainer_up)
    lock = _Lock(root)
    try:
        _until(lambda: not process_alive(running.trainer_pid, running.trainer_start), timeout=90)
        time.sleep(4)  # the supervisor tries to record the outcome against the lock
        assert process_alive(running.pid, running.pid_start)
    finally:
        lock.release()
    done = _passive(root, job.id, lambda j: not j.active, timeout=30)
    assert done.state == "succeeded" and done.returncode == 0  # recorded by the supervisor itself
    assert "the jobs database is locked" in jobs.job_log(done)


def test_listing_the_trained_models_never_opens_the_database(root, dataset, monkeypatch):
    m = manager_for(root, max_running=1)
    job = wait_for(m, m.submit(tiny(dataset, "--epochs", "1")).id, ("succeeded", "failed"))
    assert job.state == "succeeded", job.error
    (job.folder / "result.json").unlink()  # as a job that succeeded before result files were written
    assert jobs.succeeded_checkpoints(root) == []
    JobManager(root, max_running=0)  # opening the store writes the missing ones
    lock = _Lock(root)
    try:
        import sqlite3

        monkeypatch.setenv(jobs.store.ENV_DB_TIMEOUT, "30")
        monkeypatch.setattr(sqlite3, "connect", lambda *a, **k: pytest.fail("the database was opened"))
        started = time.monotonic()
        assert jobs.succeeded_checkpoints(root) == [(job.id, job.checkpoint)]
        assert time.monotonic() - started < 1
    finally:
        monkeypatch.undo()
        lock.release()


def test_job_ids_and_folders_are_never_reused_after_the_database_is_deleted(root, dataset):
    m = manager_for(root, max_running=1)
    old = m.submit(tiny(dataset, *LONG))
    running = _passive(root, old.id, _trainer_up)
    for path in root.glob(jobs.DB_NAME + "*"):
        path.unlink()  # jobs.sqlite and its journal, while the job runs
    fresh = manager_for(root, max_running=0)
    new = fresh.submit(tiny(dataset, "--epochs", "1"))
    assert new.id > old.id and new.folder != old.folder and new.folder.name == f"job_{new.id:05d}"
    # the orphaned supervisor finds its record gone and stops its trainer: it never writes into the new job
    _until(lambda: not process_alive(running.trainer_pid, running.trainer_start), timeout=30)
    assert fresh.get(new.id).state == "queued" and [j.id for j in fresh.list()] == [new.id]
    assert not (new.folder / "metrics.jsonl").exists() and not list(new.folder.glob("*.safetensors"))
    with pytest.raises(JobError, match="never reused"):
        _reuse(fresh, new.id + 1)


def _reuse(manager: JobManager, job_id: int) -> None:
    """Insert a job whose folder already exists (made by hand): refused, never taken over."""
    (manager.root / f"job_{job_id:05d}").mkdir()
    with manager.store.transaction() as conn:
        manager.store.insert(conn, label="x", owner=None, group=None, device="cpu", nproc=1, threads=1)
