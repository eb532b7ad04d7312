"""The job system on a tiny model and generated data: lifecycle, queue, failure, cancel, dead workers, restart,
the zip checks, the command line and the access rules. Every job started here is stopped in teardown."""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import stat
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import resattn
from resattn import jobs
from resattn.archive import ArchiveError, Limits, check_zip, extract_dataset, extract_zip
from resattn.jobs import JobError, JobManager, process_alive, process_start

from .test_data import make_tree, zip_tree

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model", "attention56_cifar", "--width-mult", "0.125", "--batch-size", "8", "--eval-batch-size", "16",
        "--threads", "1"]
LONG = ["--epochs", "500"]  # never finishes within a test: for cancel and kill


def guards(root: Path) -> list[int]:
    """Live guard processes of the jobs under ``root`` (their command line names it)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            words = (entry / "cmdline").read_bytes().split(b"\0") if entry.name.isdigit() else []
        except OSError:
            continue
        if b"_guard" in words and str(root).encode() in words:
            found.append(int(entry.name))
    return found


def stop_all(root: Path) -> None:
    """Stop every job under ``root``: no queued job may start later, no supervisor, guard or trainer may outlive a
    test."""
    for pid in guards(root):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if not (root / jobs.DB_NAME).exists():
        return
    conn = sqlite3.connect(root / jobs.DB_NAME, timeout=30)
    with conn:
        conn.execute("UPDATE jobs SET state = 'cancelled' WHERE state = 'queued'")
    conn.close()
    manager = JobManager(root, max_running=0, reconcile=False)
    for job in manager.list(reconcile=False):
        for pid, start in ((job.pid, job.pid_start), (job.trainer_pid, job.trainer_start)):
            if pid and process_alive(pid, start):
                jobs._kill_tree(pid, start, signal.SIGKILL)
    def alive() -> bool:
        return any(process_alive(p, s) for j in manager.list(reconcile=False)
                   for p, s in ((j.pid, j.pid_start), (j.trainer_pid, j.trainer_start)) if p)

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and alive():
        time.sleep(0.1)
    jobs._reap_children()


def wait_for(manager: JobManager, job_id: int, states: tuple[str, ...], timeout: float = 90.0, what=None):
    """Poll until the job is in one of ``states`` (and ``what(job)`` holds); fail with its log otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        manager.reconcile()
        job = manager.get(job_id)
        if job.state in states and (what is None or what(job)):
            return job
        time.sleep(0.2)
    job = manager.get(job_id)
    raise AssertionError(f"job {job_id} is {job.state}, not {states} after {timeout} s:\n{manager.log_tail(job)}")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("jobdata")
    return zip_tree(make_tree(root / "tree", per_class=(16, 4)), root / "tiny.zip")


@pytest.fixture
def root(tmp_path):
    folder = tmp_path / "jobs"
    yield folder
    stop_all(folder)


#: A server's limits that let LONG run: the tests of the limits themselves are in test_jobs_limits.py.
ROOMY = jobs.JobLimits(max_epochs=1000, max_queued=10)


def manager_for(root: Path, max_running: int = 1) -> JobManager:
    return JobManager(root, max_running=max_running, cache_dir=root.parent / "cache", job_limits=ROOMY)


def tiny(dataset, *extra: str) -> list[str]:
    return ["--data", str(dataset), *TINY, *extra]


