"""What the real-browser tests share: a Streamlit server on 127.0.0.1, Debian's chromium through Playwright, and
checks on what the page really shows (decoded images, no exception, no horizontal overflow, nothing stale).

Under ``CI=true`` a missing chromium or Playwright is a failure, not a skip: CI must run the browser tests.
Elsewhere they are skipped with a message naming what to install.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]


def require_browser() -> None:
    """Skip (or, under CI, fail) when Debian's chromium or Playwright is missing."""
    missing = []
    if not CHROMIUM.exists():
        missing.append("Debian's chromium at /usr/bin/chromium (`sudo apt-get install chromium`, or `make chromium` as root)")
    try:
        import playwright  # noqa: F401
    except ImportError:
        missing.append("Playwright (`pip install -e '.[test]'`)")
    if missing:
        message = "the browser test needs " + " and ".join(missing)
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true: {message}", pytrace=False)
        pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def streamlit_server(log_path: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """``streamlit run app/serve.py`` headless on a free port; yields its URL, stops it afterwards."""
    port = free_port()
    full_env = {**os.environ, "RESATTN_THREADS": "1", **(env or {})}
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app/serve.py", "--server.headless", "true",
             "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false"],
            cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 90
            while True:
                try:
                    urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)
                    break
                except OSError:
                    if proc.poll() is not None or time.time() > deadline:
                        raise RuntimeError("streamlit did not start:\n" + log_path.read_text())
                    time.sleep(0.5)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def launch(playwright):  # noqa: ANN001, ANN201 - Playwright objects
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


def settle(page, timeout: int = 120_000) -> None:  # noqa: ANN001
    """Wait until the script run is over and every element of the previous run has been replaced."""
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=timeout)
    page.wait_for_function("() => document.querySelectorAll('[data-stale=\"true\"]').length === 0", timeout=timeout)
    page.wait_for_timeout(500)


def rendered_images(page) -> int:  # noqa: ANN001
    """Images that actually decoded in the browser (naturalWidth > 0)."""
    return page.evaluate(
        "() => [...document.querySelectorAll('[data-testid=\"stImage\"] img')]"
        ".filter(i => i.complete && i.naturalWidth > 0).length"
    )


def overflow(page) -> list[str]:  # noqa: ANN001
    """What sticks out horizontally: the main area itself, any element of it wider than the main area, and
    dataframes that need horizontal scrolling. Empty when the page fits its width."""
    return page.evaluate(
        """() => {
          const problems = [];
          const main = document.querySelector('[data-testid="stMain"]') || document.querySelector('section.main');
          if (!main) return ['no main area'];
          if (main.scrollWidth > main.clientWidth + 1) problems.push(`main area scrolls: ${main.scrollWidth} > ${main.clientWidth}`);
          const right = main.getBoundingClientRect().right + 1;
          for (const el of main.querySelectorAll('.katex-display, [data-testid="stImage"] img, [data-testid="stGraphVizChart"] svg')) {
            const box = el.getBoundingClientRect();
            if (box.width > 0 && box.right > right) problems.push(`${el.className || el.tagName} ends at ${Math.round(box.right)} > ${Math.round(right)}`);
          }
          for (const el of main.querySelectorAll('.katex-display')) {
            if (el.scrollWidth > el.clientWidth + 1) problems.push(`formula cut off: ${el.textContent.slice(0, 40)}`);
          }
          for (const el of main.querySelectorAll('[data-testid="stDataFrame"] .dvn-scroller')) {
            if (el.scrollWidth > el.clientWidth + 1) problems.push(`dataframe scrolls horizontally: ${el.scrollWidth} > ${el.clientWidth}`);
          }
          return problems;
        }"""
    )


def overlapping_labels(page) -> list[str]:  # noqa: ANN001
    """Colorbars drawn over text (a thumbnail's model name and kind, a caption, a paragraph): each pair whose
    boxes intersect by more than a pixel. Empty when every label can be read."""
    return page.evaluate(
        """() => {
          const problems = [];
          const boxes = sel => [...document.querySelectorAll(sel)].map(el => [el, el.getBoundingClientRect()])
            .filter(([, b]) => b.width > 0 && b.height > 0);
          for (const [bar, b] of boxes('.ra-colorbar')) {
            for (const [label, l] of boxes('.ra-thumb, [data-testid="stCaptionContainer"], [data-testid="stImageCaption"], '
                                           + '[data-testid="stMarkdownContainer"] p')) {
              if (bar.contains(label) || label.contains(bar)) continue;
              const x = Math.min(b.right, l.right) - Math.max(b.left, l.left);
              const y = Math.min(b.bottom, l.bottom) - Math.max(b.top, l.top);
              if (x > 1 && y > 1) problems.push(`a colorbar covers ${Math.round(y)} px of the label '${label.textContent}'`);
            }
          }
          return problems;
        }"""
    )


