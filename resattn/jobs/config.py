"""The job system's names, knobs and environment settings, and its error: the layer every other module of
:mod:`resattn.jobs` builds on (standard library only, so a supervisor never loads torch)."""

from __future__ import annotations

import os
from pathlib import Path

#: Every state a job can be in; ``queued`` and ``running`` are active, the others final.
STATES = ("queued", "running", "succeeded", "failed", "cancelled")
ACTIVE = ("queued", "running")
DB_NAME = "jobs.sqlite"
LOG_NAME = "train.log"
#: Seconds between SIGTERM and SIGKILL when a job is cancelled.
CANCEL_GRACE_S = 5.0
#: Niceness of CPU jobs, so the app (and its Explore latency) comes first on a small machine.
CPU_NICENESS = 10
ENV_DIR, ENV_DATASETS, ENV_PASSPHRASE = "RESATTN_JOBS_DIR", "RESATTN_DATASETS", "RESATTN_JOBS_PASSPHRASE"
ENV_MAX_RUNNING, ENV_MAX_QUEUED = "RESATTN_JOBS_MAX_RUNNING", "RESATTN_JOBS_MAX_QUEUED"
ENV_DATA_CACHE = "RESATTN_DATA_CACHE"
#: This package's folder (``resattn/jobs``): a supervisor is started from it, and ``HERE.parents[1]`` is the
#: folder that holds ``resattn``, put on the trainer's ``PYTHONPATH``.
HERE = Path(__file__).resolve().parent


class JobError(RuntimeError):
    """A job request cannot be carried out; the message says why."""


def jobs_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """The jobs directory: ``path``, else ``RESATTN_JOBS_DIR``, else ``~/.cache/resattn/jobs``."""
    return Path(path or os.environ.get(ENV_DIR) or Path.home() / ".cache" / "resattn" / "jobs").expanduser()


#: What an unset ``RESATTN_DATASETS`` means: torchvision's CIFAR-10 (``--data cifar10``), which the trainer and the
#: app's Dataset page download into ``~/.cache/resattn/cifar10`` when asked. Set the variable (to ``""`` for none)
#: to replace it.
DEFAULT_DATASETS = "cifar10=cifar10"


def configured_datasets(text: str | None = None) -> dict[str, str]:
    """``RESATTN_DATASETS`` (``name=path,name=path``) as a dict, :data:`DEFAULT_DATASETS` when it is unset; entries
    without ``=`` are ignored. A path is a folder or zip of class folders, or ``cifar10`` for torchvision's."""
    text = os.environ.get(ENV_DATASETS, DEFAULT_DATASETS) if text is None else text
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
    """An integer setting from the environment; ``default`` when unset or not a number."""
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default
