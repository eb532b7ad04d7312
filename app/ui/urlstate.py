"""A view of the explorer as a link: the page's path plus query parameters for the model, gallery photo, stage,
module, channel view, contrast and colormaps, so a lecture scene, a student's finding or a bug report is one link.

``restore()`` reads the parameters once, on a session's first run, into the widgets' ``st.session_state`` keys
(``apply()``, also used by a lecture's "explore from here": an unknown value is reported and left out, never
half-applied); ``link()`` writes the current view.
An uploaded image cannot travel in a link (only gallery photos have names every server knows); the link says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit

import streamlit as st

from resattn import maps

from . import components, state

#: The channel views Explore offers (its reductions, parts and the atlas).
REDUCTIONS = ("mean", "max", "channel", "topk", "parts", "atlas")
#: Each page's contrast choices (the widget key is ``contrast_<page>``).
CONTRASTS = {"explore": maps.CONTRASTS, "attribution": maps.CONTRASTS, "learn": maps.CONTRASTS,
             "compare": ("shared_fixed", "shared_stretch", "per_model")}
#: Query parameters that hold a whole number, with the session key they set.
NUMBERS = {"stage": "stage", "module": "module", "channel": "channel", "k": "topk"}
COLOURS = ("cmap_mask", "cmap_feature", "cmap_attribution")


def _checkpoints() -> dict[str, str]:
    """Trained checkpoints by file stem -> the model picker's key."""
    return {e.path.stem: e.key for e in state.catalogue(include_random=False) if e.path and e.error is None}


def _gallery(name: str) -> str | None:
    """The gallery choice whose label starts with ``name`` (any case), or None."""
    items = list(components._gallery_items())
    return next((k for k in items if k == name), None) or next(
        (k for k in items if k.lower().startswith(name.lower())), None)


def restore(page: str) -> list[str]:
    """Apply the URL's view to the session, once per session; returns what could not be applied."""
    if st.session_state.get("_url_restored"):
        return []
    st.session_state["_url_restored"] = True
    return apply(st.query_params, page)


def apply(params: Mapping[str, str], page: str) -> list[str]:
    """Set the widgets' session keys to the view ``params`` describe (a link's, or a lecture scene's) on
    ``page``; returns what could not be applied (the rest is)."""
    problems: list[str] = []
    if "model" in params:
        key = _checkpoints().get(params["model"])
        if key:
            st.session_state["model"] = key
        else:
            problems.append(f"no checkpoint {params['model']!r} on this server")
    if "image" in params:
        label = _gallery(params["image"])
        if label:
            st.session_state["source"], st.session_state["gallery"] = "Gallery", label
        else:
            problems.append(f"no gallery photo {params['image']!r}")
    for name, key in NUMBERS.items():
        if name in params:
            if params[name].isdigit():
                st.session_state[key] = int(params[name])
            else:
                problems.append(f"{name} must be a whole number, not {params[name]!r}")
    if "reduction" in params:
        _choose(params["reduction"], REDUCTIONS, "reduction", "reduction", problems)
    if "contrast" in params and page in CONTRASTS:
        _choose(params["contrast"], CONTRASTS[page], f"contrast_{page}", "contrast", problems)
    for key in COLOURS:
        if key in params:
            _choose(params[key], maps.CMAPS[key.removeprefix("cmap_")], key, key, problems)
    return problems


def _choose(value: str, allowed: tuple[str, ...], key: str, name: str, problems: list[str]) -> None:
    if value in allowed:
        st.session_state[key] = value
    else:
        problems.append(f"{name} {value!r} is not one of {', '.join(allowed)}")


def view(page: str) -> dict[str, Any]:
    """The current view's parameters (what :func:`restore` reads)."""
    s = st.session_state
    out: dict[str, Any] = {}
    stems = {key: stem for stem, key in _checkpoints().items()}
    if s.get("model") in stems:
        out["model"] = stems[s["model"]]
    if s.get("source") == "Gallery" and s.get("gallery"):
        out["image"] = s["gallery"]
    for name, key in NUMBERS.items():
        if isinstance(s.get(key), int):
            out[name] = s[key]
    if s.get("reduction") in REDUCTIONS:
        out["reduction"] = s["reduction"]
    if page in CONTRASTS and s.get(f"contrast_{page}") in CONTRASTS[page]:
        out["contrast"] = s[f"contrast_{page}"]
    for key in COLOURS:
        if s.get(key) and s.get(key) != maps.DEFAULT_CMAPS[key.removeprefix("cmap_")]:
            out[key] = s[key]
    return out


def link(page: str) -> str:
    """This view as a link: the address the browser shows (without its query) plus the view's parameters."""
    base = urlsplit(st.context.url or "")
    address = f"{base.scheme}://{base.netloc}{base.path}" if base.netloc else f"/{page}"
    return f"{address}?{urlencode(view(page))}"


def link_box(page: str) -> None:
    """The sidebar's "Link to this view": the link with Streamlit's copy button, and what it cannot carry."""
    with st.sidebar.expander("Link to this view", icon=":material/link:"):
        st.code(link(page), language=None, wrap_lines=True)
        note = "Copy it with the button at its corner: it opens this page with the same model, photo, stage, " \
               "module, channel view, contrast and colours."
        if st.session_state.get("source") != "Gallery":
            note += " An uploaded or camera image cannot travel in a link: the link opens the default photo."
        st.caption(note)
