"""Who may start and stop jobs (the Train page; the command line is trusted).

With a passphrase set (``RESATTN_JOBS_PASSPHRASE`` or the Streamlit secret ``jobs_passphrase``), submitting and
cancelling need it and its holders may cancel any job; without one, anyone may submit and a browser cancels
only the jobs it started. A browser may hold at most ``RESATTN_JOBS_MAX_QUEUED`` (default 3) queued or running
jobs, and the server's queue at most ``RESATTN_JOBS_MAX_QUEUED_TOTAL`` (default 10) jobs (:mod:`.limits`).
Each rule returns why an action is refused (a sentence for the page), or None when it is allowed.
"""

from __future__ import annotations

import hmac

from .limits import JobLimits
from .manager import JobManager
from .store import Job


def passphrase_matches(given: str | None, required: str | None) -> bool:
    """Whether ``given`` is the passphrase (constant-time comparison); always True when none is required."""
    if not required:
        return True
    return hmac.compare_digest((given or "").encode(), required.encode())


def submit_refusal(manager: JobManager, owner: str, *, passphrase_set: bool, unlocked: bool, limits: JobLimits,
                   count: int = 1) -> str | None:
    """Why browser ``owner`` may not submit ``count`` job(s) now, or None if it may: the passphrase, then its own
    queued or running jobs (``limits.max_queued``), then the server's queue (``limits.max_queued_total``)."""
    if passphrase_set and not unlocked:
        return "Starting jobs on this server needs the passphrase."
    held = manager.active_count(owner)
    if held + count > limits.max_queued:
        return (f"This browser already has {held} queued or running job(s); the limit is {limits.max_queued} per "
                "browser. Wait for one to finish, or cancel one.")
    queued = manager.queued_count()
    if queued + count > limits.max_queued_total:
        return (f"The server's queue is full: {queued} job(s) are waiting and the limit is "
                f"{limits.max_queued_total}. Try again when some have run.")
    return None


def cancel_refusal(job: Job, owner: str, *, passphrase_set: bool, unlocked: bool) -> str | None:
    """Why browser ``owner`` may not cancel ``job``, or None if it may: with a passphrase set, its holders may
    cancel any job; without one, a browser cancels only the jobs it started."""
    if not job.active:
        return f"Job {job.id} has already ended ({job.state})."
    if passphrase_set:
        return None if unlocked else "Cancelling jobs on this server needs the passphrase."
    if job.owner != owner:
        return f"Job {job.id} was started by another browser; only that browser can cancel it."
    return None
