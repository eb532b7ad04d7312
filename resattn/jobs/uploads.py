"""An uploaded zip's way into a job: staged under ``.staging/`` in a folder named after the process that staged
it, checked and extracted there by a child process (:func:`resattn.archive.extract_dataset_apart`, so the app's
own thread never decodes an untrusted archive), then moved into the job's folder by :mod:`.manager`.

A submitter killed mid-check leaves its staging folder behind; the checking child stops itself, and
:func:`clean_staging` (run by every reconcile) removes each folder whose process is gone.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path
from typing import Any

from .process import process_alive, process_start

STAGING = ".staging"


def staging_folder(root: Path) -> Path:
    """A new, not yet created staging folder of this process: ``.staging/<pid>-<start time>-<random>``."""
    me = os.getpid()
    return root / STAGING / f"{me}-{process_start(me)}-{secrets.token_hex(4)}"


def _owner(folder: Path) -> tuple[int, int] | None:
    """(pid, start time) of the process that made a staging folder, or None for a name not of that form."""
    pid, _, rest = folder.name.partition("-")
    start, _, _ = rest.partition("-")
    return (int(pid), int(start)) if pid.isdigit() and start.isdigit() else None


def clean_staging(root: Path) -> list[Path]:
    """Remove the staging folders whose process is gone (killed mid-check); returns them."""
    removed = []
    try:
        folders = list((root / STAGING).iterdir())
    except OSError:
        return []
    for folder in folders:
        owner = _owner(folder)
        if owner is None or not process_alive(*owner):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def stage_upload(root: Path, upload: str | os.PathLike[str], limits: Any = None) -> Path:
    """Check and extract ``upload`` (an untrusted zip) into a new staging folder's ``data/`` in a child process;
    returns the folder. :class:`resattn.archive.ArchiveError` if refused (nothing is left staged then)."""
    from ..archive import Limits, extract_dataset_apart

    folder = staging_folder(root)
    folder.mkdir(parents=True)
    try:
        extract_dataset_apart(upload, folder / "data", limits or Limits())
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder
