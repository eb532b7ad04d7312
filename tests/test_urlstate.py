"""Every view of the explorer as a link (issue 28): the sidebar's "Link to this view" holds the page's model, photo,
stage, module, channel view, contrast and colours; a new session opened with that link shows the same view on
every page, and a link naming what this server lacks says so and applies the rest."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

import pytest
from streamlit.testing.v1 import AppTest

try:
    from .test_app import APP, TINY, checkpoints, model_key, no_exceptions  # noqa: F401 - fixtures
except ImportError:
    from test_app import APP, TINY, checkpoints, model_key, no_exceptions  # noqa: F401

PAGES = {"explore": "views/explore.py", "attribution": "views/attribution.py", "compare": "views/compare.py",
         "learn": "views/learn.py"}
#: Session keys a link carries, and what the view is set to before the link is taken.
VIEW = {"stage": 2, "module": 1, "reduction": "max", "cmap_mask": "magma", "cmap_feature": "coolwarm",
        "cmap_attribution": "hot"}


@pytest.fixture
def start(checkpoints, monkeypatch):
    monkeypatch.setenv("RESATTN_CHECKPOINT_DIR", str(checkpoints))
    monkeypatch.setenv("RESATTN_APP_MODELS", TINY)
    monkeypatch.delenv("RESATTN_GALLERY_DATA", raising=False)

    def run(page: str, **params: str) -> AppTest:
        at = AppTest.from_file(str(APP / "main.py"), default_timeout=300)
        for key, value in params.items():
            at.query_params[key] = value
        if page != "explore":  # the link's path: the first run is on that page, as in a browser
            at.switch_page(PAGES[page])
        at.run()
        no_exceptions(at)
        return at

    return run


def _link(at: AppTest) -> dict[str, str]:
    (box,) = [c for c in at.sidebar.code if "?" in c.value]
    return dict(parse_qsl(urlsplit(box.value).query))


@pytest.mark.parametrize("page", list(PAGES))
def test_a_link_restores_the_view_on_every_page(start, page):
    at = start(page)
    at.selectbox(key="model").set_value(model_key(at, "b_photo")).run()
    from ui import components

    gallery = next(k for k in components._gallery_for("") if k.startswith("coffee"))
    at.session_state["gallery"] = gallery
    for key, value in VIEW.items():
        at.session_state[key] = value
    contrast = {"compare": "per_model"}.get(page, "fixed")
    at.session_state[f"contrast_{page}"] = contrast
    at.run()
    no_exceptions(at)
    params = _link(at)
    assert params["model"] == "b_photo" and params["image"] == gallery and params["contrast"] == contrast
    again = start(page, **params)
    for key, value in {**VIEW, "gallery": gallery, "source": "Gallery", f"contrast_{page}": contrast}.items():
        assert again.session_state[key] == value, key
    assert again.session_state["model"] == model_key(again, "b_photo")
    assert _link(again) == params  # the restored view links to itself


def test_a_link_naming_what_this_server_lacks_says_so_and_applies_the_rest(start):
    at = start("explore", model="no_such_model", image="nowhere", stage="two", reduction="max", cmap_mask="rainbow")
    problems = " ".join(w.value for w in at.warning)
    for expected in ("no checkpoint 'no_such_model'", "no gallery photo 'nowhere'", "stage must be a whole number",
                     "cmap_mask 'rainbow' is not one of"):
        assert expected in problems
    assert at.session_state["reduction"] == "max"  # what could be applied was
    assert "An uploaded or camera image" not in " ".join(c.value for c in at.sidebar.caption)
