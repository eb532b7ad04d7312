"""Real browser (issue 25): Explore's parts view and channel atlas at 1280×800, the usual projector, on the shipped
photo model and scikit-learn's temple photo: every part and channel picture decodes and nothing sticks out
horizontally, and no colorbar covers a caption. Screenshots go to a temporary folder (``make screenshots``: docs/)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

try:  # tests/ may or may not be a package
    from .browser import (ROOT, full_screenshot, launch, overflow, overlapping_labels, rendered_images,
                          require_browser, screenshot_dir, settle, streamlit_server)
except ImportError:
    from browser import (ROOT, full_screenshot, launch, overflow, overlapping_labels, rendered_images,
                         require_browser, screenshot_dir, settle, streamlit_server)

pytestmark = [pytest.mark.browser]


def test_parts_and_atlas_fit_a_projector(tmp_path):
    from playwright.sync_api import expect, sync_playwright
    import sklearn.datasets

    require_browser()
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    shutil.copy(ROOT / "checkpoints" / "attention56_imagenette_mixed_arl.safetensors", folder)
    photo = Path(sklearn.datasets.__file__).parent / "images" / "china.jpg"
    shots = screenshot_dir(tmp_path)
    env = {"RESATTN_APP_MODELS": "none", "RESATTN_CHECKPOINT_DIR": str(folder)}
    with streamlit_server(tmp_path / "streamlit.log", env) as url, sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(url, timeout=90_000)
            sidebar = page.get_by_test_id("stSidebar")
            sidebar.get_by_text("Upload", exact=True).click()
            page.locator("input[type=file]").set_input_files(str(photo))
            expect(page.get_by_text("M (soft mask)")).to_be_visible(timeout=120_000)
            settle(page)

            page.get_by_text("parts (factorised)", exact=True).click()
            expect(page.get_by_text("parts explain", exact=False).first).to_be_visible(timeout=120_000)
            expect(page.get_by_text("channel by channel", exact=False).first).to_be_visible(timeout=120_000)
            settle(page)
            parts = page.get_by_text("of the parts' energy", exact=False).count()
            assert parts >= 3  # at least two parts and the chosen one again beside its channels
            assert rendered_images(page) >= parts + 3  # the picture, the input, the parts, one channel
            assert page.get_by_test_id("stException").count() == 0
            problems = overflow(page) + overlapping_labels(page)
            full_screenshot(page, shots / "explore-parts-1280.png")
            assert not problems, problems

            page.get_by_text("channel atlas", exact=True).click()
            expect(page.get_by_text("Channels 1–24 of", exact=False).first).to_be_visible(timeout=120_000)
            settle(page)
            assert rendered_images(page) >= 24 + 2
            assert page.get_by_test_id("stException").count() == 0
            problems = overflow(page) + overlapping_labels(page)
            full_screenshot(page, shots / "explore-atlas-1280.png")
            assert not problems, problems
        finally:
            browser.close()
