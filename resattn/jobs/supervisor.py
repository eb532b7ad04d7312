"""One job's supervisor: a small detached process that runs the job's trainer to its end and records the
outcome, and how it is started.

Each running job has one (``python -m resattn.jobs _supervise ID``, started with its own session by
:func:`launch`). It starts the trainer (its own session too), waits for it, records the outcome — succeeded,
failed with the log's tail, or cancelled — and then starts the next queued job, so the queue drains with no
browser open. On a cancel (a flag in the record, or SIGTERM) it sends SIGTERM to the trainer's process group
(the trainer saves and stops after the current step) and, after :data:`CANCEL_GRACE_S` seconds, SIGKILL to the
group and every descendant (``torchrun`` workers start their own sessions). The log is kept.

Each supervisor starts a *guard* (``_guard ID``, its own session too): a process of a few MB that waits for the
supervisor to end and, if it ended without recording the outcome (killed, out of memory), reconciles at once —
the job is recorded, an orphaned trainer stopped, and the next queued job started — so the queue keeps moving
with no browser or terminal watching. Database locks longer than the busy timeout are waited out
(:meth:`JobStore.retrying`), never fatal; a job whose record has vanished (the database was deleted) is stopped.

The supervisor runs this package with ``python -I`` and the standard library only (about 15 MB resident instead
of torch's ~700 MB): :data:`_BOOT` imports ``resattn.jobs`` without running ``resattn/__init__.py``, whose
imports load torch.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .config import CANCEL_GRACE_S, CPU_NICENESS, HERE, LOG_NAME, JobError
from .logs import failure_cause, log_tail
from .options import trainer_command, trainer_env
from .process import (
    _adopt_child,
    _descendants,
    _exited,
    _kill_tree,
    _signal_group,
    process_alive,
    process_start,
)
from .store import Job, JobStore, patiently, write_result

# The supervisor's entry point, run with ``python -I -c _BOOT RESATTN_DIR ARGS...``: an empty stand-in for the
# ``resattn`` package whose ``__path__`` is RESATTN_DIR, so ``resattn.jobs`` (standard library only) imports
# without ``resattn/__init__.py`` (torch); then ``python -m resattn.jobs ARGS...``.
_BOOT = ("import runpy, sys, types; package = types.ModuleType('resattn'); package.__path__ = [sys.argv[1]]; "
         "sys.modules['resattn'] = package; sys.argv = sys.argv[:1] + sys.argv[2:]; "
         "runpy.run_module('resattn.jobs', run_name='__main__', alter_sys=True)")


#: Seconds between a guard's looks at its supervisor.
GUARD_POLL_S = 1.0


def supervisor_command(root: Path, max_running: int, job_id: int, role: str = "_supervise") -> list[str]:
    """The command that supervises job ``job_id`` of the jobs directory ``root`` (``role="_guard"``: guards
    its supervisor)."""
    return [sys.executable, "-I", "-c", _BOOT, str(HERE.parent), "--dir", str(root),
            "--max-running", str(max_running), role, str(job_id)]


def launch(store: JobStore, conn: sqlite3.Connection, job: Job, max_running: int) -> None:
    """Start a queued job's supervisor (inside the caller's write transaction, so no other launcher or
    reconcile can see the job running without its pid)."""
    command = supervisor_command(store.root, max_running, job.id)
    try:
        with (job.folder / LOG_NAME).open("ab") as log:
            proc = subprocess.Popen(command, cwd=job.folder, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
    except OSError as exc:
        store.update(conn, job.id, state="failed", ended=time.time(), error=f"the job could not start: {exc}")
        return
    _adopt_child(proc)
    store.update(conn, job.id, state="running", started=time.time(), pid=proc.pid, pid_start=process_start(proc.pid))


def supervise(store: JobStore, job_id: int, then: Callable[[], object], max_running: int = 1) -> int:
    """Run one job's trainer to its end and record the outcome; then call ``then`` (the manager's reconcile,
    which starts the next queued job). Returns the supervisor's exit status."""
    # a write transaction: waits until the launcher has recorded our pid
    job = store.retrying(lambda conn: store.find(conn, job_id))
    if job is None or job.state != "running" or job.pid != os.getpid():
        print(f"[resattn.jobs] job {job_id} is not this supervisor's to run; exiting", flush=True)
        return 1
    _start_guard(store, job, max_running)
    state, rc, reason = _run_trainer(store, job)
    error = None
    if reason is not None:
        tail = log_tail(job, 30)
        error = reason + ("\n" + tail if tail else "")
    if state == "succeeded":
        write_result(job)
    try:
        store.retrying(lambda conn: store.update(conn, job.id, state=state, ended=time.time(), returncode=rc,
                                                 error=error))
        print(f"[resattn.jobs] job {job.id} {state}" + (f": {reason}" if reason else ""), flush=True)
        patiently(then)
    except sqlite3.Error as exc:  # not a lock (waited out above): the database is gone or broken
        print(f"[resattn.jobs] job {job.id} {state}, but its record cannot be written: {exc}", flush=True)
        return 1
    return 0


