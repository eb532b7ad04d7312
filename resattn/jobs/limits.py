"""What one job may cost on this server and how many jobs a browser may hold: set by whoever runs the server,
through the environment, with defaults for a small (2-core) classroom machine. Standard library only.

* ``RESATTN_JOBS_MAX_EPOCHS`` (20): ``--epochs`` at most this; ``--iterations`` × batch at most this many epochs
  of the image limit;
* ``RESATTN_JOBS_MAX_IMAGES`` (10,000): ``--train-limit`` and ``--test-limit`` at most this; a job that sets
  neither gets both, so "all images" means at most this many;
* ``RESATTN_JOBS_MAX_MINUTES`` (30): a job's wall time; its supervisor stops it then and records it failed, so the
  one job slot frees at least every half hour;
* ``--threads`` at most the cores but one (one stays with the app);
* ``RESATTN_JOBS_MAX_QUEUED`` (3): queued or running jobs per browser, and ``RESATTN_JOBS_MAX_QUEUED_TOTAL`` (10):
  queued jobs on the server — both for the Train page (:mod:`.access`); the command line is trusted.

Every refusal is a :class:`JobError` that names the option and the setting that bounds it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from .config import JobError, _env_int, cpu_threads
from .options import _option

ENV_MAX_EPOCHS, ENV_MAX_IMAGES, ENV_MAX_MINUTES = ("RESATTN_JOBS_MAX_EPOCHS", "RESATTN_JOBS_MAX_IMAGES",
                                                   "RESATTN_JOBS_MAX_MINUTES")
ENV_MAX_QUEUED_TOTAL = "RESATTN_JOBS_MAX_QUEUED_TOTAL"


def _env_float(name: str, default: float) -> float:
    """A positive number from the environment; ``default`` when unset, not a number or not positive."""
    try:
        value = float(os.environ.get(name, default))
    except ValueError:
        return default
    return value if value > 0 and value != float("inf") else default


@dataclass(frozen=True)
class JobLimits:
    """One server's limits on a job (see the module docstring); :meth:`from_env` reads them."""

    max_epochs: float = 20
    max_images: int = 10_000
    max_minutes: float = 30
    max_threads: int = field(default_factory=cpu_threads)
    max_queued: int = 3  # queued or running jobs per browser (the Train page)
    max_queued_total: int = 10  # queued jobs on the server (the Train page)

    @classmethod
    def from_env(cls) -> "JobLimits":
        from .config import ENV_MAX_QUEUED

        return cls(max_epochs=_env_float(ENV_MAX_EPOCHS, cls.max_epochs),
                   max_images=max(1, _env_int(ENV_MAX_IMAGES, cls.max_images)),
                   max_minutes=_env_float(ENV_MAX_MINUTES, cls.max_minutes),
                   max_queued=max(0, _env_int(ENV_MAX_QUEUED, cls.max_queued)),
                   max_queued_total=max(0, _env_int(ENV_MAX_QUEUED_TOTAL, cls.max_queued_total)))

    @property
    def max_seconds(self) -> float:
        return self.max_minutes * 60


def within_limits(options: Sequence[str], limits: JobLimits) -> list[str]:
    """``options`` (already valid trainer options) checked against ``limits``, with ``--train-limit`` and
    ``--test-limit`` added where missing; :class:`JobError` naming the option and setting for one over a limit."""
    from ..train.recipes import RECIPES

    options = list(options)
    recipe = RECIPES[_option(options, "--recipe") or "fast"]
    batch = int(_option(options, "--batch-size") or recipe["batch_size"])
    epochs, iterations = _option(options, "--epochs"), _option(options, "--iterations")
    if iterations is None and epochs is None and recipe["epochs"] is None:
        iterations = str(recipe["iterations"])  # the paper's 160k
    if iterations is not None:
        budget = limits.max_epochs * limits.max_images
        if int(iterations) * batch > budget:
            raise JobError(f"--iterations {int(iterations):,} of batch {batch} is {int(iterations) * batch:,} "
                           f"images; this server allows {budget:,.0f} per job ({limits.max_epochs:g} epochs of "
                           f"{limits.max_images:,} images: {ENV_MAX_EPOCHS}, {ENV_MAX_IMAGES})")
    elif float(epochs or recipe["epochs"]) > limits.max_epochs:
        raise JobError(f"--epochs {float(epochs or recipe['epochs']):g} is over this server's limit of "
                       f"{limits.max_epochs:g} epochs per job ({ENV_MAX_EPOCHS})")
    for name in ("--train-limit", "--test-limit"):
        value = _option(options, name)
        if value is None:
            options += [name, str(limits.max_images)]
        elif int(value) > limits.max_images:
            raise JobError(f"{name} {int(value):,} is over this server's limit of {limits.max_images:,} images per "
                           f"job ({ENV_MAX_IMAGES})")
    threads = _option(options, "--threads")
    if threads is not None and int(threads) > limits.max_threads:
        raise JobError(f"--threads {threads} is over this server's limit of {limits.max_threads} (every core but "
                       "one, which stays with the app)")
    return options
