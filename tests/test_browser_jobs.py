"""Real browser: start a tiny fine-tuning job from the Train page (Streamlit headless on 127.0.0.1, Debian's
chromium through Playwright) and watch its progress bar move on its own, without any click, until it succeeds."""

from __future__ import annotations

import re
import time

import pytest

from .test_jobs import stop_all
from .test_data import make_tree, zip_tree
from .test_train_page import tiny_checkpoint

try:  # tests/ may or may not be a package
    from .browser import choose, launch, require_browser, settle, streamlit_server
except ImportError:
    from browser import choose, launch, require_browser, settle, streamlit_server

pytestmark = [pytest.mark.browser]


def _env(tmp_path, **extra: str) -> dict[str, str]:
    data = zip_tree(make_tree(tmp_path / "tree", per_class=(16, 4)), tmp_path / "tiny.zip")
    tiny_checkpoint(tmp_path / "checkpoints")
    return {"RESATTN_APP_MODELS": "none", "RESATTN_CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
            "RESATTN_JOBS_DIR": str(tmp_path / "jobs"), "RESATTN_DATASETS": f"tiny={data}",
            "RESATTN_DATA_CACHE": str(tmp_path / "cache"), "RESATTN_JOBS_PASSPHRASE": "", "RESATTN_GALLERY_DATA": "",
            **extra}


@pytest.fixture
def queue_only(tmp_path):
    """A server whose jobs stay queued (no trainer runs)."""
    require_browser()
    env = _env(tmp_path, RESATTN_JOBS_MAX_RUNNING="0")
    try:
        with streamlit_server(tmp_path / "streamlit.log", env) as url:
            yield url, tmp_path / "jobs", tmp_path / "tiny.zip"
    finally:
        stop_all(tmp_path / "jobs")


def test_a_reload_keeps_the_browsers_jobs_and_user_text_shows_as_typed(queue_only):
    """The browser's cookie survives a reload (its job is still its own, so it may cancel it); a label full of
    Markdown is shown as the characters it is made of."""
    from playwright.sync_api import expect, sync_playwright

    from resattn import jobs

    url, jobs_dir, data = queue_only
    hostile = "**bold** [link](x) :red[alarm] <b>x</b>"
    with sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{url}/train", timeout=60_000)
            expect(page.get_by_text("No jobs yet.")).to_be_visible(timeout=120_000)
            settle(page)
            page.get_by_role("button", name="Start job").click()
            expect(page.get_by_text("Queued job 1.")).to_be_visible(timeout=60_000)
            assert any(c["name"] == "resattn_browser" for c in page.context.cookies())
            jobs.JobManager(jobs_dir, max_running=0).submit(["--data", str(data), "--epochs", "1"], owner="cli",
                                                            label=hostile)
            page.reload()
            expect(page.get_by_role("heading", name="Jobs")).to_be_visible(timeout=120_000)
            settle(page)
            caption = page.get_by_text(hostile + " · device", exact=False)
            expect(caption).to_be_visible(timeout=60_000)  # job 2 is shown first: its label, character for character
            assert page.locator("strong", has_text="bold").count() == 0
            choose(page, page, "Job", "job 1 · queued")
            settle(page)
            expect(page.get_by_text("started by you")).to_be_visible(timeout=60_000)  # after the reload too
            page.get_by_role("button", name="Cancel job").click()
            expect(page.get_by_text("Job 1: cancelled", exact=False)).to_be_visible(timeout=60_000)
            assert jobs.JobManager(jobs_dir, max_running=0).get(1).state == "cancelled"
            assert page.get_by_test_id("stException").count() == 0
        finally:
            browser.close()


@pytest.fixture
def server(tmp_path):
    require_browser()
    data = zip_tree(make_tree(tmp_path / "tree", per_class=(16, 4)), tmp_path / "tiny.zip")
    tiny_checkpoint(tmp_path / "checkpoints")
    jobs_dir = tmp_path / "jobs"
    env = {"RESATTN_APP_MODELS": "none", "RESATTN_CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
           "RESATTN_JOBS_DIR": str(jobs_dir), "RESATTN_DATASETS": f"tiny={data}",
           "RESATTN_DATA_CACHE": str(tmp_path / "cache"), "RESATTN_JOBS_PASSPHRASE": "", "RESATTN_GALLERY_DATA": "",
           "RESATTN_JOBS_MAX_EPOCHS": "100"}  # the test watches a 40-epoch job move, then it is stopped
    try:
        with streamlit_server(tmp_path / "streamlit.log", env) as url:
            yield url
    finally:
        stop_all(jobs_dir)  # the job outlives the server by design: stop it here


def _fill(page, label: str, value: str) -> None:  # noqa: ANN001
    box = page.get_by_label(label, exact=True)
    box.fill(value)
    box.press("Enter")
    settle(page)


def test_start_a_job_in_the_browser_and_see_its_progress_move(server):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{server}/train", timeout=60_000)
            expect(page.get_by_role("heading", name="Start a fine-tuning job")).to_be_visible(timeout=120_000)
            expect(page.get_by_text("No jobs yet.")).to_be_visible(timeout=60_000)
            settle(page)
            _fill(page, "Epochs", "40")
            page.get_by_text("Budget", exact=True).click()
            _fill(page, "Batch size", "8")
            page.get_by_role("button", name="Start job").click()
            expect(page.get_by_text("Queued job 1.")).to_be_visible(timeout=60_000)

            bar = page.get_by_test_id("stProgress").first
            seen: list[tuple[str, int]] = []
            deadline = time.monotonic() + 150
            while time.monotonic() < deadline:  # no clicks: the fragment refreshes itself
                try:
                    text = bar.inner_text(timeout=5_000)
                except Exception:  # noqa: BLE001 - replaced while the fragment reruns; read it again
                    continue
                found = re.search(r"Job 1: (\w+) · (\d+)%", text)
                if found and (not seen or seen[-1] != (found.group(1), int(found.group(2)))):
                    seen.append((found.group(1), int(found.group(2))))
                if found and found.group(1) in ("succeeded", "failed", "cancelled"):
                    break
                page.wait_for_timeout(400)
            assert seen and seen[-1] == ("succeeded", 100), seen
            percents = [pct for _, pct in seen]
            assert len(set(percents)) >= 2 and percents == sorted(percents), seen  # it moved, and only forward
            assert any(state == "running" and 0 < pct < 100 for state, pct in seen), seen
            expect(page.get_by_text("pick job 1 in the model picker", exact=False)).to_be_visible(timeout=30_000)
            assert page.get_by_test_id("stException").count() == 0
        finally:
            browser.close()
