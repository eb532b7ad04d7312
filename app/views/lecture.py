"""Lecture: present a lecture file scene by scene, or follow a presenter's room.

The presenter opens a lecture (here, or at ``/?lecture=NAME``) and gets a room code; students open
``/?room=CODE`` (or type the code) and see the presenter's scene within a second of every change, without
touching anything. Scenes are computed once per server (:mod:`ui.lecture_scenes`) and shared by every follower;
on a server started from ``app/serve.py`` a follower's page fetches each new scene as one HTML fragment, without
a Streamlit rerun (:mod:`ui.follow`). Thin over :mod:`resattn.lecture` (the file format) and
:mod:`resattn.scenes` (what a scene shows).
"""

from pathlib import Path

import streamlit as st
from ui import components, follow, room_routes, rooms, urlstate
from ui.lecture_scenes import LECTURES, key, lecture_file, pictures, rendered, warm_lecture

from resattn.lecture import Lecture, LectureError, Scene, find_lectures

PER_ROW = 4
#: The keyboard for the presenter: → or space for the next scene, ← for the previous one.
KEYS = """<script>
const doc = window.parent.document;
if (!doc.__resattnKeys) {
  doc.__resattnKeys = true;
  doc.addEventListener('keydown', (e) => {
    if (['INPUT', 'TEXTAREA', 'SELECT'].includes(e.target.tagName) || e.target.isContentEditable) return;
    const label = (e.key === 'ArrowRight' || e.key === ' ') ? 'Next scene' : e.key === 'ArrowLeft' ? 'Previous scene' : null;
    if (!label) return;
    const button = [...doc.querySelectorAll('button')].find((b) => b.innerText.includes(label));
    if (button && !button.disabled) { e.preventDefault(); button.click(); }
  });
}
</script>"""


def open_lecture(name: str) -> tuple[Lecture, Path] | None:
    """The lecture called ``name`` in app/lectures/, or None after saying why not."""
    found = find_lectures(LECTURES)
    if name not in found:
        st.error(f"No lecture {name!r}; there are: {', '.join(found) or 'none'} (files in app/lectures/).")
        return None
    path = found[name]
    try:
        return lecture_file(str(path), path.stat().st_mtime_ns), path
    except LectureError as exc:
        st.error(f"The lecture file cannot be used: {exc}")
        return None


def show_scene(lecture: Lecture, path: Path, number: int) -> None:
    """Scene ``number``: "Scene k of n", its title, text, question and what it shows."""
    scene = lecture.scenes[number - 1]
    st.markdown(f"**Scene {number} of {len(lecture.scenes)}** · {lecture.title}")
    st.header(scene.title)
    st.markdown(scene.text)
    if scene.question:
        st.info(f"**Question for the class:** {scene.question}", icon=":material/forum:")
    try:
        with st.spinner("Computing this scene (once for the whole room)…"):
            where = key(path, number)  # one stat of the file for both caches
            shown, pngs = rendered(*where), pictures(*where)
    except LectureError as exc:
        st.error(str(exc))
        return
    panels = list(zip(shown.panels, pngs))
    for first in range(0, len(panels), PER_ROW):
        for column, (panel, png) in zip(st.columns(PER_ROW), panels[first : first + PER_ROW]):
            with column:
                st.markdown(f"**{panel.title}**")
                if panel.scale is None:
                    st.image(png)
                else:
                    components.map_image(png, panel.scale, panel.cmap, caption=panel.caption)
    if shown.table:
        st.dataframe(shown.table, hide_index=True)
    for fact in shown.facts:
        st.markdown(f"- {fact}")
    if shown.panels or shown.table:
        st.caption(f"Computed live from the shipped checkpoints in {shown.seconds:.2f} s, once for the whole room.")


def explore_from_here(scene: Scene) -> None:
    """Set the sidebar and page controls to the scene's view and mark its page to open (a button callback: the
    controls can only be set before their widgets are drawn). A follower's own copy; the room does not move."""
    view = scene.view
    target = {"explore": "views/explore.py", "attribution": "views/attribution.py", "learn": "views/learn.py",
              "compare": "views/compare.py"}.get(view.page, "views/explore.py")
    params = {"stage": str(view.get("stage")), "module": str(view.get("module"))}
    model = view.get("model") or (view.get("models") or [None])[0]
    if model:
        params["model"] = model
    if view.get("image"):
        params["image"] = view.get("image")
    if view.page == "explore":
        params.update(reduction=view.get("reduction"), contrast=view.get("contrast"), k=str(view.get("k")))
    urlstate.apply(params, "explore")  # a link's rules: checkpoint by stem, gallery photo by the start of its name
    if view.page == "attribution":
        st.session_state["methods"] = [view.get("method")]
    st.session_state["_lecture_goto"] = target


