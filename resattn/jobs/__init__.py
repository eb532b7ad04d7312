"""Fine-tuning jobs in the background: ``python -m resattn.jobs --help``.

A job is one run of ``python -m resattn.train`` in its own OS process and process group, watched by a small
supervisor process, so it survives a browser reload or a restart of the Streamlit server and cannot freeze the
app. Records live in SQLite (``jobs.sqlite`` in the jobs directory: ``RESATTN_JOBS_DIR``, default
``~/.cache/resattn/jobs``); every job has its own folder ``job_NNNNN/``: ``job.json`` (what was asked), the
trainer's ``config.json``, ``metrics.jsonl``, ``snapshots/epoch_NNN.npz`` (probe masks), the checkpoint
``job-N.safetensors`` (named after the job, so it is recognisable in a model picker or once copied elsewhere),
the log ``train.log`` and, for an uploaded zip, the checked and extracted ``data/``.

Modules, each importing only the ones listed before it (and the standard library: a supervisor never loads
torch; ``resattn.train``, ``.checkpoint`` and ``.archive`` are imported lazily, where needed):

* :mod:`.config` — names, environment settings (``RESATTN_*``), :class:`JobError`, the device and thread count;
* :mod:`.process` — processes by pid and start time: alive checks, descendants, killing process trees;
* :mod:`.store` — the SQLite schema and queries (:class:`JobStore`), the :class:`Job` and :class:`Progress` records;
* :mod:`.logs` — a job's log and ``metrics.jsonl``, and its progress from them;
* :mod:`.options` — trainer options: presets, checks, the ARL/NAL pair, labels, the trainer's command and env;
* :mod:`.limits` — what one job may cost on this server (epochs, images, minutes, threads, queue places);
* :mod:`.supervisor` — one job's supervisor process and its guard, and how they are started;
* :mod:`.uploads` — an uploaded zip's way into a job (staged, checked in a child process), stale staging removed;
* :mod:`.schedule` — reconcile: record jobs whose supervisor is gone, start queued ones;
* :mod:`.manager` — :class:`JobManager`: submit, list, cancel, and reconcile the records with the processes;
* :mod:`.access` — who may submit and cancel (passphrase, queue places per browser and on the server);
* :mod:`.cli` — the command line (``__main__`` runs it).
"""

from __future__ import annotations

# ``_name as _name``: helpers that app/ and tests/ reach as ``resattn.jobs._name``, as before the package was split.
from .access import cancel_refusal, passphrase_matches, submit_refusal
from .cli import build_parser, main
from .config import (
    ACTIVE,
    CANCEL_GRACE_S,
    CPU_NICENESS,
    DB_NAME,
    ENV_DATA_CACHE,
    ENV_DATASETS,
    ENV_DIR,
    ENV_MAX_QUEUED,
    ENV_MAX_RUNNING,
    ENV_PASSPHRASE,
    HERE,
    LOG_NAME,
    STATES,
    JobError,
    configured_datasets,
    cpu_threads,
    detect_device,
    jobs_dir,
)
from .config import _env_int as _env_int
from .limits import (
    ENV_MAX_EPOCHS,
    ENV_MAX_IMAGES,
    ENV_MAX_MINUTES,
    ENV_MAX_QUEUED_TOTAL,
    JobLimits,
    within_limits,
)
from .logs import clean_log, failure_cause, job_log, read_metrics
from .manager import JobManager
from .options import (
    MANAGED_OPTIONS,
    PATH_OPTIONS,
    counterpart,
    describe_options,
    fine_tune_options,
    safe_file_name,
    trainer_command,
    trainer_env,
)
from .options import _option as _option
from .options import _without as _without
from .process import _kill_tree as _kill_tree
from .process import _proc_stat as _proc_stat
from .process import _reap_children as _reap_children
from .process import process_alive, process_start
from .store import Job, JobStore, Progress, database_problem, succeeded_checkpoints

__all__ = [
    "ACTIVE", "CANCEL_GRACE_S", "CPU_NICENESS", "DB_NAME", "ENV_DATASETS", "ENV_DATA_CACHE", "ENV_DIR",
    "ENV_MAX_EPOCHS", "ENV_MAX_IMAGES", "ENV_MAX_MINUTES", "ENV_MAX_QUEUED", "ENV_MAX_QUEUED_TOTAL", "ENV_MAX_RUNNING",
    "JobLimits", "database_problem", "failure_cause", "safe_file_name", "within_limits", "ENV_PASSPHRASE", "HERE", "LOG_NAME", "MANAGED_OPTIONS", "PATH_OPTIONS",
    "STATES", "Job", "JobError", "JobManager", "JobStore", "Progress", "build_parser", "cancel_refusal",
    "clean_log", "configured_datasets", "counterpart", "cpu_threads", "describe_options", "detect_device",
    "fine_tune_options", "job_log", "jobs_dir", "main", "passphrase_matches", "process_alive", "process_start",
    "read_metrics", "submit_refusal", "succeeded_checkpoints", "trainer_command", "trainer_env",
]
