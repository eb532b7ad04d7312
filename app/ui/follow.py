"""Follow a lecture room: show the presenter's scene in a follower's page, within a second of each change.

With the routes of :mod:`ui.room_routes` (``streamlit run app/serve.py``), :func:`follow_scenes` mounts a small
script that shows the room's scene as an HTML fragment, holds one request open until the room moves, then swaps in
the new scene (fetched ahead while the page was idle when it is the next or the previous one): no Streamlit rerun
per change, and none while the room rests. Only the room's end
reruns the page (which then says so). Without the routes (``streamlit run app/main.py``), :func:`poll_room` asks
the server every :data:`POLL_SECONDS` and reruns the page when the room moved: the same scenes, at the cost of a
Streamlit rerun per poll in every follower's browser.
"""

from __future__ import annotations

import streamlit as st

from . import room_routes, rooms

#: How often a follower's page asks the server, when the server has no room routes (seconds).
POLL_SECONDS = 0.25

#: Show scene ``data.scene``, then wait on the room and show each scene it moves to; on the room's end, rerun.
#: Once a scene is drawn and the page is idle, the scenes before and after it are fetched ahead, so a change to
#: either (the usual next step) needs no request at the moment of the change, when every follower asks at once.
FOLLOW_JS = """
export default function (component) {
  const { data, setTriggerValue, parentElement } = component;
  if (parentElement.__resattnStop) parentElement.__resattnStop();
  const controller = new AbortController();
  let stopped = false;
  parentElement.__resattnStop = () => { stopped = true; controller.abort(); };
  const pause = (ms) => new Promise((done) => setTimeout(done, ms));
  const get = (url) => fetch(url, { cache: "no-store", signal: controller.signal });
  let status = parentElement.querySelector(".ra-status"), box = parentElement.querySelector(".ra-room");
  if (!box) {
    if (parentElement.host) parentElement.host.dataset.resattnRoom = data.room;  // for tests and benchmarks
    status = document.createElement("div"); status.className = "ra-status"; parentElement.appendChild(status);
    box = document.createElement("div"); box.className = "ra-room"; parentElement.appendChild(box);
  }
  const ahead = new Map();  // scene number -> Promise of {status, text}, or of null when the fetch failed
  const load = (n) => {
    if (!ahead.has(n)) ahead.set(n, get(`${data.room}/scenes/${n}`)
      .then(async (r) => ({ status: r.status, text: await r.text() })).catch(() => null));
    return ahead.get(n);
  };
  const later = window.requestIdleCallback || ((run) => setTimeout(run, 500));
  const ended = () => { stopped = true; setTriggerValue("ended", true); };
  (async () => {
    let shown = Number(box.dataset.scene || 0), wanted = data.scene;
    while (!stopped) {
      try {
        if (wanted !== shown) {
          status.textContent = "Loading the presenter's scene…";
          const answer = await load(wanted);
          ahead.delete(wanted);  // used once: a revisit asks again, and so sees a lecture edited meanwhile
          if (!answer) throw new Error("no answer");
          if (answer.status === 404) return ended();
          if (answer.status !== 200) { status.textContent = answer.text; await pause(2000); continue; }
          box.innerHTML = answer.text;
          box.dataset.scene = shown = wanted;
          status.textContent = "";
          for (const n of [...ahead.keys()]) if (Math.abs(n - shown) > 1) ahead.delete(n);
          const here = shown;
          later(() => { if (!stopped && shown === here) [here + 1, here - 1]
            .filter((n) => n >= 1 && n <= data.scenes).forEach(load); });
        }
        const response = await get(`${data.room}?scene=${shown}`);
        if (response.status === 404) return ended();
        if (!response.ok) { await pause(1000); continue; }
        wanted = (await response.json()).scene;
      } catch (error) {
        if (stopped) return;
        status.textContent = "The server does not answer; trying again…";
        await pause(1000);
      }
    }
  })();
  return parentElement.__resattnStop;
}
"""
CSS = ".ra-status { color: #555; font-size: 0.95rem; min-height: 1.2rem; }"

_follow = st.components.v2.component("resattn.room_follow", js=FOLLOW_JS, css=CSS)


def room_url(code: str) -> str:
    """Room ``code``'s routes, relative to the page (so a base URL path holds; pages sit at the top level)."""
    return room_routes.ROOMS_PATH.lstrip("/") + "/" + rooms.normalise(code)


def follow_scenes(code: str, scene: int, scenes: int) -> None:
    """Show room ``code``'s scenes (``scenes`` of them) from ``scene`` on, as the presenter moves (needs
    :mod:`ui.room_routes`)."""
    _follow(key=f"room_follow_{rooms.normalise(code)}",
            data={"room": room_url(code), "scene": scene, "scenes": scenes}, on_ended_change=lambda: None)


def poll_room(code: str, scene: int) -> None:
    """Rerun this page when room ``code`` leaves ``scene`` or ends (for a server without the room routes)."""

    @st.fragment(run_every=POLL_SECONDS)
    def poll() -> None:
        now = rooms.rooms().get(code)
        if now is None or now.scene != scene:
            st.rerun(scope="app")

    poll()