def present() -> None:
    """The presenter's view: pick a lecture, get a room, move through the scenes."""
    found = find_lectures(LECTURES)
    if not found:
        st.error("No lecture files in app/lectures/.")
        return
    if st.session_state.get("lecture_choice") not in found:
        st.session_state["lecture_choice"] = "paper" if "paper" in found else next(iter(found))
    name = st.selectbox("Lecture", list(found), key="lecture_choice")
    opened = open_lecture(name)
    if opened is None:
        return
    lecture, path = opened
    store = rooms.rooms()
    room = store.get(st.session_state.get("lecture_room", ""))
    if room is None or room.lecture != name or room.token != st.session_state.get("lecture_token"):
        room = store.open(name, len(lecture.scenes))
        st.session_state["lecture_room"], st.session_state["lecture_token"] = room.code, room.token
    code, token = room.code, room.token
    st.success(f"**Room {code}**: students open this app with `?room={code}` after its address, or type "
               f"**{code}** under “Follow a room”.", icon=":material/groups:")
    back, where, forward, end = st.columns([1, 1, 1, 1])
    back.button("Previous scene", icon=":material/arrow_back:", disabled=room.scene <= 1, width="stretch",
                on_click=store.show, args=(code, token, room.scene - 1), key="lecture_previous")
    where.markdown(f"<div style='text-align:center;font-size:20px;padding-top:6px'>Scene {room.scene} of "
                   f"{room.scenes}</div>", unsafe_allow_html=True)
    forward.button("Next scene", icon=":material/arrow_forward:", disabled=room.scene >= room.scenes,
                   width="stretch", on_click=store.show, args=(code, token, room.scene + 1), key="lecture_next")
    if end.button("Close the room", icon=":material/close:", width="stretch", key="lecture_close"):
        store.close(code, token)
        st.session_state.pop("lecture_room", None)
        st.session_state.pop("lecture_token", None)
        st.info("The room is closed: its followers are told so.")
        return
    st.html(KEYS, unsafe_allow_javascript=True)
    warming = warm_lecture(path)  # every scene, in the background, once per server
    ready = (f"scenes computed in advance: {warming.done} of {warming.total}" if warming.done < warming.total
             else "every scene computed")
    st.caption(f"Keyboard: → or space for the next scene, ← for the previous one. · {ready}"
               + (f" (failed: {warming.error})" if warming.error else ""))
    show_scene(lecture, path, room.scene)


def explore_room_scene(code: str, lecture: Lecture) -> None:
    """``explore_from_here`` for the scene room ``code`` shows now (a follower's page may have followed it since
    it drew the button: with the wait route a scene change does not rerun the page)."""
    if (room := rooms.rooms().get(code)) is not None:
        explore_from_here(lecture.scenes[room.scene - 1])


def follow_room() -> None:
    """A student's view: the room's scene, updated within a second of each change, and a way out to explore."""
    code = rooms.normalise(st.text_input("Room code", key="lecture_follow", placeholder="e.g. K7QM"))
    if not code:
        st.info("Type the code the presenter shows (“Room …”), or open this app with `?room=CODE`.")
        return
    room = rooms.rooms().get(code)
    if room is None:
        st.warning(f"There is no room {code}: it has ended, or the code is mistyped.")
        return
    opened = open_lecture(room.lecture)
    if opened is None:
        return
    lecture, path = opened
    st.success(f"Following room **{code}**: this page follows the presenter.", icon=":material/sync:")
    st.button("Explore from here", icon=":material/travel_explore:", key="lecture_explore",
              on_click=explore_room_scene, args=(code, lecture),
              help="Opens this scene's view on its own page, to change it freely; “Follow room … again” in the "
                   "sidebar comes back. The room does not move.")
    if (target := st.session_state.pop("_lecture_goto", None)) is not None:
        st.switch_page(target)
    if room_routes.SERVED:
        follow.follow_scenes(code, room.scene, room.scenes)  # the page draws each scene the room moves to
    else:
        follow.poll_room(code, room.scene)  # a rerun of this page when the room moves
        show_scene(lecture, path, room.scene)


st.title("Lecture")
params = st.query_params
if "room" in params:
    st.session_state["lecture_mode"], st.session_state["lecture_follow"] = "follow", rooms.normalise(params["room"])
elif "lecture" in params:
    st.session_state["lecture_mode"], st.session_state["lecture_choice"] = "present", params["lecture"]
st.session_state.setdefault("lecture_mode", "present")
mode = st.radio("Mode", ["present", "follow"], key="lecture_mode", horizontal=True,
                format_func={"present": "Present a lecture", "follow": "Follow a room"}.get)
if mode == "present":
    present()
else:
    follow_room()