def illegible_numbers(page, minimum: float = 14.0) -> list[str]:  # noqa: ANN001
    """Colorbar numbers (``.ra-tick``) smaller than ``minimum`` px as rendered, cut off (outside their colorbar)
    or overlapping their neighbour, and colorbars without three numbers. Empty when every scale can be read."""
    return page.evaluate(
        """(minimum) => {
          const problems = [];
          for (const bar of document.querySelectorAll('.ra-colorbar')) {
            const ticks = [...bar.querySelectorAll('.ra-tick')];
            if (ticks.length !== 3) { problems.push(`a colorbar with ${ticks.length} numbers`); continue; }
            const outer = bar.getBoundingClientRect();
            let previous = null;
            for (const tick of ticks) {
              const box = tick.getBoundingClientRect();
              const size = parseFloat(getComputedStyle(tick).fontSize);
              if (size < minimum || box.height < minimum) problems.push(`'${tick.textContent}' is ${size} px`);
              if (box.left < outer.left - 1 || box.right > outer.right + 1) problems.push(`'${tick.textContent}' is cut off`);
              if (previous && box.left < previous.right && box.top < previous.bottom) problems.push(`'${tick.textContent}' overlaps`);
              previous = box;
            }
          }
          return problems;
        }""",
        minimum,
    )


def below_first_screen(page, selectors: list[str]) -> list[str]:  # noqa: ANN001
    """Which of ``selectors`` (their first match in the main area, the page scrolled to the top) is missing or
    ends below the window's height."""
    return page.evaluate(
        """(selectors) => {
          const main = document.querySelector('[data-testid="stMain"]');
          if (main) main.scrollTo(0, 0);
          const problems = [];
          for (const selector of selectors) {
            const el = main && main.querySelector(selector);
            if (!el) { problems.push(`${selector}: not on the page`); continue; }
            const bottom = el.getBoundingClientRect().bottom;
            if (bottom > window.innerHeight) problems.push(`${selector} ends at ${Math.round(bottom)} > ${window.innerHeight}`);
          }
          return problems;
        }""",
        selectors,
    )


def screenshot_dir(tmp_path: Path) -> Path:
    """Where screenshots go: ``RESATTN_SCREENSHOTS`` (``make screenshots`` sets it to docs/) or a temporary
    folder, so the tests never modify tracked files."""
    folder = Path(os.environ.get("RESATTN_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def choose(page, container, label: str, option: str) -> None:  # noqa: ANN001
    """Pick ``option`` in the selectbox labelled ``label`` (Streamlit's combobox opens from its "Open" button)."""
    box = container.get_by_test_id("stSelectbox").filter(has_text=label)
    for _ in range(6):  # a rerun that lands during the click closes the list: open it again
        box.get_by_role("button", name="Open").click()
        item = page.get_by_role("option", name=option).first
        try:
            item.wait_for(state="visible", timeout=5_000)
            item.click(timeout=5_000)
            return
        except Exception:  # noqa: BLE001 - Playwright's TimeoutError; retried
            page.keyboard.press("Escape")
            settle(page)
    raise AssertionError(f"could not choose {option!r} in {label!r}")


def full_screenshot(page, path: Path) -> None:  # noqa: ANN001
    """The whole page, although Streamlit scrolls its main area inside the window: the window is made as tall
    as the content for the picture, then restored."""
    size = page.viewport_size
    height = page.evaluate(
        "() => { const m = document.querySelector('[data-testid=\"stMain\"]'); return m ? m.scrollHeight : 0; }")
    if height > size["height"]:
        page.set_viewport_size({"width": size["width"], "height": min(int(height) + 40, 6000)})
        page.wait_for_timeout(400)
    page.screenshot(path=str(path))
    page.set_viewport_size(size)
