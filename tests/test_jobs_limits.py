"""A server's limits on what one job may cost (issue 22), each at its boundary and one past it: epochs, image
steps, images, threads, wall time and queue places, read from the environment with safe defaults."""

from __future__ import annotations

import time

import pytest

from resattn import jobs
from resattn.jobs import JobError, JobLimits, within_limits

from .test_jobs import LONG, ROOT, manager_for, stop_all, tiny, wait_for  # noqa: F401 - ROOT for the record
from .test_jobs import dataset  # noqa: F401 - the shared fixture

SMALL = JobLimits(max_epochs=4, max_images=100, max_minutes=30, max_threads=1)


@pytest.fixture
def root(tmp_path):
    folder = tmp_path / "jobs"
    yield folder
    stop_all(folder)


def test_defaults_for_a_small_classroom_server_and_the_environment_overrides_them(monkeypatch):
    for name in (jobs.ENV_MAX_EPOCHS, jobs.ENV_MAX_IMAGES, jobs.ENV_MAX_MINUTES, jobs.ENV_MAX_QUEUED,
                 jobs.ENV_MAX_QUEUED_TOTAL):
        monkeypatch.delenv(name, raising=False)
    default = JobLimits.from_env()
    assert (default.max_epochs, default.max_images, default.max_minutes, default.max_queued,
            default.max_queued_total) == (20, 10_000, 30, 3, 10)
    assert default.max_threads == jobs.cpu_threads() and default.max_seconds == 1800
    monkeypatch.setenv(jobs.ENV_MAX_EPOCHS, "50")
    monkeypatch.setenv(jobs.ENV_MAX_IMAGES, "60000")
    monkeypatch.setenv(jobs.ENV_MAX_MINUTES, "90")
    monkeypatch.setenv(jobs.ENV_MAX_QUEUED, "1")
    monkeypatch.setenv(jobs.ENV_MAX_QUEUED_TOTAL, "4")
    assert JobLimits.from_env() == JobLimits(50, 60_000, 90, jobs.cpu_threads(), 1, 4)
    for bad in ("nan", "inf", "-3", "0", "lots"):  # a broken setting falls back to the safe default
        monkeypatch.setenv(jobs.ENV_MAX_MINUTES, bad)
        assert JobLimits.from_env().max_minutes == 30


def test_epochs_are_bounded_at_the_limit():
    assert within_limits(["--epochs", "4"], SMALL)[:2] == ["--epochs", "4"]
    with pytest.raises(JobError, match=r"--epochs 4.5 is over this server's limit of 4 epochs per job "
                                       r"\(RESATTN_JOBS_MAX_EPOCHS\)"):
        within_limits(["--epochs", "4.5"], SMALL)
    within_limits([], SMALL)  # the fast recipe's 2 epochs
    with pytest.raises(JobError, match="--iterations 160,000 of batch 64"):
        within_limits(["--recipe", "paper"], SMALL)  # the paper's 160k iterations, unless --epochs is given
    within_limits(["--recipe", "paper", "--epochs", "1"], SMALL)


def test_iterations_are_bounded_by_the_same_budget_of_images():
    # 4 epochs of 100 images = 400 images: 50 iterations of 8, or 400 of 1
    within_limits(["--iterations", "50", "--batch-size", "8"], SMALL)
    with pytest.raises(JobError, match=r"--iterations 51 of batch 8 is 408 images; this server allows 400 per job"):
        within_limits(["--iterations", "51", "--batch-size", "8"], SMALL)
    within_limits(["--iterations", "3"], JobLimits(
        max_epochs=4, max_images=96))  # the recipe's batch of 128: 384 images
    with pytest.raises(JobError, match="of batch 128"):
        within_limits(["--iterations", "4"], JobLimits(max_epochs=4, max_images=96))


def test_images_are_bounded_and_all_means_at_most_the_limit():
    done = within_limits(["--epochs", "1"], SMALL)
    assert jobs._option(done, "--train-limit") == "100" and jobs._option(done, "--test-limit") == "100"
    kept = within_limits(["--train-limit", "100", "--test-limit", "7"], SMALL)
    assert jobs._option(kept, "--train-limit") == "100" and jobs._option(kept, "--test-limit") == "7"
    for name in ("--train-limit", "--test-limit"):
        with pytest.raises(JobError, match=f"{name} 101 is over this server's limit of 100 images per job"):
            within_limits([name, "101"], SMALL)


def test_threads_leave_a_core_to_the_app():
    within_limits(["--threads", "2"], JobLimits(max_threads=2))
    with pytest.raises(JobError, match="--threads 3 is over this server's limit of 2"):
        within_limits(["--threads", "3"], JobLimits(max_threads=2))


def test_submit_applies_the_limits_for_the_command_line_and_the_page_alike(root, dataset):
    m = jobs.JobManager(root, max_running=0, job_limits=SMALL)
    with pytest.raises(JobError, match="--epochs 5 is over"):
        m.submit(tiny(dataset, "--epochs", "5"))
    with pytest.raises(JobError, match=r"invalid training options: argument --lr: must be a finite number"):
        m.submit(tiny(dataset, "--lr", "nan"))
    job = m.submit(tiny(dataset, "--epochs", "4"))
    assert jobs._option(job.options, "--train-limit") == "100" and job.max_seconds == 1800
    assert m.list() == [job]


def test_a_job_is_stopped_at_its_wall_time_and_one_within_it_succeeds(root, dataset):
    quick = jobs.JobManager(root, max_running=1, cache_dir=root.parent / "cache",
                            job_limits=JobLimits(max_epochs=1000, max_minutes=5))
    done = wait_for(quick, quick.submit(tiny(dataset, "--epochs", "1")).id, ("succeeded", "failed"))
    assert done.state == "succeeded", done.error
    strict = jobs.JobManager(root, max_running=1, cache_dir=root.parent / "cache",
                             job_limits=JobLimits(max_epochs=1000, max_minutes=0.1))  # 6 s
    started = time.monotonic()
    long = strict.submit(tiny(dataset, *LONG))
    stopped = wait_for(strict, long.id, ("failed", "succeeded", "cancelled"))
    assert stopped.state == "failed" and stopped.checkpoint is None
    assert stopped.error.startswith("the job ran past this server's limit of 0.1 minutes per job and was stopped")
    assert time.monotonic() - started < 6 + jobs.CANCEL_GRACE_S + 20
    assert not jobs.process_alive(stopped.trainer_pid, stopped.trainer_start)
