"""Lecture mode (issue 28): the lecture file's schema and its messages, the shipped lecture (every scene computed
from shipped checkpoints and photos), the rooms, and the Lecture page presenting and following (AppTest)."""

from __future__ import annotations

import dataclasses
import gzip
import re
import sys
from html import escape
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

import resattn
from resattn import attribution, paper
from resattn.lecture import (
    VIEW_FIELDS,
    LectureError,
    find_lectures,
    load_lecture,
    parse_lecture,
)
from resattn.scenes import Resources, render_scene

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app"
sys.path.insert(0, str(APP))
SHIPPED = ROOT / "app" / "lectures" / "paper.toml"

MINIMAL = """
title = "T"
[[scene]]
title = "One"
text = "Words."
[scene.view]
page = "explore"
model = "m"
image = "china"
"""


# ------------------------------------------------------------------------------------------- the file format


def test_a_minimal_lecture_reads_with_defaults():
    lecture = parse_lecture(MINIMAL, "mini")
    (scene,) = lecture.scenes
    assert (lecture.name, lecture.title, scene.number, scene.title) == ("mini", "T", 1, "One")
    assert scene.view.page == "explore" and scene.view.get("stage") == 1 and scene.view.get("reduction") == "mean"
    assert scene.question is None


@pytest.mark.parametrize("change, message", [
    (('page = "explore"', 'page = "slides"'), "scene 1 ('One'): view field 'page' is 'slides'; allowed: 'explore'"),
    (('image = "china"', 'image = "china"\ncolour = "red"'), ("scene 1 ('One'): unknown view field 'colour' for page "
                                                               "'explore'; known: channel, contrast")),
    (('image = "china"', 'image = "china"\nstage = 4'), "scene 1 ('One'): view field 'stage' is 4; allowed: 1, 2, 3"),
    (('image = "china"', 'image = "china"\nmodule = "two"'), "view field 'module' must be a whole number"),
    (('text = "Words."', 'text = ""'), "scene 1 ('One'): field 'text' is missing or empty"),
    (('text = "Words."', 'text = "Words."\nnotes = "x"'), "scene 1 ('One'): unknown field 'notes'"),
    (('image = "china"\n', ''), "scene 1 ('One'): a 'explore' view needs 'image'"),
    (('title = "T"', 'title = "T"\nauthor = "me"'), "mini: unknown top-level field 'author'"),
    (('[[scene]]', '[[scene]'), "mini: not valid TOML"),
])
def test_a_broken_field_names_the_scene_and_the_field(change, message):
    with pytest.raises(LectureError) as caught:
        parse_lecture(MINIMAL.replace(*change), "mini")
    assert message in str(caught.value)


def test_compare_views_need_models_unless_they_show_the_tables():
    compare = MINIMAL.replace('page = "explore"\nmodel = "m"', 'page = "compare"')
    with pytest.raises(LectureError, match="needs 'models'"):
        parse_lecture(compare, "mini")
    tables = MINIMAL.replace('page = "explore"\nmodel = "m"\nimage = "china"', 'page = "compare"\nshow = "tables"')
    assert parse_lecture(tables, "mini").scenes[0].view.get("show") == "tables"


def test_the_attribution_methods_are_the_librarys():
    assert set(VIEW_FIELDS["attribution"]["method"]) == set(attribution.METHODS)


# ------------------------------------------------------------------------------------------- the shipped lecture


def test_the_shipped_lecture_covers_the_paper_in_12_to_16_scenes_and_every_scene_computes():
    assert "paper" in find_lectures(APP / "lectures")
    lecture = load_lecture(SHIPPED)
    assert 12 <= len(lecture.scenes) <= 16
    titles = " ".join(s.title for s in lecture.scenes)
    for topic in ("Why attention", "Eq. 1", "hourglass", "ARL against NAL", "activations", "parts", "Grad-CAM",
                  "Deletion", "Tables 1 and 3", "do not show"):
        assert topic in titles, topic
    resources = Resources(ROOT / "checkpoints", lecture.folder)
    for scene in lecture.scenes:
        # no number is typed into a scene's words: every figure comes from what the scene computes
        assert not re.search(r"\d+\.\d+\s*%|\b0\.\d{2,}", scene.text), scene.title
        shown = render_scene(scene, resources)
        if scene.view.page != "text":
            assert shown.panels or shown.table, scene.title
        for panel in shown.panels:
            assert panel.picture.ndim == 3 and panel.picture.dtype.name == "uint8"
            assert (panel.scale is None) == (panel.cmap is None)


