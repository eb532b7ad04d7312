"""The HTTP routes a lecture follower's page uses, added by ``app/serve.py`` (``streamlit run app/serve.py``).

* ``GET ROOMS_PATH/CODE?scene=k`` answers only when room CODE shows a scene other than k (``{"scene": j,
  "scenes": n}``) or has ended (404), or after :data:`WAIT_SECONDS` with the same scene, to be asked again: a page
  holds one such request open, so a room at rest costs the page and the server nothing.
* ``GET ROOMS_PATH/CODE/scenes/k`` is scene k of the room's lecture as one HTML fragment, computed once per server
  (:mod:`ui.lecture_scenes`) and the same rendering as the offline copy: a follower's page swaps it in without a
  Streamlit rerun, which is what a change would otherwise cost each follower's browser (a few hundred ms of CPU).

A server started from ``app/main.py`` has neither (:data:`SERVED` stays False) and followers poll instead.
"""

from __future__ import annotations

import asyncio
from typing import Any

from resattn.lecture import LectureError

from . import rooms

#: Where the routes live, under the server's base URL path (not a page name of the app).
ROOMS_PATH = "/resattn/rooms"
#: The longest a wait is held before it answers "no change" (the page then asks again).
WAIT_SECONDS = 20.0
#: Whether this server has the routes (``app/serve.py`` sets it when it adds them).
SERVED = False
NO_STORE = {"Cache-Control": "no-store"}


async def wait_for_change(request: Any) -> Any:
    """Answer when the room shows a scene other than ``?scene=``: 200 ``{"scene": k, "scenes": n}``; 404 when
    the room has ended; after :data:`WAIT_SECONDS` without a change, 200 with the same scene."""
    from starlette.responses import JSONResponse

    try:
        shown = int(request.query_params.get("scene", "0"))
    except ValueError:
        return JSONResponse({"error": "scene must be a whole number"}, status_code=400)
    code = rooms.normalise(request.path_params["code"])
    room = await rooms.rooms().wait(code, shown, WAIT_SECONDS)
    if room is None:
        return JSONResponse({"error": f"no room {code}"}, status_code=404, headers=NO_STORE)
    return JSONResponse({"scene": room.scene, "scenes": room.scenes}, headers=NO_STORE)


async def scene_fragment(request: Any) -> Any:
    """Scene ``number`` of the room's lecture as an HTML fragment; 404 when the room or the scene does not exist,
    500 with the reason when the scene cannot be computed."""
    from starlette.responses import HTMLResponse, PlainTextResponse

    from . import lecture_scenes  # here, not at import: app/serve.py imports this module before the runtime starts,
    # and the app's st.cache_data functions made then would not use the runtime's cache storage

    code = rooms.normalise(request.path_params["code"])
    room = rooms.rooms().get(code)
    if room is None:
        return PlainTextResponse(f"There is no room {code}.", status_code=404, headers=NO_STORE)
    number = request.path_params["number"]
    path = lecture_scenes.lecture_path(room.lecture)
    if path is None or not 1 <= number <= room.scenes:
        return PlainTextResponse(f"Room {code} has no scene {number}.", status_code=404, headers=NO_STORE)
    zipped = "gzip" in request.headers.get("accept-encoding", "")
    encode = lecture_scenes.fragment_gzip if zipped else lecture_scenes.fragment
    try:  # the first follower of a scene may compute it: in a worker thread, never in the server's event loop
        body = await asyncio.to_thread(encode, *lecture_scenes.key(path, number))
    except (LectureError, OSError) as exc:
        return PlainTextResponse(f"Scene {number} cannot be shown: {exc}", status_code=500, headers=NO_STORE)
    # an encoding already set keeps the server's gzip middleware off: the bytes are sent as they are
    return HTMLResponse(body, headers={**NO_STORE, "Content-Encoding": "gzip" if zipped else "identity"})


def routes(base_url_path: str = "") -> list[Any]:
    """Both routes, under ``base_url_path`` (the server's ``server.baseUrlPath``)."""
    from starlette.routing import Route

    base = "/" + base_url_path.strip("/") if base_url_path.strip("/") else ""
    return [Route(f"{base}{ROOMS_PATH}/{{code}}", wait_for_change, methods=["GET"]),
            Route(f"{base}{ROOMS_PATH}/{{code}}/scenes/{{number:int}}", scene_fragment, methods=["GET"])]
