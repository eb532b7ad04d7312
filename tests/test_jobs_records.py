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
from resattn.jobs import JobManager, process_alive, process_start, uploads

from .test_jobs import ROOT, manager_for, stop_all, tiny, wait_for
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