def test_a_scene_naming_a_missing_checkpoint_or_photo_says_which():
    lecture = parse_lecture(MINIMAL.replace('model = "m"', 'model = "no_such_model"'), "mini")
    with pytest.raises(LectureError, match="scene 1 .*no checkpoint 'no_such_model'"):
        render_scene(lecture.scenes[0], Resources(ROOT / "checkpoints"))
    lecture = parse_lecture(MINIMAL.replace('model = "m"', 'model = "attention56_cifar_mixed_arl"')
                            .replace('"china"', '"nowhere.png"'), "mini")
    with pytest.raises(LectureError, match="no photo 'nowhere.png'"):
        render_scene(lecture.scenes[0], Resources(ROOT / "checkpoints"))


# ------------------------------------------------------------------------------------------- rooms


def test_only_the_presenter_moves_or_closes_a_room_and_idle_rooms_end():
    from ui.rooms import ALPHABET, Rooms, normalise

    now = [0.0]
    store = Rooms(idle_seconds=100, clock=lambda: now[0])
    room = store.open("paper", 14)
    assert len(room.code) == 4 and set(room.code) <= set(ALPHABET) and room.scene == 1
    assert store.get(room.code.lower()).scene == 1 and normalise(f" {room.code[:2]}-{room.code[2:]} ") == room.code
    assert not store.show(room.code, "not the token", 5) and store.get(room.code).scene == 1
    assert store.show(room.code, room.token, 5) and store.get(room.code).scene == 5
    assert store.show(room.code, room.token, 99) and store.get(room.code).scene == 14  # clamped
    assert not store.close(room.code, "not the token") and store.get(room.code) is not None
    now[0] = 150.0  # idle for longer than the limit
    assert store.get(room.code) is None
    other = store.open("paper", 14)
    assert store.close(other.code, other.token) and store.get(other.code) is None


def test_a_wait_answers_when_the_room_moves_or_ends_and_holds_while_it_rests():
    import asyncio
    import threading

    from ui.rooms import Rooms

    store = Rooms()
    room = store.open("paper", 14)

    async def scenario() -> list:
        seen = []
        loop = asyncio.get_running_loop()
        start = loop.time()
        seen.append((await store.wait(room.code, 1, timeout=0.2)).scene)  # at rest: held for the whole timeout
        seen.append(round(loop.time() - start, 1))
        assert (await store.wait(room.code, 3, timeout=5)).scene == 1  # not the scene shown: answered at once
        # the presenter moves (a script thread): the held wait answers at once, not after its timeout
        threading.Timer(0.1, store.show, (room.code, room.token, 4)).start()
        start = loop.time()
        seen.append((await store.wait(room.code.lower(), 1, timeout=10)).scene)
        seen.append(loop.time() - start < 2)
        threading.Timer(0.1, store.close, (room.code, room.token)).start()
        seen.append(await store.wait(room.code, 4, timeout=10))  # the room ends: None
        seen.append(await store.wait("NONE", 1, timeout=10))  # no such room: None at once
        return seen

    assert asyncio.run(scenario()) == [1, 0.2, 4, True, None, None]
    assert not store._waiting  # every finished wait left


def _call(route, path: str, query: str = "", headers: list | None = None) -> tuple[int, bytes, str | None]:  # noqa: ANN001
    """Run ``route`` on a GET of ``path`` as the server would: status, body and Cache-Control."""
    import asyncio

    from starlette.requests import Request
    from starlette.routing import Match

    scope = {"type": "http", "method": "GET", "path": path, "headers": headers or [], "query_string": query.encode()}
    match, child = route.matches(scope)
    assert match == Match.FULL, path
    response = asyncio.run(route.endpoint(Request({**scope, **child})))
    return response.status_code, response.body, response.headers.get("cache-control")


def test_the_wait_route_answers_in_json_and_says_when_a_room_is_gone(monkeypatch):
    import threading

    from ui import room_routes, rooms

    store = rooms.Rooms()
    monkeypatch.setattr(rooms, "rooms", lambda: store)
    monkeypatch.setattr(room_routes, "WAIT_SECONDS", 0.2)
    room = store.open("paper", 14)
    wait = room_routes.routes("/class/")[0]  # under the server's base URL path
    url = f"/class{room_routes.ROOMS_PATH}/{room.code.lower()}"
    assert _call(wait, url, "scene=3") == (200, b'{"scene":1,"scenes":14}', "no-store")  # not the scene shown
    assert _call(wait, url, "scene=1") == (200, b'{"scene":1,"scenes":14}', "no-store")  # held, then "no change"
    assert _call(wait, url, "scene=two")[0] == 400
    monkeypatch.setattr(room_routes, "WAIT_SECONDS", 10)
    threading.Timer(0.2, store.show, (room.code, room.token, 2)).start()
    assert _call(wait, url, "scene=1")[:2] == (200, b'{"scene":2,"scenes":14}')  # the move ends the wait
    store.close(room.code, room.token)
    status, body, _ = _call(wait, url, "scene=2")
    assert status == 404 and room.code.encode() in body


