"""Real browser: `streamlit run app/serve.py` headless on 127.0.0.1, driven by Playwright with Debian's chromium.

Uploads a photo (scikit-learn's china.jpg, a temple the photo model calls a church, shipped with the package),
waits for the M/T/H panels and checks that the images really decoded, switches the stage, opens Attribution and
compares the class the page names with the class in the exported manifest, switches to a model with other classes
and compares again, and checks every page for horizontal overflow at 1280×800 and 1920×1080. Screenshots go to a
temporary folder; ``make screenshots`` points them at docs/ for the README.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

import resattn

try:  # tests/ may or may not be a package
    from .browser import (ROOT, below_first_screen, choose, full_screenshot, illegible_numbers, launch, overflow,
                          overlapping_labels, rendered_images, require_browser, screenshot_dir, settle,
                          streamlit_server)
except ImportError:
    from browser import (ROOT, below_first_screen, choose, full_screenshot, illegible_numbers, launch, overflow,
                         overlapping_labels, rendered_images, require_browser, screenshot_dir, settle,
                         streamlit_server)

pytestmark = [pytest.mark.browser]
SIZES = [(1280, 800), (1920, 1080)]
PHOTO_CLASSES = ["tench", "church", "parachute"]


@pytest.fixture
def server(tmp_path):
    """The repository's checkpoints, in a folder the test can add to (URL, folder)."""
    require_browser()
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for path in [*(ROOT / "checkpoints").glob("*.safetensors"), ROOT / "checkpoints" / "confidence.json"]:
        shutil.copy(path, folder / path.name)  # with the measured thresholds, as shipped
    env = {"RESATTN_APP_MODELS": "none", "RESATTN_CHECKPOINT_DIR": str(folder)}
    with streamlit_server(tmp_path / "streamlit.log", env) as url:
        yield url, folder


def _add_tiny_photo_model(folder: Path) -> None:
    """A tiny photo model with other classes, so a model switch changes the class list (as a switch from a CIFAR
    model to a photo model does). Added after the README screenshot, which shows the shipped default model."""
    torch.manual_seed(0)
    tiny = resattn.create_model("attention56_imagenet", width_mult=0.0625, num_classes=3).eval()
    meta = {"classes": PHOTO_CLASSES, "input_size": 96, "resize": 110, "mean": [0.45, 0.45, 0.4],
            "std": [0.25, 0.25, 0.25], "dataset": "test", "metrics": {}}
    resattn.save_checkpoint(folder / "zz_tiny_photo.safetensors", tiny, meta)


TITLES = {"Explore": "Explore the soft masks", "Attribution": "Masks and attributions", "Compare": "Compare models",
          "Learn": "Learn: Residual Attention Network"}
SETTLED = {"Explore": "M (soft mask)", "Attribution": "Agreement between the mask", "Compare": "Compared",
           "Learn": "Top-1 after knock-out"}


def _go(page, name: str) -> None:
    """Open a page and wait for its last element: clicking returns before the new page has even started."""
    from playwright.sync_api import expect

    page.get_by_test_id("stSidebarNav").get_by_role("link", name=name).click()
    expect(page.get_by_role("heading", name=TITLES[name]).first).to_be_visible(timeout=120_000)
    expect(page.get_by_text(SETTLED[name], exact=False).first).to_be_visible(timeout=180_000)
    settle(page)


def _explained(page) -> str:
    text = page.get_by_text("Explaining class", exact=False).first.inner_text(timeout=120_000)
    return re.search(r"Explaining class (.+?) \(index", text).group(1).strip()


def _manifest(page, button: str = "Manifest (.json)") -> dict:
    with page.expect_download(timeout=60_000) as info:
        page.get_by_role("button", name=button).first.click()
    return json.loads(Path(info.value.path()).read_text())


def _manifest_of(page, checkpoint: str, tries: int = 30) -> dict:
    """The exported manifest once it comes from the run for ``checkpoint``: the page's text is rewritten early in a
    run and its download buttons only at the end, and Streamlit may show its running indicator late, so a download
    right after a model switch can still be the previous run's."""
    for _ in range(tries):
        manifest = _manifest(page)
        if manifest.get("checkpoint") == checkpoint:
            return manifest
        page.wait_for_timeout(1000)
        settle(page)
    raise AssertionError(f"the manifest never named {checkpoint}: {manifest.get('checkpoint')}")


README_PICTURES = {"explore-1280.png"}  # what `make screenshots` writes to docs/; the rest go to tmp


