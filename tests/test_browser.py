"""Real browser: `streamlit run app/main.py` headless on 127.0.0.1, driven by Playwright with Debian's chromium.

Uploads a photo (scikit-image's astronaut, shipped with the package), waits for the M/T/H panels, checks the
images really decoded in the browser, switches the stage, fails on any Streamlit exception element, and saves
the screenshot the README shows (docs/explore.png).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = ROOT / "docs" / "explore.png"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium not installed at /usr/bin/chromium "
                       "(`make chromium` installs it; Playwright's own browser download does not work here)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    port = _free_port()
    # the repository's own checkpoints/ (what a user gets), plus one random model
    env = {**os.environ, "RESATTN_APP_MODELS": "attention56_cifar", "RESATTN_THREADS": "1"}
    for key in ("RESATTN_GALLERY_DATA", "RESATTN_CHECKPOINT_DIR"):
        env.pop(key, None)
    log = (tmp_path / "streamlit.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app/main.py", "--server.headless", "true",
         "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("streamlit did not start:\n" + (tmp_path / "streamlit.log").read_text())
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _rendered_images(page) -> int:
    """Images that actually decoded in the browser (naturalWidth > 0)."""
    return page.evaluate(
        "() => [...document.querySelectorAll('[data-testid=\"stImage\"] img')]"
        ".filter(i => i.complete && i.naturalWidth > 0).length"
    )


def test_explore_in_a_real_browser(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright
    import skimage

    photo = Path(skimage.__file__).parent / "data" / "astronaut.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"],
        )
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1420})
            page.goto(server, timeout=60_000)
            sidebar = page.get_by_test_id("stSidebar")
            sidebar.get_by_text("Upload", exact=True).click()
            page.locator("input[type=file]").set_input_files(str(photo))
            expect(page.get_by_text("M (soft mask)")).to_be_visible(timeout=90_000)
            expect(page.get_by_text("Stage 1, module 1", exact=False).first).to_be_visible()
            page.wait_for_function("() => document.querySelectorAll('[data-testid=\"stImage\"] img').length >= 4",
                                   timeout=60_000)
            page.wait_for_timeout(500)
            assert _rendered_images(page) >= 4  # the model's view + M, T, H
            assert page.get_by_test_id("stException").count() == 0

            stage = sidebar.get_by_test_id("stSelectbox").filter(has_text="Attention stage")
            stage.click()
            page.get_by_role("option", name="stage 2").click()
            expect(page.get_by_text("Stage 2, module 1", exact=False).first).to_be_visible(timeout=60_000)
            page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')",
                                   timeout=60_000)
            # elements of the previous run are faded (data-stale) until the rerun replaces them
            page.wait_for_function("() => document.querySelectorAll('[data-stale=\"true\"]').length === 0",
                                   timeout=60_000)
            page.wait_for_timeout(800)
            assert _rendered_images(page) >= 4
            assert page.get_by_test_id("stException").count() == 0
            SCREENSHOT.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        finally:
            browser.close()
    assert SCREENSHOT.stat().st_size > 10_000
