"""A lecture's scenes, computed once per server and shared by the presenter, every follower and the rooms' routes.

Every function here is an ``st.cache_resource`` keyed by the lecture file's path and modification time, the
scene's number and the checkpoint folder, so a scene is computed by the first page (or route) that needs it and
then only read; the routes call them from a worker thread, outside any script run, which the caches allow.
"""

from __future__ import annotations

import gzip
import threading
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from resattn import html, maps, scenes
from resattn.lecture import Lecture, find_lectures, load_lecture

from . import state

#: The shipped lectures (``NAME.toml``; a lecture is opened by its stem).
LECTURES = Path(__file__).resolve().parents[1] / "lectures"


@st.cache_resource(show_spinner=False, max_entries=8)
def lecture_file(path: str, mtime: int) -> Lecture:
    """The lecture at ``path`` (raises LectureError)."""
    return load_lecture(path)


@st.cache_resource(show_spinner=False, max_entries=128)
def rendered(path: str, mtime: int, number: int, checkpoints: str) -> scenes.Rendered:
    """Scene ``number`` of the lecture at ``path``, computed once per server and shared by every session."""
    lecture = lecture_file(path, mtime)
    return scenes.render_scene(lecture.scenes[number - 1], scenes.Resources(checkpoints, lecture.folder))


@st.cache_resource(show_spinner=False, max_entries=128)
def pictures(path: str, mtime: int, number: int, checkpoints: str) -> list[bytes]:
    """The scene's pictures as PNG, encoded once per server (a rerun then sends bytes, not arrays)."""
    return [maps.to_png(panel.picture) for panel in rendered(path, mtime, number, checkpoints).panels]


@st.cache_resource(show_spinner=False, max_entries=128)
def fragment(path: str, mtime: int, number: int, checkpoints: str) -> bytes:
    """The scene as one HTML fragment (:func:`resattn.html.scene_fragment`, pictures embedded), UTF-8: what a
    follower's page shows, the same rendering as the offline copy."""
    total = len(lecture_file(path, mtime).scenes)
    return html.scene_fragment(rendered(path, mtime, number, checkpoints), total).encode()


@st.cache_resource(show_spinner=False, max_entries=128)
def fragment_gzip(path: str, mtime: int, number: int, checkpoints: str) -> bytes:
    """:func:`fragment`, gzip-compressed once per server (the server's own gzip would compress it again for every
    follower at every change, at level 9: up to tens of ms of CPU each, ``scripts/bench_lecture_payload.py``)."""
    return gzip.compress(fragment(path, mtime, number, checkpoints), compresslevel=6)


@dataclass
class Warming:
    """How far computing a lecture's scenes in advance has come."""

    total: int
    done: int = 0
    error: str | None = None


@st.cache_resource(show_spinner=False, max_entries=8)
def warm(path: str, mtime: int, checkpoints: str) -> Warming:
    """Compute every scene of the lecture at ``path`` in a background thread, once per server (when the first
    presenter opens it), so that no change of scene waits for a computation; the caches make a scene asked for
    meanwhile wait for, not repeat, its computation."""
    warming = Warming(len(lecture_file(path, mtime).scenes))

    def run() -> None:
        for number in range(1, warming.total + 1):
            try:
                pictures(path, mtime, number, checkpoints)
                fragment_gzip(path, mtime, number, checkpoints)
            except Exception as exc:  # noqa: BLE001 (a scene that cannot be computed says why when it is shown)
                warming.error = f"scene {number}: {exc}"
            warming.done = number

    threading.Thread(target=run, name="resattn-lecture-warm", daemon=True).start()
    return warming


def warm_lecture(path: Path) -> Warming:
    """:func:`warm` for the lecture at ``path`` with this server's checkpoint folder."""
    file, mtime, _, checkpoints = key(path, 1)
    return warm(file, mtime, checkpoints)


def key(path: Path, number: int) -> tuple[str, int, int, str]:
    """The caches' key for scene ``number`` of the lecture at ``path``, with this server's checkpoint folder."""
    return str(path), path.stat().st_mtime_ns, number, str(state.checkpoint_dir())


def lecture_path(name: str) -> Path | None:
    """The file of the lecture called ``name`` in app/lectures/, or None."""
    return find_lectures(LECTURES).get(name)