def _start_guard(store: JobStore, job: Job, max_running: int) -> None:
    """Start the guard of this supervisor (best effort: without one the job still runs, as before guards)."""
    try:
        with (job.folder / LOG_NAME).open("ab") as log:
            subprocess.Popen(supervisor_command(store.root, max_running, job.id, "_guard"), cwd=job.folder,
                             stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                             close_fds=True)
    except OSError as exc:
        print(f"[resattn.jobs] job {job.id}: its guard could not start ({exc})", flush=True)


def guard(store: JobStore, job_id: int, then: Callable[[], object]) -> int:
    """Be the guard of job ``job_id``'s supervisor (``_guard ID``): wait for the supervisor to end; if the job
    is still recorded as running under it, it died without recording the outcome: ``then()`` (the manager's
    reconcile) records it and starts the next queued job."""
    job = store.retrying(lambda conn: store.find(conn, job_id))

    def still_its() -> bool:
        now = store.retrying(lambda conn: store.find(conn, job_id))
        return now is not None and now.state == "running" and (now.pid, now.pid_start) == (job.pid, job.pid_start)

    if job is None or not still_its():
        return 1
    looks = 0
    while process_alive(job.pid, job.pid_start):
        time.sleep(GUARD_POLL_S)
        looks += 1
        if looks % 10 == 0 and not still_its():  # recorded: the supervisor is only finishing
            return 0
    if still_its():
        print(f"[resattn.jobs] job {job_id}: its supervisor (pid {job.pid}) is gone; reconciling", flush=True)
        patiently(then)
    return 0


def _run_trainer(store: JobStore, job: Job) -> tuple[str, int | None, str | None]:
    """Start the job's trainer, wait for it (stopping it on a cancel) and say how it ended: (state, return code,
    reason for a failure)."""
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
        return "failed", None, f"the trainer could not start: {exc}"
    start = process_start(proc.pid)
    store.retrying(lambda conn: store.update(conn, job.id, trainer_pid=proc.pid, trainer_start=start))

    began = time.monotonic()

    def over_time() -> bool:
        return job.max_seconds is not None and time.monotonic() - began > job.max_seconds

    def cancelled() -> bool:
        if stop["term"]:
            return True
        try:
            return store.get(job.id).cancel_requested
        except JobError:  # the record is gone (the database was deleted): nobody may watch this job, stop it
            return True
        except sqlite3.OperationalError:  # locked: look again at the next check
            return False

    tree = _watch(proc, start, lambda: over_time() or cancelled())
    # the trainer has exited but is not reaped, so its pid (and group id) cannot be reused yet: clear the group
    _signal_group(proc.pid, signal.SIGKILL)
    for child, child_start in tree:
        if process_alive(child, child_start):
            _kill_tree(child, child_start, signal.SIGKILL)
    rc = proc.wait()
    if rc == 0 and job.checkpoint_path.is_file():  # finished, even if a cancel came too late
        shutil.rmtree(job.folder / "state", ignore_errors=True)  # resume state: the checkpoint is the result
        return "succeeded", rc, None
    if cancelled():
        return "cancelled", rc, None
    if over_time():
        return "failed", rc, (f"the job ran past this server's limit of {job.max_seconds / 60:g} minutes per job "
                              "and was stopped (RESATTN_JOBS_MAX_MINUTES)")
    if rc == 0:
        reason = ("the trainer stopped without writing a checkpoint (was it sent SIGTERM from outside the job "
                  "system?)")
    elif rc < 0:
        reason = f"the trainer was killed by {signal.Signals(-rc).name}" + (" (out of memory?)" if rc == -9 else "")
    else:
        reason = f"the trainer exited with code {rc}"
    cause = failure_cause(job)
    return "failed", rc, reason + (f": {cause}" if cause else "")


def _watch(proc: subprocess.Popen, start: int | None, cancelled: Callable[[], bool]) -> list[tuple[int, int]]:
    """Wait until the trainer exits (without reaping it). Once ``cancelled()`` (checked twice a second), send
    SIGTERM to its group, then SIGKILL to its whole tree after :data:`CANCEL_GRACE_S`. Returns the tree as it
    was at the SIGTERM ([] without a cancel), for the caller to clear."""
    term_at: float | None = None
    tree: list[tuple[int, int]] = []
    checked = 0.0
    while not _exited(proc):
        time.sleep(0.25)
        now = time.monotonic()
        if term_at is None and now - checked >= 0.5:
            checked = now
            if cancelled():
                tree = _descendants(proc.pid)
                _signal_group(proc.pid, signal.SIGTERM)
                term_at = now
        elif term_at is not None and now - term_at > CANCEL_GRACE_S:
            _kill_tree(proc.pid, start, signal.SIGKILL, tree)
            term_at = float("inf")
    return tree
