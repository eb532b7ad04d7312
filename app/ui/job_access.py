"""Who a browser is to the job system, the passphrase gate, and user text shown as text (the Train page).

* A browser is known by a random token in a cookie (``resattn_browser``), set on its first visit: a reload or a
  new tab keeps its jobs — its queue places and its right to cancel them. The job records hold only a hash of the
  token, so reading the database does not let anyone act as a browser.
* Passphrase guesses are slowed server-wide: after a wrong one, no guess from any session is checked for
  ``RESATTN_JOBS_GUESS_DELAY`` seconds (default 2, so at most one wrong guess every two seconds on the server).
* :func:`plain` escapes what Markdown (and Streamlit's ``:color[...]`` directives) would act on, for file names,
  class names and messages that carry them.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import threading
import time
from collections.abc import Callable

import streamlit as st

from resattn import jobs

COOKIE = "resattn_browser"
ENV_GUESS_DELAY = "RESATTN_JOBS_GUESS_DELAY"
_TOKEN = re.compile(r"[A-Za-z0-9_-]{22,64}")
_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+\-.!|~<>:$&=\"'])")


def plain(text: str) -> str:
    """``text`` escaped for ``st.markdown``, ``st.caption`` and the alerts: shown as typed, never as Markdown."""
    return _MARKDOWN.sub(r"\\\1", text).replace("\n", "  \n")


# ---------------------------------------------------------------------------------------------- the browser


def cookie_token() -> str | None:
    """The token in this browser's ``resattn_browser`` cookie (sent when the page was opened), if well formed."""
    try:
        value = st.context.cookies.get(COOKIE)
    except Exception:  # noqa: BLE001 - no browser context (bare mode)
        return None
    return value if isinstance(value, str) and _TOKEN.fullmatch(value) else None


def _set_cookie(token: str) -> None:
    """Ask the browser to keep ``token`` for a year (a script, since Streamlit cannot set cookies itself)."""
    st.html(f"<script>document.cookie = '{COOKIE}={token}; path=/; max-age=31536000; SameSite=Strict';</script>",
            unsafe_allow_javascript=True)


def browser_owner() -> str:
    """This browser's owner id for the job records (a hash of its cookie's token; a new token and cookie on a
    first visit)."""
    token = cookie_token()
    if token is None:
        token = st.session_state.get("jobs_browser_token")
        if token is None:
            token = st.session_state["jobs_browser_token"] = secrets.token_urlsafe(24)
            _set_cookie(token)
    return "browser:" + hashlib.sha256(token.encode()).hexdigest()[:32]


# ---------------------------------------------------------------------------------------------- the passphrase


def guess_delay() -> float:
    """Seconds the server checks no guess after a wrong one (``RESATTN_JOBS_GUESS_DELAY``, default 2)."""
    try:
        return max(0.0, float(os.environ.get(ENV_GUESS_DELAY, 2.0)))
    except ValueError:
        return 2.0


class GuessThrottle:
    """Passphrase checks for the whole server: after a wrong guess none is checked for ``delay`` seconds, so
    guessing runs at one try per ``delay`` however many sessions a guesser opens."""

    def __init__(self, delay: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.delay, self.clock = delay, clock
        self.lock = threading.Lock()
        self.next_check = 0.0

    def check(self, given: str | None, required: str) -> tuple[str, float]:
        """(``"right"``, ``"wrong"`` or ``"too soon"``, seconds until the next guess is checked); a guess that
        comes too soon is not compared at all."""
        with self.lock:
            now = self.clock()
            if now < self.next_check:
                return "too soon", self.next_check - now
            if jobs.passphrase_matches(given, required):
                return "right", 0.0
            self.next_check = now + self.delay
            return "wrong", self.delay


@st.cache_resource(show_spinner=False)
def throttle(delay: float) -> GuessThrottle:
    """The server's one throttle (per delay setting), shared by every session."""
    return GuessThrottle(delay)
