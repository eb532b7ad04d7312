"""Scheduling without a server process: :func:`reconcile` keeps the records true to the processes and starts
queued jobs. It runs whenever a manager starts, lists jobs or submits, when each job's supervisor ends its job,
and at once when a supervisor dies without recording its job (its guard: :mod:`.supervisor`).

A ``running`` job whose supervisor is gone (killed, out of memory, machine restart) is recorded — a process is
identified by its pid *and* its start time, so a reused pid is not taken for the job: its trainer, if still
running, is stopped; one that finished and wrote its checkpoint succeeded; otherwise the job is cancelled if a
cancel was asked for, else failed. Queued jobs are then started while fewer than ``max_running``
(``RESATTN_JOBS_MAX_RUNNING``, default 1) run; staging left by a dead submitter is removed (:mod:`.uploads`).
"""

from __future__ import annotations

import shutil
import signal
import sqlite3
import time

from .logs import log_tail
from .process import _kill_tree, _reap_children, process_alive
from .store import Job, JobStore, write_result
from .supervisor import launch
from .uploads import clean_staging


def _dead(job: Job) -> bool:
    """Whether a ``running`` job's supervisor is gone."""
    return job.state == "running" and not process_alive(job.pid, job.pid_start)


def reconcile(store: JobStore, max_running: int) -> list[int]:
    """Record running jobs whose supervisor is gone, then start queued jobs while fewer than ``max_running``
    run. Returns the ids of the jobs it changed."""
    _reap_children()
    clean_staging(store.root)
    # a cheap read first: most calls find nothing to do and take no write lock
    running, queued = store.read("WHERE state = 'running'"), store.count_queued()
    if not any(_dead(j) for j in running) and not (queued and len(running) < max_running):
        return []
    changed = []
    with store.transaction() as conn:
        running = store.select(conn, "WHERE state = 'running'")
        for job in running:
            if _dead(job):
                record_orphan(store, conn, job)
                changed.append(job.id)
        free = max_running - sum(not _dead(j) for j in running)
        if free > 0:
            for job in store.select(conn, "WHERE state = 'queued' ORDER BY id LIMIT ?", (free,)):
                launch(store, conn, job, max_running)
                changed.append(job.id)
    return changed


def record_orphan(store: JobStore, conn: sqlite3.Connection, job: Job) -> None:
    """Record the outcome of a running job whose supervisor is gone (inside the caller's transaction): its
    trainer, if still running, is stopped; one that finished and wrote its checkpoint succeeded (the checkpoint
    is written last, atomically); otherwise the job is cancelled if that was asked, else failed."""
    trainer_alive = process_alive(job.trainer_pid, job.trainer_start)
    if trainer_alive:
        _kill_tree(job.trainer_pid, job.trainer_start, signal.SIGKILL)  # type: ignore[arg-type]
    elif job.trainer_pid and job.checkpoint_path.is_file():
        shutil.rmtree(job.folder / "state", ignore_errors=True)
        write_result(job)
        store.update(conn, job.id, state="succeeded", ended=time.time(), error=None)
        return
    if job.cancel_requested:
        store.update(conn, job.id, state="cancelled", ended=time.time(), error=None)
        return
    reason = (f"the job's supervisor (pid {job.pid}) is gone — killed, out of memory or the machine restarted"
              + ("; its orphaned trainer was stopped" if trainer_alive else ""))
    tail = log_tail(job, 30)
    store.update(conn, job.id, state="failed", ended=time.time(), error=reason + ("\n" + tail if tail else ""))
