"""The job manager: submit, list, watch and cancel jobs; :meth:`JobManager.reconcile` (:mod:`.schedule`) keeps
the records true to the processes and starts queued jobs. Cancel sets a flag and sends SIGTERM to the trainer's
process group; the supervisor does the rest.

Uploads: ``upload=ZIP`` is an untrusted zip checked and extracted by :mod:`resattn.archive`, in a child process
(:mod:`.uploads`), into the job's folder before the job is queued. Datasets are decoded once into
``RESATTN_DATA_CACHE`` (default ``~/.cache/resattn/data``) and shared by every job. Every submission is held to
the server's :class:`~resattn.jobs.limits.JobLimits`.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import (
    ACTIVE,
    ENV_DATA_CACHE,
    ENV_MAX_RUNNING,
    JobError,
    _env_int,
    cpu_threads,
    detect_device,
    jobs_dir,
)
from .limits import JobLimits, within_limits
from .logs import log_tail, read_metrics, read_progress
from .options import _option, describe_options, pair_options, prepare_options, safe_file_name
from .process import _reap_children, _signal_group, process_alive
from .store import Job, JobStore, Progress
from .schedule import reconcile
from .supervisor import guard, supervise
from .uploads import stage_upload


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
        job_limits: JobLimits | None = None,
    ) -> None:
        self.root = jobs_dir(root)
        self.max_running = _env_int(ENV_MAX_RUNNING, 1) if max_running is None else max_running
        default_cache = os.environ.get(ENV_DATA_CACHE) or Path.home() / ".cache" / "resattn" / "data"
        self.cache_dir = Path(cache_dir or default_cache).expanduser()
        self.limits = limits  # resattn.archive.Limits for uploads (None: its defaults)
        self.job_limits = job_limits or JobLimits.from_env()  # what one job may cost (epochs, images, time)
        self._final: dict[tuple[int, float], Progress] = {}  # progress of ended jobs never changes
        self.store = JobStore(self.root)
        if reconcile:
            self.reconcile()

    @property
    def db_path(self) -> Path:
        return self.store.db_path

    # -- reading

    def get(self, job_id: int) -> Job:
        """One job; :class:`JobError` if there is none with that id."""
        return self.store.get(job_id)

    def list(self, reconcile: bool = True) -> list[Job]:
        """Every job, newest first (after :meth:`reconcile`, so no dead job shows as running)."""
        if reconcile:
            self.reconcile()
        return self.store.read("ORDER BY id DESC")

    def progress(self, job: Job) -> Progress:
        """Progress 0–1, iteration, epochs and ETA, from ``metrics.jsonl`` and the progress bar in the log
        (:func:`read_progress`; remembered once the job has ended)."""
        if job.ended is not None and (job.id, job.ended) in self._final:
            return self._final[(job.id, job.ended)]
        progress = read_progress(job)
        if job.ended is not None and not job.active:
            self._final[(job.id, job.ended)] = progress
        return progress

    def log_tail(self, job: Job, lines: int = 40) -> str:
        """The last ``lines`` lines of the job's log, progress-bar redraws collapsed."""
        return log_tail(job, lines)

    def metrics(self, job: Job) -> list[dict[str, Any]]:
        """The trainer's per-epoch metrics so far."""
        return read_metrics(job.folder)

    def snapshots(self, job: Job) -> list[Path]:
        """The probe-mask files ``snapshots/epoch_NNN.npz`` (epoch 0: the base checkpoint's masks)."""
        return sorted((job.folder / "snapshots").glob("epoch_[0-9][0-9][0-9].npz"))

    def queued_count(self, owner: str | None = None) -> int:
        """How many jobs are queued (of ``owner``'s, when given)."""
        return self.store.count_queued(owner)

    def active_count(self, owner: str) -> int:
        """How many of ``owner``'s jobs are queued or running (for the per-browser cap)."""
        return self.store.count(ACTIVE, owner)

    # -- submitting

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
        variants = pair_options(options, candidates)
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
        """Check, record and queue jobs of the same request (one, or an ARL/NAL pair sharing one upload)."""
        if upload is not None and any(_option(v, "--data") for v in variants):
            raise JobError("give either --data or an uploaded zip, not both")
        variants = [within_limits(prepare_options(v), self.job_limits) for v in variants]
        upload_name = safe_file_name(Path(upload).name) if upload else None
        staging = stage_upload(self.root, upload, self.limits) if upload is not None else None
        try:
            jobs = []
            with self.store.transaction() as conn:
                for i, options in enumerate(variants):
                    dev, nproc = device or detect_device(_option(options, "--device") or "auto")
                    threads = int(_option(options, "--threads") or cpu_threads()) if dev == "cpu" else None
                    label = labels[i] or describe_options(options, upload_name)
                    job_id, folder = self.store.insert(conn, label=label, owner=owner, group=group, device=dev,
                                                       nproc=nproc, threads=threads,
                                                       max_seconds=self.job_limits.max_seconds)
                    if staging is not None:
                        if i == 0:
                            os.replace(staging / "data", folder / "data")
                            data_path = folder / "data"
                        options = options + ["--data", str(data_path)]
                    elif _option(options, "--cache-dir") is None:
                        options = options + ["--cache-dir", str(self.cache_dir)]  # decode a dataset once for all jobs
                    jobs.append(self.store.record(conn, folder, {
                        "id": job_id, "label": label, "options": options, "device": dev, "nproc": nproc,
                        "threads": threads, "group": group, "upload": upload_name, "created": time.time()}))
        finally:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
        self.reconcile()
        return jobs

    # -- scheduling

    def reconcile(self) -> list[int]:
        """Record running jobs whose supervisor is gone and start queued jobs while fewer than ``max_running``
        run (:func:`resattn.jobs.schedule.reconcile`). Returns the ids of the jobs it changed."""
        return reconcile(self.store, self.max_running)

    # -- cancelling and supervising

    def cancel(self, job_id: int, wait: float = 0.0) -> Job:
        """Cancel a queued job at once, or ask a running one to stop: SIGTERM to the trainer's process group,
        SIGKILL after :data:`CANCEL_GRACE_S` (by its supervisor). Waits up to ``wait`` seconds for the final
        state. :class:`JobError` if the job has already ended."""
        with self.store.transaction() as conn:
            job = self.store.find(conn, job_id)
            if job is None:
                raise JobError(f"there is no job {job_id}")
            if not job.active:
                raise JobError(f"job {job_id} has already ended ({job.state})")
            if job.state == "queued":
                self.store.update(conn, job.id, state="cancelled", ended=time.time())
            else:
                self.store.update(conn, job.id, cancel_requested=1)
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

    def supervise(self, job_id: int) -> int:
        """Be job ``job_id``'s supervisor (``_supervise ID``): run its trainer to its end, record the outcome,
        then start the next queued job (:func:`resattn.jobs.supervisor.supervise`)."""
        return supervise(self.store, job_id, then=self.reconcile, max_running=self.max_running)

    def guard(self, job_id: int) -> int:
        """Be the guard of job ``job_id``'s supervisor (``_guard ID``): reconcile as soon as the supervisor dies
        without recording the outcome (:func:`resattn.jobs.supervisor.guard`)."""
        return guard(self.store, job_id, then=self.reconcile)