def group_members(pgid: int) -> list[int]:
    """Live processes whose process group is ``pgid``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = jobs._proc_stat(int(entry))
            if st is not None and st[2] == pgid and st[0] not in "ZX":
                found.append(int(entry))
    return found


# ---------------------------------------------------------------------------------------------- lifecycle


def test_lifecycle_queue_snapshots_and_a_new_manager(root, dataset):
    m = manager_for(root, max_running=1)
    first = m.submit(tiny(dataset, "--epochs", "2", "--probe", "2"), owner="session-a")
    assert first.state == "queued"  # as submitted; then started because there was room
    second = m.submit(tiny(dataset, "--epochs", "1"), owner="session-b")
    assert m.get(first.id).state == "running" and m.get(second.id).state == "queued"  # one at a time

    done = wait_for(m, first.id, ("succeeded", "failed"))
    assert done.state == "succeeded", done.error
    assert done.checkpoint == done.folder / f"job-{done.id}.safetensors" and done.device == "cpu" and done.threads == 1
    model, meta = resattn.load_checkpoint(done.checkpoint)
    assert meta["classes"] == ["cat", "dog", "frog"]
    assert [p.name for p in m.snapshots(done)] == ["epoch_000.npz", "epoch_001.npz", "epoch_002.npz"]
    assert np.load(m.snapshots(done)[-1])["stage1_module1"].shape[0] == 2  # two probe images
    assert [row["epoch"] for row in m.metrics(done)] == [1, 2]
    progress = m.progress(done)
    assert progress.fraction == 1.0 and progress.iteration == progress.iterations == 12
    assert (done.folder / "config.json").is_file() and (done.folder / "job.json").is_file()
    assert not (done.folder / "state").exists()  # resume state removed once the checkpoint is written
    assert "final-epoch test accuracy" in m.log_tail(done)

    # the queued job started when the first ended, with no one calling reconcile in between but its supervisor
    later = wait_for(m, second.id, ("succeeded", "failed"))
    assert later.state == "succeeded", later.error
    assert later.started >= done.ended

    # a new manager (a restarted server) sees the same records
    fresh = JobManager(root, max_running=1)
    assert [(j.id, j.state, j.checkpoint) for j in fresh.list()] == [
        (later.id, "succeeded", later.checkpoint), (done.id, "succeeded", done.checkpoint)]
    assert jobs.succeeded_checkpoints(root) == [(later.id, later.checkpoint), (done.id, done.checkpoint)]
    record = fresh.get(done.id).to_dict(fresh.progress(fresh.get(done.id)))
    assert record["progress"] == 1.0 and record["checkpoint"] == str(done.checkpoint) and record["error"] is None


def test_a_failing_job_keeps_its_log_tail(root, dataset):
    m = manager_for(root)
    with pytest.raises(JobError, match=r"--classes: 'horse' not in the dataset \(classes: cat, dog, frog\)"):
        m.submit(tiny(dataset, "--epochs", "1", "--classes", "horse"))  # known at submit: refused there
    small = m.submit(tiny(dataset, "--epochs", "1", "--batch-size", "64"))  # 48 training images
    failed = wait_for(m, small.id, ("failed", "succeeded"))
    assert failed.state == "failed" and failed.returncode == 1 and failed.checkpoint is None
    # the cause from the trainer's log leads the error (the page shows its first line), the log's tail follows
    assert failed.error.splitlines()[0] == (
        "the trainer exited with code 1: 48 training images make no full batch of 64")
    assert "\nerror: 48 training images make no full batch of 64" in failed.error


def test_the_cause_of_a_failure_is_read_from_the_log(tmp_path):
    job = jobs.Job(1, "failed", "x", [], None, None, "cpu", 1, 1, tmp_path, 0.0)
    assert jobs.failure_cause(job) is None  # no log
    job.log_path.write_text("epoch 1/2: 50%|##| 3/6\rTraceback (most recent call last):\n  File \"x\", line 1\n"
                            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n")
    assert jobs.failure_cause(job) == "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    job.log_path.write_text("error: the loss became nan\nTraceback (most recent call last):\nValueError: later\n")
    assert jobs.failure_cause(job) == "the loss became nan"  # the trainer's own line wins


def test_cancel_stops_the_trainers_whole_process_group(root, dataset):
    m = manager_for(root)
    job = m.submit(tiny(dataset, *LONG))
    training = lambda j: m.progress(j).iteration > 0  # noqa: E731 - past the imports and data: in the loop
    running = wait_for(m, job.id, ("running",), what=training)
    trainer = running.trainer_pid
    assert os.getpgid(trainer) == trainer != os.getpgid(running.pid)  # the trainer leads its own group
    cancelled = m.cancel(job.id, wait=30)
    assert cancelled.state == "cancelled" and cancelled.error is None
    assert not process_alive(trainer, running.trainer_start) and group_members(trainer) == []
    deadline = time.monotonic() + 10  # the supervisor recorded the outcome; it exits right after
    while process_alive(running.pid, running.pid_start) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not process_alive(running.pid, running.pid_start)
    log = jobs.job_log(cancelled)  # kept: the trainer stopped at a step boundary on SIGTERM, as it should
    assert "resattn.train configuration" in log and "stopped at iteration" in log
    with pytest.raises(JobError, match="already ended"):
        m.cancel(job.id)


def test_a_killed_worker_is_marked_failed_and_an_orphaned_trainer_is_stopped(root, dataset):
    m = manager_for(root, max_running=2)
    both = m.submit(tiny(dataset, *LONG))
    orphan = m.submit(tiny(dataset, *LONG))
    live = lambda j: j.trainer_pid and process_alive(j.trainer_pid, j.trainer_start)  # noqa: E731
    a, b = wait_for(m, both.id, ("running",), what=live), wait_for(m, orphan.id, ("running",), what=live)
    os.kill(a.pid, signal.SIGKILL)  # supervisor and trainer killed (as by the OOM killer or a reboot)
    os.kill(a.trainer_pid, signal.SIGKILL)
    os.kill(b.pid, signal.SIGKILL)  # only the supervisor: its trainer goes on, unsupervised
    time.sleep(0.3)
    fresh = JobManager(root, max_running=0)  # reconciles on start
    dead_a, dead_b = fresh.get(a.id), fresh.get(b.id)
    assert dead_a.state == dead_b.state == "failed"
    assert "supervisor" in dead_a.error and "is gone" in dead_a.error
    assert "orphaned trainer was stopped" in dead_b.error
    deadline = time.monotonic() + 5
    while process_alive(b.trainer_pid, b.trainer_start) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not process_alive(b.trainer_pid, b.trainer_start)


def test_a_reused_pid_is_not_taken_for_a_running_job(root, dataset):
    m = manager_for(root, max_running=0)  # nothing starts: the rows are set by hand
    real, reused = m.submit(tiny(dataset)), m.submit(tiny(dataset))
    stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # a live "supervisor"
    try:
        pid, start = stand_in.pid, process_start(stand_in.pid)
        conn = sqlite3.connect(root / jobs.DB_NAME)
        with conn:  # both "run" under the same pid; only one has its start time: the other's pid was reused
            conn.execute("UPDATE jobs SET state='running', pid=?, pid_start=? WHERE id=?", (pid, start, real.id))
            conn.execute("UPDATE jobs SET state='running', pid=?, pid_start=? WHERE id=?", (pid, start - 1, reused.id))
        conn.close()
        m.reconcile()
        assert m.get(real.id).state == "running"
        assert m.get(reused.id).state == "failed" and "is gone" in m.get(reused.id).error
    finally:
        stand_in.kill()
        stand_in.wait()
    m.reconcile()
    assert m.get(real.id).state == "failed"  # and once it really is gone


def test_kill_tree_reaches_descendants_in_their_own_sessions(tmp_path):
    # like torchrun: a parent that ignores SIGTERM and a worker in a new session
    script = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
              "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True); "
              "print(p.pid, flush=True); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        worker = int(parent.stdout.readline())
        worker_start = process_start(worker)
        jobs._kill_tree(parent.pid, process_start(parent.pid), signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 5
        while process_alive(worker, worker_start) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not process_alive(worker, worker_start)
    finally:
        parent.kill()


# ---------------------------------------------------------------------------------------------- commands and presets


def test_trainer_command_for_cpu_one_gpu_and_torchrun(tmp_path):
    cpu = jobs.trainer_command(["--data", "d.zip"], tmp_path, "cpu", 1, threads=3, python="py",
                               checkpoint=tmp_path / "job-1.safetensors")
    assert cpu[:3] == ["py", "-m", "resattn.train"]
    assert cpu[cpu.index("--checkpoint") + 1] == str(tmp_path / "job-1.safetensors")
    assert cpu[cpu.index("--device") + 1] == "cpu" and cpu[cpu.index("--threads") + 1] == "3"
    assert cpu[cpu.index("--out") + 1] == str(tmp_path) and cpu[cpu.index("--state-dir") + 1] == str(tmp_path / "state")
    one = jobs.trainer_command(["--data", "d.zip"], tmp_path, "cuda", 1, python="py")
    assert one[:3] == ["py", "-m", "resattn.train"] and "--threads" not in one
    assert one[one.index("--device") + 1] == "cuda"
    four = jobs.trainer_command(["--data", "d.zip", "--batch-size", "64"], tmp_path, "cuda", 4, python="py")
    assert four[:7] == ["py", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "4", "-m"]
    assert four[7:10] == ["resattn.train", "--data", "d.zip"] and four[four.index("--device") + 1] == "cuda"
    mine = jobs.trainer_command(["--device", "cpu", "--threads", "2"], tmp_path, "cpu", 1, threads=5, python="py")
    assert mine.count("--device") == 1 and mine.count("--threads") == 1 and mine[mine.index("--threads") + 1] == "2"
    env = jobs.trainer_env("cpu", 3, {"RESATTN_JOBS_PASSPHRASE": "x", "PATH": "/bin"})
    assert env["OMP_NUM_THREADS"] == "3" and "RESATTN_JOBS_PASSPHRASE" not in env
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(ROOT)


def test_submit_refuses_managed_and_invalid_options(root, dataset, monkeypatch):
    m = manager_for(root, max_running=0)
    with pytest.raises(JobError, match="--out is set by the job system"):
        m.submit(tiny(dataset, "--out", "elsewhere"))
    with pytest.raises(JobError, match="invalid training options"):
        m.submit(tiny(dataset, "--recipe", "nonsense"))
    with pytest.raises(JobError, match="no such dataset"):
        m.submit(["--data", str(dataset.parent / "missing.zip")])
    monkeypatch.setenv("RESATTN_DATASETS", f"tiny={dataset}, broken")
    assert jobs.configured_datasets() == {"tiny": str(dataset)}
    job = m.submit(["--data", "tiny", *TINY])  # a configured name becomes its path
    assert jobs._option(job.options, "--data") == str(dataset) and "on tiny" in job.label
    assert m.list() and m.get(job.id).state == "queued"  # max_running 0: nothing starts
    monkeypatch.chdir(dataset.parent)  # the trainer runs in the job's folder: relative paths are made absolute
    relative = m.submit(["--data", dataset.name, "--cache-dir", "cache", *TINY])
    assert jobs._option(relative.options, "--data") == str(dataset)
    assert jobs._option(relative.options, "--cache-dir") == str(dataset.parent / "cache")


def _tiny_checkpoint(path: Path, learning: str) -> Path:
    model = resattn.create_model("attention56_cifar", width_mult=0.125, learning=learning)
    resattn.save_checkpoint(path, model, {"classes": ["cat", "dog", "frog", "x", "y", "z", "a", "b", "c", "d"],
                                          "input_size": 16, "mean": [0.5] * 3, "std": [0.25] * 3, "dataset": "tiny"})
    return path


def test_arl_nal_pair_from_matching_checkpoints_and_from_scratch(root, dataset, tmp_path):
    arl = _tiny_checkpoint(tmp_path / "tiny_arl.safetensors", "arl")
    nal = _tiny_checkpoint(tmp_path / "tiny_nal.safetensors", "nal")
    assert jobs.counterpart(nal, [arl, nal]) == arl and jobs.counterpart(arl, [arl]) is None
    m = manager_for(root, max_running=0)
    options = jobs.fine_tune_options(nal, str(dataset), train_only="stage3", epochs=2, lr=0.01, classes=["cat", "dog"],
                                     label_noise=0.3, batch_size=8)
    a, n = m.submit_pair(options, candidates=[arl, nal], owner="s")
    assert jobs._option(a.options, "--init-from") == str(arl) and jobs._option(n.options, "--init-from") == str(nal)
    strip = lambda o: jobs._without(o, "--init-from")  # noqa: E731
    assert strip(a.options) == strip(n.options)  # same data, seed, budget, classes and noise
    assert a.group == n.group and a.group.startswith("pair-") and "(ARL)" in a.label and "(NAL)" in n.label
    assert "label noise 0.3" in a.label and "2 classes" in a.label and "last stage" in a.label
    s_arl, s_nal = m.submit_pair(tiny(dataset, "--epochs", "1"))
    assert jobs._option(s_arl.options, "--learning") == "arl" and jobs._option(s_nal.options, "--learning") == "nal"
    with pytest.raises(JobError, match="no checkpoint matches"):
        m.submit_pair(jobs.fine_tune_options(arl, str(dataset)), candidates=[arl])


# ---------------------------------------------------------------------------------------------- the zip checks


def _png(seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _zip(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return path


def _good(n: int = 2) -> dict[str, bytes]:
    return {f"{split}/{c}/{i}.png": _png(i) for split in ("train", "test") for c in ("cat", "dog") for i in range(n)}


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.parametrize("case, message", [
    ("traversal", "escapes the target folder"),
    ("absolute", "absolute path"),
    ("symlink", "symbolic link"),
    ("too many files", "more than 5 files"),
    ("too many bytes", "expands to more than 1,500 bytes"),
    ("large member", "over the 100-byte limit"),
    ("lying size", "lies about its size"),
    ("not an image name", "is not an image file"),
    ("not an image", "is not a usable image"),
    ("no test split", "needs both a train/ folder and a test/"),
])
def test_bad_zips_are_refused_and_nothing_is_written(tmp_path, case, message):
    limits = Limits()
    members = _good()
    links = None
    if case == "traversal":
        members["train/cat/../../../escaped.png"] = _png()
    elif case == "absolute":
        members[str(tmp_path / "absolute.png")] = _png()
    elif case == "symlink":
        links = {"train/cat/link.png": "/etc/passwd"}
    elif case == "too many files":
        limits = Limits(max_files=5)
    elif case == "too many bytes":
        limits = Limits(max_total_bytes=1500)
    elif case == "large member":
        limits = Limits(max_member_bytes=100)
    elif case == "not an image name":
        members["train/cat/notes.txt"] = b"lecture notes"
    elif case == "not an image":
        members["train/cat/fake.png"] = b"these are lecture notes, not a picture\n" * 20
    elif case == "no test split":
        members = {k: v for k, v in members.items() if k.startswith("train/")}
    upload = _zip(tmp_path / "upload.zip", members, links)
    if case == "lying size":  # declare 10 bytes for the first member, in both headers
        data = bytearray(upload.read_bytes())
        struct.pack_into("<I", data, data.index(b"PK\x03\x04") + 22, 10)
        struct.pack_into("<I", data, data.index(b"PK\x01\x02") + 24, 10)
        upload.write_bytes(bytes(data))
    before = _files(tmp_path)
    target = tmp_path / "job" / "data"
    with pytest.raises(ArchiveError, match=message):
        extract_dataset(upload, target, limits)
    assert not target.exists()
    assert _files(tmp_path) - before <= {"job"}  # at most the (now empty) parent folder
    assert not (tmp_path / "escaped.png").exists() and not (tmp_path.parent / "escaped.png").exists()


def test_special_files_and_duplicates_are_refused(tmp_path):
    with zipfile.ZipFile(tmp_path / "fifo.zip", "w") as zf:
        info = zipfile.ZipInfo("train/cat/pipe.png")
        info.external_attr = (stat.S_IFIFO | 0o644) << 16
        zf.writestr(info, b"")
    with pytest.raises(ArchiveError, match="special file"):
        check_zip(tmp_path / "fifo.zip")
    with pytest.raises(ArchiveError, match="backslashes"):
        check_zip(_zip(tmp_path / "win.zip", {"train\\..\\..\\x.png": _png()}))
    (tmp_path / "not.zip").write_bytes(b"plain text")
    with pytest.raises(ArchiveError, match="not a zip file"):
        check_zip(tmp_path / "not.zip")


def test_good_zips_extract_with_a_deterministic_split(tmp_path):
    split = extract_dataset(_zip(tmp_path / "split.zip", {f"top/{k}": v for k, v in _good(3).items()}), tmp_path / "a")
    assert split.layout == "split" and split.classes == ["cat", "dog"] and split.counts == {"train": 6, "test": 6}
    assert (tmp_path / "a" / "train" / "cat" / "0.png").is_file()
    flat = {f"{c}/{i:02d}.jpg": _png(i) for c in ("cat", "dog") for i in range(12)}
    flat["__MACOSX/cat/._00.jpg"] = b"resource fork"
    flat["cat/.DS_Store"] = b"finder"
    upload = _zip(tmp_path / "flat.zip", flat)
    first = extract_dataset(upload, tmp_path / "b")
    again = extract_dataset(upload, tmp_path / "c")
    assert first.layout == "class folders" and first.counts == {"train": 20, "test": 4}  # every fifth: 04, 09
    assert sorted(p.name for p in (tmp_path / "b" / "test" / "cat").iterdir()) == ["04.jpg", "09.jpg"]
    assert _files(tmp_path / "b") == _files(tmp_path / "c") and sorted(first.skipped) == sorted(again.skipped)
    assert len(first.skipped) == 2 and not any(".DS_Store" in f for f in _files(tmp_path / "b"))
    assert len(extract_zip(upload, tmp_path / "d")) == 24  # the plain extraction keeps the layout
    with pytest.raises(ArchiveError, match="already exists"):
        extract_dataset(upload, tmp_path / "b")


def test_an_uploaded_zip_is_checked_before_a_job_exists(root, tmp_path):
    m = manager_for(root, max_running=0)
    bad = _zip(tmp_path / "bad.zip", {**_good(), "train/cat/../../../../escaped.png": _png()})
    with pytest.raises(ArchiveError, match="escapes"):
        m.submit(TINY + ["--epochs", "1"], upload=bad)
    assert m.list() == [] and not any((root / ".staging").glob("*"))
    flat = _zip(tmp_path / "flat.zip", {f"{c}/{i}.png": _png(i) for c in ("cat", "dog") for i in range(5)})
    job = m.submit(TINY + ["--epochs", "1"], upload=flat)
    data = job.folder / "data"
    assert jobs._option(job.options, "--data") == str(data) and "--cache-dir" not in job.options
    assert sorted(p.name for p in (data / "test").iterdir()) == ["cat", "dog"]
    assert "on uploaded flat.zip" in job.label
    with pytest.raises(JobError, match="not both"):
        m.submit(TINY + ["--data", "x.zip"], upload=flat)


# ---------------------------------------------------------------------------------------------- access rules


def test_passphrase_is_compared_in_constant_time(monkeypatch):
    calls = []
    real = jobs.access.hmac.compare_digest
    monkeypatch.setattr(jobs.access.hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    assert jobs.passphrase_matches("open sesame", "open sesame")
    assert not jobs.passphrase_matches("open", "open sesame") and not jobs.passphrase_matches(None, "open sesame")
    assert len(calls) == 3
    assert jobs.passphrase_matches(None, None) and jobs.passphrase_matches("anything", "")  # none set: open


def test_owner_passphrase_and_queue_cap_rules(root, dataset):
    m = manager_for(root, max_running=0)
    refuse = jobs.submit_refusal
    two = jobs.JobLimits(max_queued=2, max_queued_total=3)
    assert "needs the passphrase" in refuse(m, "s1", passphrase_set=True, unlocked=False, limits=two)
    assert refuse(m, "s1", passphrase_set=True, unlocked=True, limits=two) is None
    mine = m.submit(tiny(dataset), owner="s1")
    assert refuse(m, "s1", passphrase_set=False, unlocked=False, limits=two) is None  # one held, a second fits
    m.submit(tiny(dataset), owner="s1")
    assert "limit is 2 per browser" in refuse(m, "s1", passphrase_set=False, unlocked=False, limits=two)
    assert refuse(m, "s2", passphrase_set=False, unlocked=False, limits=two) is None  # a cap per browser
    assert "limit is 2" in refuse(m, "s2", passphrase_set=False, unlocked=False, limits=two, count=3)  # a pair+1
    m.submit(tiny(dataset), owner="s2")  # three queued: exactly the server's limit
    assert "queue is full: 3 job(s) are waiting and the limit is 3" in refuse(
        m, "s3", passphrase_set=False, unlocked=False, limits=two)
    # cancelling: without a passphrase, only your own jobs; with one, its holders may cancel any job
    cancel = jobs.cancel_refusal
    assert cancel(mine, "s1", passphrase_set=False, unlocked=False) is None
    assert "another browser" in cancel(mine, "s2", passphrase_set=False, unlocked=False)
    assert "needs the passphrase" in cancel(mine, "s1", passphrase_set=True, unlocked=False)
    assert cancel(mine, "s2", passphrase_set=True, unlocked=True) is None
    ended = m.cancel(mine.id)
    assert ended.state == "cancelled" and "already ended" in cancel(ended, "s1", passphrase_set=False, unlocked=False)
    assert m.queued_count("s1") == 1 and m.active_count("s1") == 1 and m.queued_count() == 2
    assert refuse(m, "s3", passphrase_set=False, unlocked=False, limits=two) is None  # a place freed


# ---------------------------------------------------------------------------------------------- command line


def _cli(root: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "RESATTN_DATA_CACHE": str(root.parent / "cache"), **(env or {})}
    return subprocess.run([sys.executable, "-m", "resattn.jobs", "--dir", str(root), *args], capture_output=True,
                          text=True, timeout=120, cwd=ROOT, env=env)


def test_command_line_submit_list_show_cancel_logs(root, dataset):
    queued = _cli(root, "--max-running", "0", "submit", *tiny(dataset, "--epochs", "1"))
    assert queued.returncode == 0, queued.stderr
    first = int(queued.stdout.strip())
    listed = _cli(root, "--max-running", "0", "list", "--json")
    rows = json.loads(listed.stdout)
    assert [(r["id"], r["state"], r["progress"], r["checkpoint"], r["error"], r["device"]) for r in rows] == [
        (first, "queued", 0.0, None, None, "cpu")]
    cancelled = _cli(root, "--max-running", "0", "cancel", str(first))
    assert cancelled.returncode == 0 and f"job {first}: cancelled" in cancelled.stdout

    ran = _cli(root, "submit", *tiny(dataset, "--epochs", "1"), "--label", "from the terminal")
    assert ran.returncode == 0, ran.stderr
    second = int(ran.stdout.strip())
    wait_for(manager_for(root), second, ("succeeded", "failed"))
    shown = json.loads(_cli(root, "show", str(second), "--json").stdout)
    assert shown["state"] == "succeeded" and shown["progress"] == 1.0 and shown["label"] == "from the terminal"
    assert Path(shown["checkpoint"]).is_file() and shown["error"] is None
    logs = _cli(root, "logs", str(second))
    assert logs.returncode == 0 and "final-epoch test accuracy" in logs.stdout and "\r" not in logs.stdout