def test_the_scene_route_serves_the_rooms_scene_as_the_offline_copy_renders_it(monkeypatch):
    from ui import lecture_scenes, room_routes, rooms

    store = rooms.Rooms()
    monkeypatch.setattr(rooms, "rooms", lambda: store)
    room = store.open("paper", 14)
    scene = room_routes.routes()[1]
    base = f"{room_routes.ROOMS_PATH}/{room.code}/scenes"
    status, body, cache = _call(scene, f"{base}/14")
    assert status == 200 and cache == "no-store"
    text = body.decode()
    lecture = load_lecture(SHIPPED)
    assert "<strong>Scene 14 of 14</strong>" in text and escape(lecture.scenes[13].title) in text
    assert text == lecture_scenes.fragment(*lecture_scenes.key(SHIPPED, 14)).decode()  # computed once, shared
    assert "http://" not in text and "https://" not in text  # nothing fetched from elsewhere
    assert text.count("data:image/jpeg;base64,") == 0  # scene 14 is words; a scene with pictures sends JPEG:
    status, body, _ = _call(scene, f"{base}/2", headers=[(b"accept-encoding", b"gzip, deflate")])
    text = gzip.decompress(body).decode()  # compressed once per server, sent as it is
    assert status == 200 and "<strong>Scene 2 of 14</strong>" in text
    assert text.count("data:image/jpeg;base64,") == len(render_scene(lecture.scenes[1], Resources(
        ROOT / "checkpoints")).panels) > 0
    assert _call(scene, f"{base}/15")[0] == 404 and _call(scene, f"{base}/0")[0] == 404
    store.close(room.code, room.token)
    assert _call(scene, f"{base}/14")[0] == 404


# ------------------------------------------------------------------------------------------- the page


@pytest.fixture
def lecture_app(monkeypatch):
    monkeypatch.setenv("RESATTN_APP_MODELS", "none")
    monkeypatch.delenv("RESATTN_CHECKPOINT_DIR", raising=False)

    def start(**params: str) -> AppTest:
        at = AppTest.from_file(str(APP / "main.py"), default_timeout=300)
        for key, value in params.items():
            at.query_params[key] = value
        return at.run()

    return start


def _scene_line(at: AppTest) -> str:
    found = [m.value for m in at.markdown if re.search(r"Scene \d+ of \d+", m.value)]
    assert found, [m.value for m in at.markdown][:5]
    return re.search(r"Scene (\d+ of \d+)", found[-1]).group(1)