def _check_page(page, folder: Path, name: str, size: tuple[int, int], scratch: Path, readme: bool = False) -> None:
    assert page.get_by_test_id("stException").count() == 0, f"exception on {name}"
    problems = overflow(page) + illegible_numbers(page) + overlapping_labels(page)
    file = f"{name}-{size[0]}.png"
    full_screenshot(page, (folder if readme and file in README_PICTURES else scratch) / file)
    assert not problems, f"{name} at {size[0]}×{size[1]}: {problems}"


#: What the first screen of Explore must hold at 1280×800 (issue 24): the picture, the predictions and the three
#: colorbars under M, T and H (so the maps above them too).
FIRST_SCREEN = ['[data-testid="stImage"] img', '[data-testid="stDataFrame"]',
                '.ra-colorbar', '[data-testid="stColumn"] [data-testid="stColumn"]:nth-child(3) .ra-colorbar']


def test_explorer_in_a_real_browser(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright
    import sklearn.datasets

    photo = Path(sklearn.datasets.__file__).parent / "images" / "china.jpg"
    url, checkpoints = server
    folder = screenshot_dir(tmp_path)
    with sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page(viewport={"width": SIZES[0][0], "height": SIZES[0][1]})
            page.goto(url, timeout=90_000)
            sidebar = page.get_by_test_id("stSidebar")
            sidebar.get_by_text("Upload", exact=True).click()
            page.locator("input[type=file]").set_input_files(str(photo))
            expect(page.get_by_text("M (soft mask)")).to_be_visible(timeout=120_000)
            page.wait_for_function("() => document.querySelectorAll('[data-testid=\"stImage\"] img').length >= 5",
                                   timeout=120_000)
            settle(page)
            assert rendered_images(page) >= 5  # the picture, the model's input, M, T, H (each with its colorbar)
            expect(page.get_by_text("colours: stretched", exact=False).first).to_be_visible()
            assert page.locator(".ra-tick").count() >= 9  # three numbers under each of M, T and H
            assert not illegible_numbers(page), illegible_numbers(page)
            assert not below_first_screen(page, FIRST_SCREEN), below_first_screen(page, FIRST_SCREEN)
            expect(page.get_by_text("The model's input:", exact=False).first).to_be_visible()

            choose(page, sidebar, "Attention stage", "stage 2")
            expect(page.get_by_text("Stage 2, module 1", exact=False).first).to_be_visible(timeout=120_000)
            settle(page)
            assert rendered_images(page) >= 5
            _check_page(page, folder, "explore", SIZES[0], tmp_path, readme=True)

            # Attribution names the class it computed, and the export names the same class
            _add_tiny_photo_model(checkpoints)
            _go(page, "Attribution")
            shown = _explained(page)
            assert _manifest(page)["target_class"] == shown
            # a model with other classes: the class to explain is its own, on the page and in the manifest
            choose(page, sidebar, "Model", "zz_tiny_photo")
            settle(page)
            # the manifest first: its button is rewritten at the end of the new model's run, so once it names the
            # new checkpoint the page's text is the new run's too (the photo model's class may also be one of these)
            manifest = _manifest_of(page, "zz_tiny_photo.safetensors")
            shown = _explained(page)
            assert shown in PHOTO_CLASSES
            assert manifest["target_class"] == shown
            _check_page(page, folder, "attribution", SIZES[0], tmp_path)

            for width, height in SIZES:
                page.set_viewport_size({"width": width, "height": height})
                for name in ("Explore", "Attribution", "Compare", "Learn"):
                    _go(page, name)
                    _check_page(page, folder, name.lower(), (width, height), tmp_path)

            # a link opens its view in a new session: the page from the path, the rest from the parameters
            fresh = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
            fresh.goto(f"{url}/attribution?model=attention56_imagenette_mixed_arl&image=china&stage=2&contrast=fixed",
                       timeout=90_000)
            expect(fresh.get_by_text("at stage 2; the mask is stage 2, module 1", exact=False)).to_be_visible(
                timeout=180_000)
            settle(fresh)
            fresh.get_by_test_id("stSidebar").get_by_text("Link to this view").click()
            shown = fresh.get_by_test_id("stSidebar").get_by_test_id("stCode").inner_text(timeout=30_000)
            assert shown.startswith(f"{url}/attribution?") and "stage=2" in shown and "contrast=fixed" in shown
            assert "image=china" in shown and "model=attention56_imagenette_mixed_arl" in shown
        finally:
            browser.close()
    assert (folder / "explore-1280.png").stat().st_size > 10_000
