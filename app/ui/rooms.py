"""Lecture rooms: which scene a presenter shows, kept on the server and read by every follower.

A room has a short code (what students type or open as ``/?room=CODE``) and a secret token that only the
presenter's session holds: only the token moves the room or closes it. A room ends when its presenter closes it or
after :data:`IDLE_SECONDS` without a change. One :class:`Rooms` per server (``rooms()``, an ``st.cache_resource``),
guarded by a lock, since every session runs in its own thread.

Followers learn that their room moved by *waiting* for it (:meth:`Rooms.wait`, which the route in
:mod:`ui.room_routes` holds open): a wait sleeps on an event that :meth:`Rooms.show` and :meth:`Rooms.close` set,
so a room at rest costs the server nothing.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from dataclasses import dataclass

import streamlit as st

#: Letters and digits that cannot be mistaken for one another when read off a projector (no 0/O, 1/I/L).
ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
CODE_LENGTH = 4
IDLE_SECONDS = 3 * 3600  # a lecture and a break; a forgotten room ends on its own


@dataclass
class Room:
    """A presenter's room: the lecture, the scene shown (1-based) and when it last changed."""

    code: str
    lecture: str
    scene: int
    scenes: int
    token: str
    changed: float


class Rooms:
    """Every open room of this server."""

    def __init__(self, idle_seconds: float = IDLE_SECONDS, clock=time.monotonic) -> None:
        self._rooms: dict[str, Room] = {}
        self._waiting: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}
        self._lock = threading.Lock()
        self.idle_seconds = idle_seconds
        self._clock = clock

    def open(self, lecture: str, scenes: int) -> Room:
        """A new room on scene 1 of ``lecture`` (``scenes`` long), with a fresh code and presenter token."""
        with self._lock:
            self._expire()
            while (code := "".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH))) in self._rooms:
                pass
            room = Room(code, lecture, 1, scenes, secrets.token_urlsafe(16), self._clock())
            self._rooms[code] = room
            return Room(**vars(room))

    def get(self, code: str) -> Room | None:
        """A copy of the room with ``code`` (any case, spaces ignored), or None when it is unknown or has ended."""
        with self._lock:
            self._expire()
            room = self._rooms.get(normalise(code))
            return Room(**vars(room)) if room else None

    def show(self, code: str, token: str, scene: int) -> bool:
        """Move the room to ``scene`` (clamped to the lecture); only with the presenter's token. Returns whether
        the room moved."""
        with self._lock:
            room = self._rooms.get(normalise(code))
            if room is None or not secrets.compare_digest(room.token, token):
                return False
            room.scene = min(max(1, int(scene)), room.scenes)
            room.changed = self._clock()
            self._wake(room.code)
            return True

    def close(self, code: str, token: str) -> bool:
        """End the room (presenter only)."""
        with self._lock:
            room = self._rooms.get(normalise(code))
            if room is None or not secrets.compare_digest(room.token, token):
                return False
            del self._rooms[room.code]
            self._wake(room.code)
            return True

    async def wait(self, code: str, scene: int, timeout: float) -> Room | None:
        """Wait (in an event loop) until room ``code`` shows a scene other than ``scene`` or ends, at most
        ``timeout`` seconds; then a copy of the room, or None when it has ended."""
        code = normalise(code)
        loop, event = asyncio.get_running_loop(), asyncio.Event()
        with self._lock:
            self._waiting.setdefault(code, set()).add((loop, event))
        try:
            room = self.get(code)
            if room is not None and room.scene == scene:
                try:
                    await asyncio.wait_for(event.wait(), timeout)
                except asyncio.TimeoutError:  # TimeoutError itself from Python 3.11
                    pass
                room = self.get(code)
            return room
        finally:
            with self._lock:
                waiters = self._waiting.get(code, set())
                waiters.discard((loop, event))
                if not waiters:
                    self._waiting.pop(code, None)

    def _wake(self, code: str) -> None:
        """Wake every wait on room ``code`` (called with the lock held, from any thread)."""
        for loop, event in self._waiting.get(code, ()):
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # that loop has closed (the server is stopping): nobody is waiting there
                pass

    def _expire(self) -> None:
        now = self._clock()
        for code in [c for c, r in self._rooms.items() if now - r.changed > self.idle_seconds]:
            del self._rooms[code]
            self._wake(code)


def normalise(code: str) -> str:
    """A typed code as stored: upper case, without spaces or dashes."""
    return "".join(ch for ch in str(code).upper() if ch.isalnum())


@st.cache_resource(show_spinner=False)
def rooms() -> Rooms:
    """The server's rooms (shared by every session)."""
    return Rooms()