def _no_exceptions(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def test_a_presenter_walks_every_scene_and_a_follower_sees_each_one(lecture_app):
    presenter = lecture_app(lecture="paper")
    _no_exceptions(presenter)
    code = presenter.session_state["lecture_room"]
    assert any(f"Room {code}" in s.value for s in presenter.success)
    assert _scene_line(presenter) == "1 of 14"
    follower = lecture_app(room=code.lower())  # AppTest runs app/main.py: no wait route, the follower polls
    _no_exceptions(follower)
    assert _scene_line(follower) == "1 of 14"
    assert not [b for b in follower.button if b.key in ("lecture_next", "lecture_previous")]  # cannot advance
    for number in range(2, 15):
        presenter.button(key="lecture_next").click().run()
        _no_exceptions(presenter)
        assert _scene_line(presenter) == f"{number} of 14"
        assert not presenter.error, [e.value for e in presenter.error]
        follower.run()
        assert _scene_line(follower) == f"{number} of 14"
    assert presenter.button(key="lecture_next").disabled
    # a follower's "explore from here" opens the view on its page and leaves the room where it is
    follower.button(key="lecture_explore").click().run()
    _no_exceptions(follower)
    assert [t.value for t in follower.title] == ["Explore the soft masks"]  # scene 14 is words: Explore opens
    assert follower.sidebar.button(key="follow_again").label == f"Follow room {code} again"
    presenter.run()
    assert _scene_line(presenter) == "14 of 14"
    presenter.button(key="lecture_close").click().run()
    follower.switch_page("views/lecture.py").run()
    assert any(f"There is no room {code}" in w.value for w in follower.warning)


def test_the_tables_scene_judges_each_comparison_with_mcnemars_test_on_the_shipped_files():
    """Every shipped checkpoint has per-image test results (``checkpoints/confidence.json``), so each comparison
    the tables scene states is McNemar's test on those images, with the p-value the records give."""
    import resattn
    from resattn import confidence, paper

    lecture = load_lecture(SHIPPED)
    (scene,) = [s for s in lecture.scenes if s.view.get("show") == "tables"]
    shown = render_scene(scene, Resources(ROOT / "checkpoints", lecture.folder))
    stated = [f for f in shown.facts if "error gap" in f and "(photos)" not in f]
    assert len(stated) == 3  # Table 1 mixed vs channel and vs spatial, Table 3 ARL vs NAL, on CIFAR-10
    for fact, (a, b) in zip(stated, [("mixed_arl", "channel_arl"), ("mixed_arl", "spatial_arl"),
                                     ("mixed_arl", "mixed_nal")]):
        records = []
        for name in (a, b):
            path = ROOT / "checkpoints" / f"attention56_cifar_{name}.safetensors"
            records.append(confidence.calibration_for(path, resattn.file_hash(path)).correct_images())
        p_value = paper.paired_comparison(*records)["mcnemar_p"]
        assert f"(McNemar's {paper.p_words(p_value)})" in fact, fact


def test_explore_from_here_opens_the_scenes_view_with_its_settings(lecture_app):
    from ui import rooms

    presenter = lecture_app(lecture="paper")
    code, token = presenter.session_state["lecture_room"], presenter.session_state["lecture_token"]
    scene = load_lecture(SHIPPED).scenes[7]
    assert scene.view.get("reduction") == "topk"
    assert rooms.rooms().show(code, token, 8)
    follower = lecture_app(room=code)
    assert _scene_line(follower) == "8 of 14"
    follower.button(key="lecture_explore").click().run()
    _no_exceptions(follower)
    assert follower.radio(key="reduction").value == "topk" and follower.slider(key="topk").value == scene.view.get("k")
    assert follower.selectbox(key="stage").value == scene.view.get("stage")
    assert follower.selectbox(key="model").value.startswith("sha256:")
    assert "attention56_imagenette_mixed_arl" in next(m.value for m in follower.markdown if "Model shown" in m.value)
    assert follower.selectbox(key="gallery").value.startswith("china")
    assert rooms.rooms().get(code).scene == 8  # the room did not move


# ------------------------------------------------------------------------------------------- the offline copy


def test_the_export_writes_every_scene_with_everything_embedded(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("export_lecture", ROOT / "scripts" / "export_lecture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "lecture.html"
    assert module.main([str(SHIPPED), "--out", str(out)]) == 0
    html = out.read_text(encoding="utf-8")
    lecture = load_lecture(SHIPPED)
    assert re.findall(r'<section id="scene-(\d+)">', html) == [str(s.number) for s in lecture.scenes]
    for scene in lecture.scenes:
        assert f"Scene {scene.number} of {len(lecture.scenes)}" in html
    # nothing outside the file: no address, no stylesheet or font to fetch; every picture is a data: URI
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/|@import|url\(", html, flags=re.IGNORECASE)
    sources = re.findall(r'<img[^>]* src="([^"]*)"', html)
    assert len(sources) > 40 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert html.count('class="ra-colorbar"') >= 30 and html.count('class="formula"') >= 6


def test_markdown_of_a_scene_text_becomes_html_with_formulas_as_pictures():
    from resattn.html import markdown_html

    html = markdown_html("A **bold** and *slanted* `code` with $M \\approx 0$.\n\n$$H = M\\cdot T$$\nand <tags>.")
    assert html.startswith("<p>A <strong>bold</strong> and <em>slanted</em> <code>code</code> with <img")
    assert html.count("<p>") == 2 and '<span class="display"><img' in html and "&lt;tags&gt;" in html
    assert 'alt="M \\approx 0"' in html
    # a formula mathtext cannot draw is shown as its source, never dropped
    assert '<code class="formula">\\unknowncommand{x}</code>' in markdown_html("$\\unknowncommand{x}$")


def test_the_three_activations_scene_says_what_each_activation_fixes():
    """The scene that sets mixed, channel and spatial masks side by side states, for each kind it shows, what the
    activation alone fixes (the bounds ``tests/test_model.py`` checks), in Table 1's order."""
    from resattn.attention import FIXED_BY_ACTIVATION

    lecture = load_lecture(SHIPPED)
    (scene,) = [s for s in lecture.scenes if s.title.startswith("Three activations")]
    facts = render_scene(scene, Resources(ROOT / "checkpoints", lecture.folder)).facts
    assert facts[1:] == [f"Whatever the model learned, {FIXED_BY_ACTIVATION[k]}." for k in ("channel", "spatial")]
    # with the mixed model alone nothing is fixed, and nothing more is said
    models = scene.view.get("models")
    assert paper.variant(resattn.read_meta(ROOT / "checkpoints" / f"{models[0]}.safetensors"))[1] == "mixed"
    alone = dataclasses.replace(scene, view=dataclasses.replace(scene.view, fields={**scene.view.fields,
                                                                                      "models": models[:1]}))
    assert len(render_scene(alone, Resources(ROOT / "checkpoints", lecture.folder)).facts) == 1
