"""One explorer server, a whole class: N concurrent real browser sessions, each with its own photo.

Starts ``streamlit run app/serve.py`` on 127.0.0.1 (a free port, ``RESATTN_THREADS=1``, the repository's
``checkpoints/`` or ``--checkpoint-dir``, no random models) and drives it with Debian's chromium through
Playwright: one browser, one browser context (its own cookies, its own Streamlit session) per student. A warm-up
page first loads the model, as a teacher opening the app before the lesson would. Then each session:

1. **open app**: opens the app and waits for the default Explore page (a gallery photo) to settle;
2. **switch to Upload**: picks Upload as the image source (the page then asks for a file);
3. **upload → Explore**: uploads its *own* photo and waits until every Explore panel is drawn;
4. **stage switch → Explore**: picks stage 2 in the sidebar's "Attention stage" and waits for the panels again;
5. **open Attribution**: opens the Attribution page and waits for the mask, Grad-CAM and Guided Grad-CAM panels.

"Settled" means: the script run finished (``data-test-script-state`` of ``stApp`` is ``notRunning``, no running
status widget), nothing on the page is stale (``[data-stale="true"]``), the text that only the new run draws is
there (the uploaded file's name, "Stage 2, module", "Explaining class"), every panel (a map with its colorbar, ``.ra-colorbar``)
is present and every picture decoded in the browser (``naturalWidth > 0``). A Streamlit
exception element ends the wait at once and counts as an error; a wait that reaches the time limit is a timeout.
With the default ``--stagger 0`` the sessions open together and then *upload together* (each waits for the
others to be ready first): the class presses enter at once, the worst case for the upload latency. With
``--stagger S`` session k starts S·k seconds after the first and nobody waits for anybody.

Each session checks that it sees its own image: the Explore manifest (the "Manifest (.json)" download, after the
upload and after the stage switch) and the Attribution manifest must name the file it uploaded and the SHA-256 the
app computes for it (``resattn.images.image_hash(load_image(bytes, name))``, computed here), the stage it chose
and, on Attribution, the class the page says it explains. Any disagreement is a **mismatch** (cross-session
leak or a control that lies); the target is 0.

How to read the figures:

* latencies are wall-clock seconds from the user's action (the click, the file handed to the uploader) to the
  settled page, as a student would wait; p50 / p95 over the sessions that completed the action (linear
  interpolation: with few sessions p95 is close to the maximum). "ok/n" counts the sessions that completed it out
  of those that tried (a session stops at its first failure). Issue 8's target on a 2-core machine with a CIFAR
  checkpoint: N = 20, upload p95 < 3 s, 0 errors, 0 mismatches;
* **server peak RSS** is the largest resident memory of the server process and its children from the end of the
  warm-up on, polled every 0.2 s from ``/proc/<pid>/status`` (VmRSS);
* **CPU seconds** (user + system, from ``/proc/<pid>/stat`` per process, polled likewise) of the server and of
  the client (this script, Playwright's driver, chromium), for all the sessions and split where the uploads start
  together: "opening" (open app + switch to Upload) and "from upload on" (upload, stage switch, Attribution and
  the manifest downloads);
* the client is not free, and it runs on the server's cores. One browser with N contexts driven by asyncio is the
  cheapest real client (one Playwright driver, one browser process, one renderer per session, no thread per
  session), yet on this machine each action still costs chromium about 0.4–0.6 s of CPU (React re-rendering the
  page, decoding the pictures), about as much as the server's own work, and opening a page costs a few seconds
  more (hence the opening phase before the timed uploads). On a 2-core machine every latency therefore includes
  waiting for the client: compare the client's CPU seconds with the server's before blaming the server. In a
  real classroom each student's browser runs on their own machine, so these latencies are an upper bound for
  the same server. Any other load (a training run: the script names those it sees) makes the figures indicative
  only.

The model shown is the app's default (the photo model if ``checkpoints/`` has one, else the first trained
checkpoint); it must have attention modules in stage 2. Exit status 0 when there were no errors and no
mismatches, 1 otherwise, 130 when interrupted (Ctrl-C or SIGTERM stop the server and the browser first).

**Lecture mode** (``--lecture NAME --followers N``, issue 28): one presenter opens ``/?lecture=NAME`` (the
warm-up: scene 1 is computed, and the server starts computing the others in the background) and N followers,
each in its own browser context, open ``/?room=CODE``. The room idles ``--idle`` seconds (the followers' pages
wait on the room, or poll it on a server without the room routes), then the presenter goes forward through every
scene with → (first pass: each scene's first visit, which computes it unless the background has) and back with ←
(second pass: revisits), the room at rest (every page settled) before each change. Reported per pass:
p50 / p95 / max of the seconds from the key press to each follower showing the new bold "Scene k of n" (polled
every 25 ms in the page) and to its whole scene drawn, timeouts (``--change-timeout``) and Streamlit exceptions;
the server's CPU seconds during the pass divided by followers × changes (ms per follower per change; also net of
what the polling costs anyway, the idle rate times the pass's duration), and while idle, per follower per second.

Usage::

    python scripts/bench_classroom.py --sessions 10 [--timeout 600] [--photo-side 640] [--stagger 0]
        [--checkpoint-dir DIR] [--json results.json]
    python scripts/bench_classroom.py --lecture paper --followers 10 [--idle 10] [--change-timeout 60]
        [--timeout 600] [--checkpoint-dir DIR] [--json results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from resattn import images  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
BROWSER_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
    # every session is "in the background" for a headless browser: never slow down its timers or rendering
    "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
]
VIEWPORT = {"width": 1280, "height": 800}  # a laptop screen; smaller pages are cheaper for the client
SOURCE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
STAGE = 2  # the stage every session switches to (stage 1 is the default)
ACTIONS = {  # key: label in the table
    "open": "open app",
    "source": "switch to Upload",
    "upload": "upload → Explore",
    "stage": "stage switch → Explore",
    "attribution": "open Attribution",
}
POLL_MS = 100  # how often the page checks whether it has settled
UI_MS = 30_000  # longest wait for a control to be clickable (the settling waits run to --timeout)
MONITOR_S = 0.2  # how often the server's memory is polled

#: True when the page has settled for ``spec`` (markers: texts the new run draws; panels: how many maps), the
#: string "exception" when Streamlit shows an exception, false otherwise.
SETTLED_JS = """
(spec) => {
  if (document.querySelector('[data-testid="stException"]')) return 'exception';
  const app = document.querySelector('[data-testid="stApp"]');
  if (!app || app.dataset.testScriptState !== 'notRunning' || app.dataset.testConnectionState !== 'CONNECTED')
    return false;
  if (document.querySelector('[data-testid="stStatusWidgetRunningIcon"]')) return false;
  if (document.querySelectorAll('[data-stale="true"]').length) return false;
  const text = document.body.textContent;  // not innerText: that forces a layout on every poll
  if (!spec.markers.every(m => text.includes(m))) return false;
  const main = document.querySelector('[data-testid="stMain"]') || document.body;
  const panels = main.querySelectorAll('.ra-colorbar').length;  // every map is drawn with its colorbar
  const undrawn = [...main.querySelectorAll('[data-testid="stAlert"]')]
    .filter(e => (e.textContent || '').includes('Not drawn as a map')).length;
  if (panels + undrawn < spec.panels) return false;
  return [...main.querySelectorAll('[data-testid="stImage"] img')].every(i => i.complete && i.naturalWidth > 0)
    ? 'ok' : false;
}
"""


# ----------------------------------------------------------------------------------------------------------------
# Photos
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Photo:
    path: Path
    name: str
    hash: str  # what the app computes: image_hash(load_image(bytes, name))


def _variant(base: np.ndarray, index: int, side: int) -> Image.Image:
    """A distinct photo from ``base``: a random crop, a flip every other round, a colour shift, at ``side``."""
    rng = np.random.default_rng(1000 + index)
    h, w = base.shape[:2]
    ch, cw = int(h * rng.uniform(0.7, 0.95)), int(w * rng.uniform(0.7, 0.95))
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = base[top:top + ch, left:left + cw].astype(np.float32)
    if (index // len(SOURCE_PHOTOS)) % 2:
        crop = crop[:, ::-1]
    crop = np.clip(crop * rng.uniform(0.8, 1.2, size=3) + rng.uniform(-20, 20, size=3), 0, 255).astype(np.uint8)
    image = Image.fromarray(crop)
    scale = side / max(image.size)
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                        Image.Resampling.LANCZOS)


def make_photos(count: int, side: int, folder: Path) -> list[Photo]:
    """``count`` distinct photos (PNG and JPEG in turn) from scikit-image's samples, with the app's hash of each."""
    import skimage.data

    bases = {name: getattr(skimage.data, name)()[..., :3] for name in SOURCE_PHOTOS}
    photos: list[Photo] = []
    for i in range(count):
        source = SOURCE_PHOTOS[i % len(SOURCE_PHOTOS)]
        kind, ext = ("PNG", "png") if i % 2 == 0 else ("JPEG", "jpg")
        buffer = io.BytesIO()
        _variant(bases[source], i, side).save(buffer, format=kind, **({"quality": 90} if kind == "JPEG" else {}))
        name = f"student{i + 1:02d}_{source}.{ext}"
        path = folder / name
        path.write_bytes(buffer.getvalue())
        photos.append(Photo(path, name, images.image_hash(images.load_image(buffer.getvalue(), name))))
    if len({p.hash for p in photos}) != len(photos):
        raise RuntimeError("two generated photos have the same hash: the mismatch check would be meaningless")
    return photos


# ----------------------------------------------------------------------------------------------------------------
# Processes: the server, and what /proc says about it
# ----------------------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(checkpoint_dir: Path | None) -> dict[str, str]:
    env = {**os.environ, "RESATTN_THREADS": "1", "RESATTN_APP_MODELS": "none"}
    env.pop("RESATTN_GALLERY_DATA", None)
    env.pop("RESATTN_CHECKPOINT_DIR", None)
    if checkpoint_dir is not None:
        env["RESATTN_CHECKPOINT_DIR"] = str(checkpoint_dir.resolve())
    return env


def start_server(port: int, checkpoint_dir: Path | None, log: io.TextIOBase) -> subprocess.Popen:
    """``streamlit run app/serve.py`` in its own process group (so that it and its children can be stopped)."""
    return subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app/serve.py", "--server.headless", "true",
         "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=server_env(checkpoint_dir), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)
            return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with code {proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not answer {url}/_stcore/health within {timeout:.0f} s")
            time.sleep(0.3)


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group, SIGKILL after 10 s."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Proc:
    ppid: int
    started: str  # start time since boot, in ticks: tells a reused pid apart
    ticks: int  # user + system CPU time of the process itself, in ticks


def scan_proc() -> dict[int, Proc]:
    """Every process now, from /proc/<pid>/stat (one read each)."""
    procs = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                text = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            fields = text[text.rindex(")") + 2:].split()  # from field 3 on (the command name may hold spaces)
            procs[int(entry.name)] = Proc(int(fields[1]), fields[19], int(fields[11]) + int(fields[12]))
    return procs


def descendants(procs: dict[int, Proc], root: int) -> list[int]:
    """``root`` and every process below it."""
    children: dict[int, list[int]] = {}
    for pid, proc in procs.items():
        children.setdefault(proc.ppid, []).append(pid)
    tree, todo = [], [root] if root in procs else []
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Monitor(threading.Thread):
    """Polls the server's process tree (resident memory, CPU) and the client's (this script's other descendants:
    Playwright's driver and chromium; CPU, and their pids for the clean-up) every MONITOR_S seconds.

    CPU is summed per process from its last sample, so the CPU of a process that exited (a closed context's
    renderer) still counts, less at most one polling interval."""

    def __init__(self, server_pid: int) -> None:
        super().__init__(daemon=True)
        self.server_pid = server_pid
        self.peak_rss = 0
        self.rss_at_mark = 0
        self.samples: list[tuple[float, int]] = []  # (seconds since start, server RSS bytes)
        self.ticks: dict[str, dict[tuple[int, str], int]] = {"server": {}, "client": {}}
        self.marks: dict[str, dict[str, dict[tuple[int, str], int]]] = {}
        self.client: dict[int, str] = {}  # pid → start time of every client process seen
        self.lock = threading.Lock()
        self.t0 = time.monotonic()
        self._halt = threading.Event()

    def sample(self) -> int:
        """One poll; returns the server's resident memory now."""
        with self.lock:
            procs = scan_proc()
            server = descendants(procs, self.server_pid)
            client = [pid for pid in descendants(procs, os.getpid()) if pid not in set(server)]
            rss = sum(rss_bytes(pid) for pid in server)
            self.peak_rss = max(self.peak_rss, rss)
            self.samples.append((round(time.monotonic() - self.t0, 2), rss))
            for side, pids in (("server", server), ("client", client)):
                for pid in pids:
                    self.ticks[side][(pid, procs[pid].started)] = procs[pid].ticks
            for pid in client[1:]:  # not this process itself
                self.client.setdefault(pid, procs[pid].started)
            return rss

    def mark(self, name: str) -> None:
        """Remember every process's CPU now under ``name``; "sessions" also restarts the peak memory."""
        rss = self.sample()
        with self.lock:
            self.marks[name] = {side: dict(ticks) for side, ticks in self.ticks.items()}
            if name == "sessions":
                self.peak_rss = self.rss_at_mark = rss

    def cpu_seconds(self, side: str, since: str, until: str | None = None) -> float | None:
        """CPU seconds of ``side`` ("server" or "client") between two marks (``until=None``: the last sample)."""
        with self.lock:
            if since not in self.marks or (until is not None and until not in self.marks):
                return None
            base = self.marks[since][side]
            end = self.ticks[side] if until is None else self.marks[until][side]
            return sum(t - base.get(key, 0) for key, t in end.items()) / CLOCK_TICKS

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(MONITOR_S)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


def end_leftovers(known: dict[int, str]) -> None:
    """SIGTERM, then SIGKILL, the client processes this script started that are still alive (same pid and start
    time: never a process that merely reused the number)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        procs = scan_proc()
        alive = [pid for pid, started in known.items() if pid in procs and procs[pid].started == started]
        for pid in alive:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        if not alive:
            return
        time.sleep(2)


def other_load() -> list[str]:
    """Command lines of training processes on the machine (read only: they are reported, never touched)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmd = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "resattn.train" in cmd and "bench_classroom" not in cmd:
                found.append(cmd.strip()[:160])
    return found


# ----------------------------------------------------------------------------------------------------------------
# Sessions
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Action:
    action: str
    seconds: float | None
    outcome: str  # ok | exception | timeout | error
    detail: str = ""


@dataclass
class SessionResult:
    index: int
    photo: str
    actions: list[Action] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    manifests_checked: int = 0
    checkpoints: list[str] = field(default_factory=list)  # "file (hash)" named by each manifest
    finished: bool = False


class Gate:
    """Opens when every session has arrived (those that failed before it too), so that uploads start together."""

    def __init__(self, parties: int, on_open: Any) -> None:
        self.parties, self.arrived, self.event, self.on_open = parties, set(), asyncio.Event(), on_open

    def arrive(self, index: int) -> None:
        self.arrived.add(index)
        if len(self.arrived) >= self.parties and not self.event.is_set():
            self.on_open()
            self.event.set()

    async def wait(self, deadline: float) -> None:
        await asyncio.wait_for(self.event.wait(), timeout=remaining_ms(deadline) / 1000)


class Timeout(Exception):
    pass


def remaining_ms(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise Timeout("the overall time limit was reached")
    return left * 1000


def ui_ms(deadline: float) -> float:
    """How long to wait for a control: UI_MS at most."""
    return min(UI_MS, remaining_ms(deadline))


async def settle(page: Any, markers: list[str], panels: int, deadline: float) -> str:
    """Wait until the page has settled (see SETTLED_JS); "ok" or "exception"."""
    from playwright.async_api import TimeoutError as PlaywrightTimeout

    try:
        handle = await page.wait_for_function(SETTLED_JS, arg={"markers": markers, "panels": panels},
                                              polling=POLL_MS, timeout=remaining_ms(deadline))
    except PlaywrightTimeout as exc:
        raise Timeout(f"not settled: waiting for {markers} and {panels} panels") from exc
    return await handle.json_value()


async def exception_text(page: Any) -> str:
    loc = page.get_by_test_id("stException")
    return (await loc.first.inner_text())[:400] if await loc.count() else ""


async def timed(result: SessionResult, name: str, page: Any, act: Any, markers: list[str], panels: int,
                deadline: float) -> bool:
    """Do ``act`` (a coroutine function), wait for the page to settle, record the latency; False on failure."""
    start = time.monotonic()
    try:
        await act()
        outcome = await settle(page, markers, panels, deadline)
    except Timeout as exc:
        result.actions.append(Action(name, None, "timeout", str(exc)))
        return False
    except Exception as exc:  # a click that failed, a closed page: an error of this action
        result.actions.append(Action(name, None, "error", f"{type(exc).__name__}: {exc}"[:400]))
        return False
    seconds = time.monotonic() - start
    if outcome != "ok":
        result.actions.append(Action(name, seconds, "exception", await exception_text(page)))
        return False
    result.actions.append(Action(name, seconds, "ok"))
    return True


async def download_manifest(page: Any, deadline: float) -> dict[str, Any]:
    button = page.get_by_test_id("stDownloadButton").filter(has_text="Manifest (.json)")
    async with page.expect_download(timeout=min(remaining_ms(deadline), 60_000)) as info:
        await button.click()
    download = await info.value
    return json.loads(Path(await download.path()).read_text())


async def check_manifest(page: Any, result: SessionResult, photo: Photo, where: str, stage: int,
                         deadline: float, target: tuple[str, int] | None = None) -> None:
    """Compare the page's manifest with what this session chose; a disagreement is a mismatch."""
    try:
        manifest = await download_manifest(page, deadline)
    except Exception as exc:
        result.actions.append(Action(f"manifest ({where})", None, "error", f"{type(exc).__name__}: {exc}"[:400]))
        return
    result.manifests_checked += 1
    result.checkpoints.append(f"{manifest.get('checkpoint')} ({str(manifest.get('checkpoint_hash'))[:19]}…)")
    expected: dict[str, Any] = {"image": photo.name, "image_hash": photo.hash, "stage": stage}
    if target is not None:
        expected.update(target_class=target[0], target_index=target[1])
    for key, value in expected.items():
        if manifest.get(key) != value:
            result.mismatches.append(f"{where}: manifest {key} = {manifest.get(key)!r}, expected {value!r}")


async def shown_target(page: Any) -> tuple[str, int] | None:
    """The class the Attribution page says it explains: (name, index)."""
    text = await page.get_by_test_id("stMain").inner_text()
    found = re.search(r"Explaining class (.+?) \(index (\d+),", text)
    return (found.group(1), int(found.group(2))) if found else None


async def open_dropdown(page: Any, label: str, choice: str, deadline: float) -> Any:
    """Open the sidebar selectbox ``label`` and return its option ``choice``, visible; a click that only focuses
    the box (it happens right after a download) is retried."""
    from playwright.async_api import TimeoutError as PlaywrightTimeout

    selectbox = page.get_by_test_id("stSidebar").get_by_test_id("stSelectbox").filter(has_text=label)
    option = page.get_by_role("option", name=choice, exact=True)
    for _ in range(3):
        await selectbox.click(timeout=ui_ms(deadline))
        try:
            await option.wait_for(state="visible", timeout=min(5_000, remaining_ms(deadline)))
            return option
        except PlaywrightTimeout:
            await page.keyboard.press("Escape")
    raise RuntimeError(f"the {label!r} selectbox does not open")


async def session_steps(page: Any, url: str, photo: Photo, result: SessionResult, gate: Gate | None,
                        deadline: float) -> None:
    """The five actions of one student; stops at the first that fails (later ones depend on it)."""
    sidebar = page.get_by_test_id("stSidebar")
    explore = f"{photo.name}: the region the model sees"
    if not await timed(result, "open", page, lambda: page.goto(url, timeout=remaining_ms(deadline)),
                       ["the region the model sees"], 3, deadline):
        return
    upload = sidebar.get_by_text("Upload", exact=True)
    if not await timed(result, "source", page, lambda: upload.click(timeout=ui_ms(deadline)),
                       ["Upload an image (or take a photo) to begin."], 0, deadline):
        return
    if gate is not None:
        gate.arrive(result.index)
        await gate.wait(deadline)

    uploader = sidebar.locator("input[type=file]")
    if not await timed(result, "upload", page,
                       lambda: uploader.set_input_files(str(photo.path), timeout=ui_ms(deadline)),
                       [explore, "Stage 1, module"], 3, deadline):
        return
    await check_manifest(page, result, photo, "Explore after upload", 1, deadline)

    option = await open_dropdown(page, "Attention stage", f"stage {STAGE}", deadline)
    if not await timed(result, "stage", page, lambda: option.click(timeout=ui_ms(deadline)),
                       [explore, f"Stage {STAGE}, module"], 3, deadline):
        return
    await check_manifest(page, result, photo, f"Explore at stage {STAGE}", STAGE, deadline)

    link = page.get_by_test_id("stSidebarNavLink").filter(has_text="Attribution")
    if not await timed(result, "attribution", page, lambda: link.click(timeout=ui_ms(deadline)),
                       ["Explaining class", "Guided Grad-CAM (", f"Mask M, stage {STAGE}"], 3, deadline):
        return
    target = await shown_target(page)
    if target is None:
        result.mismatches.append("Attribution: the page does not say which class it explains")
    await check_manifest(page, result, photo, "Attribution", STAGE, deadline, target)


async def run_session(browser: Any, url: str, result: SessionResult, photo: Photo, gate: Gate | None,
                      delay: float, deadline: float) -> None:
    """One student's session in its own browser context; fills ``result`` as it goes."""
    index = result.index
    await asyncio.sleep(delay)
    context = None
    try:
        context = await browser.new_context(viewport=VIEWPORT, accept_downloads=True, reduced_motion="reduce")
        page = await context.new_page()
        await session_steps(page, url, photo, result, gate, deadline)
    except (Timeout, asyncio.TimeoutError) as exc:
        result.actions.append(Action("session", None, "timeout", str(exc) or "the overall time limit was reached"))
    except Exception as exc:
        result.actions.append(Action("session", None, "error", f"{type(exc).__name__}: {exc}"[:400]))
    finally:
        if gate is not None:
            gate.arrive(index)  # a session that failed early must not hold the others back
        if context is not None:
            await context.close()
        result.finished = True


async def warm_up(browser: Any, url: str, deadline: float) -> float:
    """One page opens the app and waits for the default Explore page: the model is loaded, imports are done."""
    context = await browser.new_context(viewport=VIEWPORT, reduced_motion="reduce")
    try:
        page = await context.new_page()
        start = time.monotonic()
        await page.goto(url, timeout=remaining_ms(deadline))
        outcome = await settle(page, ["the region the model sees"], 3, deadline)
        if outcome != "ok":
            raise RuntimeError("the app shows an exception on its first page:\n" + await exception_text(page))
        return time.monotonic() - start
    finally:
        await context.close()


async def drive(url: str, photos: list[Photo], stagger: float, timeout: float,
                mark: Any) -> tuple[list[SessionResult], float, float]:
    """Warm up, then run every session concurrently; returns results, the warm-up and the sessions' wall time.
    ``mark(name)`` is called after the warm-up ("sessions") and when the uploads start together ("together")."""
    from playwright.async_api import async_playwright

    deadline = time.monotonic() + timeout
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
        try:
            warm = await warm_up(browser, url, deadline)
            mark("sessions")
            gate = Gate(len(photos), lambda: mark("together")) if stagger == 0 else None
            results = [SessionResult(i, photo.name) for i, photo in enumerate(photos)]
            start = time.monotonic()
            tasks = [run_session(browser, url, r, photo, gate, r.index * stagger, deadline)
                     for r, photo in zip(results, photos)]
            together = asyncio.gather(*tasks)
            together.add_done_callback(lambda f: f.cancelled() or f.exception())  # no "never retrieved" on Ctrl-C
            try:  # every wait inside a session ends at the deadline; this only catches one that does not
                await asyncio.wait_for(together, timeout=max(0.0, deadline - time.monotonic()) + 30)
            except asyncio.TimeoutError:
                for r in results:
                    if not r.finished:
                        r.actions.append(Action("session", None, "timeout", "still running 30 s after the limit"))
            return results, warm, time.monotonic() - start
        finally:
            await browser.close()


# ----------------------------------------------------------------------------------------------------------------
# Lecture mode: one presenter, N followers
# ----------------------------------------------------------------------------------------------------------------

SHOWN_MS = 25  # how often a follower's page is checked for the new "Scene k of n" (cheap: one query)
OPEN_AT_ONCE = 4  # followers opening their page together (opening costs chromium seconds of CPU)
OPEN_S = 180  # longest wait for one follower's page to open and come to rest: one stuck page must not hold the run

#: "ok" when the page's bold line reads ``want`` ("Scene k of n"), "exception" when Streamlit shows one.
#: Where a page shows a scene: the page itself (the presenter, or a follower without the room routes) and the
#: shadow root of a follower's room element (app/ui/follow.py marks its host ``data-resattn-room``).
ROOTS_JS = "[document, ...[...document.querySelectorAll('[data-resattn-room]')].map(e => e.shadowRoot).filter(r => r)]"
SHOWN_JS = """
(want) => {
  if (document.querySelector('[data-testid="stException"]')) return 'exception';
  return ROOTS.some(r => [...r.querySelectorAll('[data-testid="stMarkdownContainer"] strong, .where strong')]
    .some(e => e.textContent === want)) ? 'ok' : false;
}
""".replace("ROOTS", ROOTS_JS)
#: The page at rest on scene ``want``: tests/browser.py's settle() (no status widget, nothing stale; it ignores the
#: script state, which a polling follower flips four times a second) plus the scene line and every image decoded.
AT_REST_JS = """
(want) => {
  if (document.querySelector('[data-testid="stException"]')) return 'exception';
  if (document.querySelector('[data-testid="stStatusWidget"]')) return false;
  if (document.querySelectorAll('[data-stale="true"]').length) return false;
  const roots = ROOTS;
  if (!roots.some(r => [...r.querySelectorAll('[data-testid="stMarkdownContainer"] strong, .where strong')]
      .some(e => e.textContent === want))) return false;
  return roots.every(r => [...r.querySelectorAll('[data-testid="stImage"] img, .panel img')]
    .every(i => i.complete && i.naturalWidth > 0)) ? 'ok' : false;
}
""".replace("ROOTS", ROOTS_JS)


@dataclass
class Change:
    """One move of the presenter and what each follower saw: seconds from the key press to the new "Scene k of
    n" (``shown``) and to the whole scene drawn, nothing stale (``drawn``); None where it failed."""

    scene: int
    direction: str  # "next" (first pass: computed by this change) or "previous" (second pass: computed before)
    shown: list[float | None] = field(default_factory=list)
    drawn: list[float | None] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@dataclass
class LectureRun:
    code: str = ""
    scenes: int = 0
    presenter_open_s: float | None = None
    followers_open_s: float | None = None
    idle_s: float = 0.0
    pass_s: dict[str, float] = field(default_factory=dict)  # wall seconds of each pass
    changes: list[Change] = field(default_factory=list)
    open_errors: list[str] = field(default_factory=list)


def scene_label(number: int, scenes: int) -> str:
    return f"Scene {number} of {scenes}"


async def follower_sees(page: Any, index: int, change: Change, want: str, start: float, timeout: float,
                        deadline: float) -> None:
    """Follower ``index``: when its page shows ``want``, then when the whole scene is drawn (into ``change``)."""
    from playwright.async_api import TimeoutError as PlaywrightTimeout

    limit = min(deadline, start + timeout)
    try:
        handle = await page.wait_for_function(SHOWN_JS, arg=want, polling=SHOWN_MS, timeout=remaining_ms(limit))
        if await handle.json_value() != "ok":
            raise RuntimeError(f"exception: {await exception_text(page)}")
        change.shown[index] = time.monotonic() - start
        if await at_rest(page, want, limit) != "ok":
            raise RuntimeError(f"exception: {await exception_text(page)}")
        change.drawn[index] = time.monotonic() - start
    except (PlaywrightTimeout, Timeout):
        change.errors.append(f"follower {index + 1}, {want}: timeout")
    except Exception as exc:
        change.errors.append(f"follower {index + 1}, {want}: {type(exc).__name__}: {exc}"[:400])


async def at_rest(page: Any, want: str, deadline: float) -> str:
    """Wait until ``page`` is at rest on scene ``want`` (AT_REST_JS); "ok" or "exception"."""
    handle = await page.wait_for_function(AT_REST_JS, arg=want, polling=POLL_MS, timeout=remaining_ms(deadline))
    return await handle.json_value()


async def open_follower(browser: Any, url: str, code: str, want: str, gate: asyncio.Semaphore,
                        deadline: float) -> Any:
    """A new context that follows room ``code`` and shows ``want``; returns its page."""
    async with gate:
        deadline = min(deadline, time.monotonic() + OPEN_S)
        context = await browser.new_context(viewport=VIEWPORT, reduced_motion="reduce")
        page = await context.new_page()
        await page.goto(f"{url}/?room={code}", timeout=remaining_ms(deadline))
        if await at_rest(page, want, deadline) != "ok":
            raise RuntimeError(f"exception: {await exception_text(page)}")
        return page


async def drive_lecture(url: str, args: argparse.Namespace, mark: Any) -> LectureRun:
    """The presenter opens ``/?lecture=NAME`` (the warm-up), N followers open the room, the room idles ``--idle``
    seconds, then the presenter goes forward through every scene (→, first visits) and back (←, revisits), the
    room at rest before each change. Marks:
    "sessions" (presenter ready), "idle" (followers ready), "first" (first pass), "second", "end"."""
    from playwright.async_api import async_playwright

    deadline = time.monotonic() + args.timeout
    run = LectureRun()
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
        try:
            presenter = await (await browser.new_context(viewport=VIEWPORT, reduced_motion="reduce")).new_page()
            start = time.monotonic()
            await presenter.goto(f"{url}/?lecture={args.lecture}", timeout=remaining_ms(deadline))
            for shown in (r"Room [A-Z0-9]{4}", r"Scene 1 of \d+"):
                await presenter.get_by_text(re.compile(shown)).first.wait_for(timeout=remaining_ms(deadline))
            text = await presenter.get_by_test_id("stMain").inner_text()
            found = re.search(r"Room ([A-Z0-9]{4})", text), re.search(r"Scene 1 of (\d+)", text)
            if not all(found):
                raise RuntimeError(f"the presenter's page shows no room or scene:\n{text[:400]}"
                                   f"\n{await exception_text(presenter)}")
            run.code, run.scenes = found[0].group(1), int(found[1].group(1))
            await at_rest(presenter, scene_label(1, run.scenes), deadline)
            run.presenter_open_s = time.monotonic() - start
            mark("sessions")

            start, gate = time.monotonic(), asyncio.Semaphore(OPEN_AT_ONCE)
            opened = await asyncio.gather(
                *(open_follower(browser, url, run.code, scene_label(1, run.scenes), gate, deadline)
                  for _ in range(args.followers)), return_exceptions=True)
            followers = [page for page in opened if not isinstance(page, BaseException)]
            run.open_errors = [f"follower {i + 1} did not open: {type(e).__name__}: {e}"[:400]
                               for i, e in enumerate(opened) if isinstance(e, BaseException)]
            run.followers_open_s = time.monotonic() - start
            mark("idle")
            start = time.monotonic()
            await asyncio.sleep(args.idle)
            run.idle_s = time.monotonic() - start

            passes = (("first", "next", "ArrowRight", range(2, run.scenes + 1)),
                      ("second", "previous", "ArrowLeft", range(run.scenes - 1, 0, -1)))
            for name, direction, key, numbers in passes:
                mark(name)
                began = time.monotonic()
                for number in numbers:
                    want = scene_label(number, run.scenes)
                    before = scene_label(number + (-1 if direction == "next" else 1), run.scenes)
                    await asyncio.gather(*(at_rest(page, before, deadline) for page in (presenter, *followers)),
                                         return_exceptions=True)  # the room at rest; a failure shows up below
                    change = Change(number, direction, [None] * len(followers), [None] * len(followers))
                    start = time.monotonic()
                    await presenter.keyboard.press(key)  # the clock starts at the key press
                    await asyncio.gather(*(follower_sees(page, i, change, want, start, args.change_timeout,
                                                         deadline) for i, page in enumerate(followers)))
                    run.changes.append(change)
                    print(f"  {want} ({direction}): shown p95 {fmt(percentile(ok_values(change.shown), 95))} s, "
                          f"drawn p95 {fmt(percentile(ok_values(change.drawn), 95))} s, "
                          f"{len(change.errors)} errors", flush=True)
                run.pass_s[name] = time.monotonic() - began
            mark("end")
            return run
        finally:
            await browser.close()


# ----------------------------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def action_table(results: list[SessionResult]) -> list[dict[str, Any]]:
    rows = []
    for key, label in ACTIONS.items():
        done = [a for r in results for a in r.actions if a.action == key]
        ok = [a.seconds for a in done if a.outcome == "ok" and a.seconds is not None]
        rows.append({
            "action": key, "label": label, "attempted": len(done), "ok": len(ok),
            "p50_s": percentile(ok, 50), "p95_s": percentile(ok, 95), "max_s": max(ok) if ok else None,
            "exceptions": sum(a.outcome == "exception" for a in done),
            "timeouts": sum(a.outcome == "timeout" for a in done),
            "errors": sum(a.outcome == "error" for a in done),
        })
    return rows


def fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def print_report(summary: dict[str, Any]) -> None:
    rows = summary["actions"]
    print(f"\n{summary['sessions']} sessions, stagger {summary['stagger_s']} s, photos {summary['photo_side']} px, "
          f"warm-up {fmt(summary['warmup_s'])} s, sessions' wall time {fmt(summary['wall_s'], 1)} s")
    print(f"model shown: {', '.join(summary['checkpoints']) or '?'} (from {summary['checkpoint_dir']})")
    print(f"{'action':<26}{'ok/n':>8}{'p50 s':>8}{'p95 s':>8}{'max s':>8}{'exceptions':>12}{'timeouts':>10}"
          f"{'other errors':>14}")
    for r in rows:
        print(f"{r['label']:<26}{str(r['ok']) + '/' + str(r['attempted']):>8}{fmt(r['p50_s']):>8}"
              f"{fmt(r['p95_s']):>8}{fmt(r['max_s']):>8}{r['exceptions']:>12}{r['timeouts']:>10}{r['errors']:>14}")
    print(f"{'session-level failures':<26}{summary['session_failures']:>8}")
    print(f"\nmismatches: {summary['mismatches']} (manifests checked: {summary['manifests_checked']}, "
          f"expected {3 * summary['sessions']})")
    for line in summary["mismatch_details"][:20]:
        print(f"  {line}")
    print(f"errors: {summary['errors']} (exceptions + timeouts + other errors)")
    for line in summary["error_details"][:20]:
        print(f"  {line}")
    print(f"server peak RSS: {summary['server_peak_rss_mib']:.0f} MiB (idle after start "
          f"{summary['server_rss_after_warmup_mib']:.0f} MiB, after the warm-up)")
    print(f"{'CPU seconds':<42}{'all':>8}{'opening':>10}{'from upload on':>16}")
    for side, label in (("server", "server"), ("client", "client (chromium, driver, this script)")):
        print(f"  {label:<40}{fmt(summary[f'{side}_cpu_s'], 1):>8}{fmt(summary[f'{side}_cpu_opening_s'], 1):>10}"
              f"{fmt(summary[f'{side}_cpu_actions_s'], 1):>16}")
    print("  (opening: open app + switch to Upload, until every session is ready to upload; from upload on: the "
          "rest)")
    print(f"{summary['cpus']} CPUs, load average {summary['load_before']} before, {summary['load_after']} after")
    if summary["other_load"]:
        print(f"WARNING: {len(summary['other_load'])} training process(es) ran beside the benchmark: figures are "
              "indicative only")


def summarise(results: list[SessionResult], args: argparse.Namespace, extra: dict[str, Any]) -> dict[str, Any]:
    rows = action_table(results)
    failures = [a for r in results for a in r.actions if a.outcome != "ok"]
    mismatches = [f"session {r.index + 1} ({r.photo}): {m}" for r in results for m in r.mismatches]
    checkpoints = sorted({c for r in results for c in r.checkpoints})
    if len(checkpoints) > 1:
        mismatches.append(f"sessions saw different checkpoints: {checkpoints}")
    return {
        "sessions": args.sessions, "stagger_s": args.stagger, "photo_side": args.photo_side,
        "timeout_s": args.timeout, "actions": rows,
        "session_failures": sum(a.action == "session" for a in failures),
        "errors": len(failures), "error_details": [f"{a.action}: {a.outcome} {a.detail}" for a in failures],
        "mismatches": len(mismatches), "mismatch_details": mismatches,
        "manifests_checked": sum(r.manifests_checked for r in results), "checkpoints": checkpoints,
        "per_session": [asdict(r) for r in results], **extra,
    }


def ok_values(values: list[float | None]) -> list[float]:
    return [v for v in values if v is not None]


def cpu_ms_per(cpu_s: float | None, followers: int, count: float) -> float | None:
    """Server CPU milliseconds per follower per unit (a change, a second): ``cpu_s`` / (followers × count)."""
    if cpu_s is None or followers <= 0 or count <= 0:
        return None
    return 1000 * cpu_s / (followers * count)


def summarise_lecture(run: LectureRun, args: argparse.Namespace, monitor: Monitor,
                      machine: dict[str, Any]) -> dict[str, Any]:
    followers = args.followers - len(run.open_errors)
    idle_cpu = monitor.cpu_seconds("server", "idle", "first")
    idle_ms = cpu_ms_per(idle_cpu, followers, run.idle_s)  # per follower per second
    passes = {}
    for name, until in (("first", "second"), ("second", "end")):
        direction = "next" if name == "first" else "previous"
        changes = [c for c in run.changes if c.direction == direction]
        shown = [v for c in changes for v in ok_values(c.shown)]
        drawn = [v for c in changes for v in ok_values(c.drawn)]
        errors = [e for c in changes for e in c.errors]
        cpu = monitor.cpu_seconds("server", name, until)
        polling = None if idle_ms is None else idle_ms / 1000 * followers * run.pass_s.get(name, 0)
        passes[name] = {
            "changes": len(changes), "expected": followers * len(changes), "shown_ok": len(shown),
            "shown_p50_s": percentile(shown, 50), "shown_p95_s": percentile(shown, 95),
            "shown_max_s": max(shown) if shown else None,
            "drawn_p50_s": percentile(drawn, 50), "drawn_p95_s": percentile(drawn, 95),
            "timeouts": sum(e.endswith("timeout") for e in errors),
            "exceptions": sum(": exception" in e for e in errors), "errors": len(errors), "error_details": errors,
            "wall_s": run.pass_s.get(name), "server_cpu_s": cpu,
            "client_cpu_s": monitor.cpu_seconds("client", name, until),
            "server_ms_per_follower_change": cpu_ms_per(cpu, followers, len(changes)),
            # the same without what the followers' polling costs anyway (the idle rate over the pass's time)
            "server_ms_per_follower_change_net": cpu_ms_per(None if cpu is None or polling is None
                                                            else cpu - polling, followers, len(changes)),
        }
    return {
        "lecture": args.lecture, "followers": args.followers, "followers_open": followers, "room": run.code,
        "scenes": run.scenes, "presenter_open_s": run.presenter_open_s, "followers_open_s": run.followers_open_s,
        "idle_s": run.idle_s, "idle_server_cpu_s": idle_cpu, "idle_server_ms_per_follower_s": idle_ms,
        "idle_client_cpu_s": monitor.cpu_seconds("client", "idle", "first"), "passes": passes,
        "errors": len(run.open_errors) + sum(p["errors"] for p in passes.values()),
        "open_errors": run.open_errors, "server_peak_rss_mib": monitor.peak_rss / 2**20,
        "changes": [asdict(c) for c in run.changes], **machine,
    }


def print_lecture_report(summary: dict[str, Any]) -> None:
    n = summary["followers_open"]
    print(f"\nlecture {summary['lecture']!r} ({summary['scenes']} scenes), room {summary['room']}: presenter + "
          f"{n}/{summary['followers']} followers; presenter opened in {fmt(summary['presenter_open_s'])} s, "
          f"followers in {fmt(summary['followers_open_s'], 1)} s")
    print(f"{'pass':<30}{'ok/n':>9}{'p50 s':>8}{'p95 s':>8}{'max s':>8}{'drawn p50/p95 s':>17}{'timeouts':>10}"
          f"{'exceptions':>12}{'server ms/follower/change':>27}{'net of polling':>16}")
    for name, label in (("first", "first pass (first visits)"), ("second", "second pass (revisits)")):
        r = summary["passes"][name]
        print(f"{label:<30}{str(r['shown_ok']) + '/' + str(r['expected']):>9}{fmt(r['shown_p50_s']):>8}"
              f"{fmt(r['shown_p95_s']):>8}{fmt(r['shown_max_s']):>8}"
              f"{fmt(r['drawn_p50_s']) + ' / ' + fmt(r['drawn_p95_s']):>17}{r['timeouts']:>10}{r['exceptions']:>12}"
              f"{fmt(r['server_ms_per_follower_change'], 1):>27}{fmt(r['server_ms_per_follower_change_net'], 1):>16}")
    print("  (p50/p95/max: from the presenter's key press to a follower showing the new \"Scene k of n\"; drawn: "
          "to its whole scene drawn)")
    for name in ("first", "second"):
        r = summary["passes"][name]
        print(f"  {name} pass: {r['changes']} changes in {fmt(r['wall_s'], 1)} s, CPU seconds server "
              f"{fmt(r['server_cpu_s'], 1)} / client {fmt(r['client_cpu_s'], 1)}")
    print(f"idle, {n} followers polling for {fmt(summary['idle_s'], 1)} s: server {fmt(summary['idle_server_cpu_s'])} "
          f"CPU-s = {fmt(summary['idle_server_ms_per_follower_s'], 1)} ms per follower per second "
          f"(client {fmt(summary['idle_client_cpu_s'], 1)} CPU-s)")
    print(f"errors: {summary['errors']}")
    for line in [*summary["open_errors"], *(e for r in summary["passes"].values() for e in r["error_details"])][:20]:
        print(f"  {line}")
    print(f"server peak RSS: {summary['server_peak_rss_mib']:.0f} MiB")
    print(f"{summary['cpus']} CPUs, load average {summary['load_before']} before, {summary['load_after']} after")
    if summary["other_load"]:
        print(f"WARNING: {len(summary['other_load'])} training process(es) ran beside the benchmark: figures are "
              "indicative only")


# ----------------------------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sessions", type=int, default=10, help="concurrent browser sessions (default 10)")
    p.add_argument("--timeout", type=float, default=600, help="overall time limit in seconds (default 600)")
    p.add_argument("--photo-side", type=int, default=640, help="longer side of each generated photo (default 640)")
    p.add_argument("--stagger", type=float, default=0,
                   help="seconds between session starts (default 0: open together, then upload together)")
    p.add_argument("--checkpoint-dir", type=Path, default=None,
                   help="checkpoint folder for the server (default: the repository's checkpoints/)")
    p.add_argument("--json", type=Path, default=None, help="also write every figure as JSON to this path")
    p.add_argument("--lecture", default=None, metavar="NAME",
                   help="lecture mode: a presenter of app/lectures/NAME.toml and --followers followers")
    p.add_argument("--followers", type=int, default=10, help="lecture mode: followers (default 10)")
    p.add_argument("--idle", type=float, default=10,
                   help="lecture mode: seconds the room idles, followers polling, before the changes (default 10)")
    p.add_argument("--change-timeout", type=float, default=60,
                   help="lecture mode: longest wait for a follower to show a change (default 60 s)")
    args = p.parse_args()
    if args.sessions < 1 or args.timeout <= 0 or args.photo_side < 32 or args.stagger < 0:
        p.error("--sessions ≥ 1, --timeout > 0, --photo-side ≥ 32 and --stagger ≥ 0")
    if args.followers < 1 or args.idle <= 0 or args.change_timeout <= 0:
        p.error("--followers ≥ 1, --idle > 0 and --change-timeout > 0")
    return args


def _as_ctrl_c(signum: int, frame: Any) -> None:
    """SIGTERM (``timeout``, ``kill``) is handled as Ctrl-C: asyncio then cancels the sessions cleanly."""
    signal.raise_signal(signal.SIGINT)


@contextlib.contextmanager
def signals_blocked() -> Iterator[None]:
    """SIGINT and SIGTERM wait (they are delivered afterwards) while the block runs."""
    signals = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def cpu_figures(monitor: Monitor) -> dict[str, float | None]:
    """Server and client CPU seconds: all the sessions, and split at the moment the uploads started together."""
    out = {}
    for side in ("server", "client"):
        out[f"{side}_cpu_s"] = monitor.cpu_seconds(side, "sessions")
        out[f"{side}_cpu_opening_s"] = monitor.cpu_seconds(side, "sessions", "together")
        out[f"{side}_cpu_actions_s"] = monitor.cpu_seconds(side, "together")
    return out


@contextlib.contextmanager
def served(checkpoint_dir: Path | None, folder: Path, timeout: float) -> Iterator[tuple[str, int, Monitor]]:
    """A server on a free port with its Monitor running: yields (URL, pid, monitor); stops the server, the
    monitor and any leftover client process afterwards, and prints the server log's end when something failed
    (other than the overall time limit, :class:`Timeout`)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = folder / "streamlit.log"
    with log_path.open("w") as log:
        server = start_server(port, checkpoint_dir, log)
        monitor = Monitor(server.pid)
        try:
            monitor.start()
            wait_healthy(url, server, timeout=min(120, timeout))
            yield url, server.pid, monitor
            monitor.sample()
        except Timeout:
            raise
        except Exception:
            log.flush()
            print("server log (last lines):\n" + "\n".join(log_path.read_text().splitlines()[-30:]), file=sys.stderr)
            raise
        finally:
            with signals_blocked():  # a second Ctrl-C must not interrupt the clean-up
                try:
                    stop_server(server)
                finally:
                    monitor.stop()
                    end_leftovers(monitor.client)


def machine_figures(args: argparse.Namespace, others: list[str], load_before: list[float]) -> dict[str, Any]:
    """What both modes report about the machine and the model folder."""
    return {"cpus": os.cpu_count(), "load_before": load_before,
            "load_after": [round(v, 2) for v in os.getloadavg()], "other_load": others,
            "checkpoint_dir": str(args.checkpoint_dir or ROOT / "checkpoints")}


def run(args: argparse.Namespace, folder: Path) -> dict[str, Any] | None:
    """Start the server, warm it up, run the sessions (or, with ``--lecture``, the lecture), stop everything; the
    figures, or None when the warm-up did not finish in time."""
    others = other_load()
    if others:
        print(f"note: {len(others)} training process(es) running; figures will be indicative only")
    load_before = [round(v, 2) for v in os.getloadavg()]
    photos = [] if args.lecture else make_photos(args.sessions, args.photo_side, folder)
    try:
        with served(args.checkpoint_dir, folder, args.timeout) as (url, pid, monitor):
            if args.lecture:
                print(f"server {url} (pid {pid}); lecture {args.lecture!r}, {args.followers} followers")
                lecture = asyncio.run(drive_lecture(url, args, monitor.mark))
            else:
                print(f"server {url} (pid {pid}); {args.sessions} sessions, photos in {folder}")
                # CPU and peak memory are counted from the end of the warm-up (monitor.mark)
                results, warm, wall = asyncio.run(drive(url, photos, args.stagger, args.timeout, monitor.mark))
    except Timeout:
        print(f"the warm-up page did not settle within --timeout {args.timeout:.0f} s", file=sys.stderr)
        return None
    machine = machine_figures(args, others, load_before)
    if args.lecture:
        return summarise_lecture(lecture, args, monitor, machine)
    return summarise(results, args, {
        "warmup_s": warm, "wall_s": wall, "server_peak_rss_mib": monitor.peak_rss / 2**20,
        "server_rss_after_warmup_mib": monitor.rss_at_mark / 2**20, **cpu_figures(monitor), **machine,
        "rss_samples": monitor.samples,
    })


def main() -> int:
    args = parse_args()
    if not CHROMIUM.exists():
        print(f"{CHROMIUM} is missing: `make chromium` installs Debian's chromium", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _as_ctrl_c)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the background
    try:
        with tempfile.TemporaryDirectory(prefix="bench_classroom_") as tmp:
            summary = run(args, Path(tmp))
    except KeyboardInterrupt:
        print("interrupted: the server and the browser were stopped", file=sys.stderr)
        return 130
    if summary is None:
        return 1
    (print_lecture_report if args.lecture else print_report)(summary)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
        print(f"wrote {args.json}")
    return 0 if summary["errors"] == 0 and summary.get("mismatches", 0) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
