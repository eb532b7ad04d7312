"""The controls every page shares, drawn in the sidebar: model picker, image input, stage and module picker,
and the colours of each quantity.

``sidebar()`` returns a :class:`Context` with the loaded model, the chosen image and the chosen module; pages
read it with ``context()``. Bad images and checkpoints are reported (in the sidebar and on the page) and never
stop the app. Widget values live in ``st.session_state`` under fixed keys and are kept across pages and across
runs in which a widget is not drawn (``keep_widget_state``), so controls and maps always agree.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import streamlit as st
import torch
from PIL import Image

import resattn
from resattn import images, maps, paper
from resattn.html import colorbar_html
from resattn.preprocess import Preprocessing

from . import dataset_tools, state

DISPLAY_SIDE = 320  # panels are drawn at this longer side (maps are upsampled to it)
SOURCES = ("Gallery", "Upload", "Camera")
#: Widgets whose values must survive page switches and runs in which they are not drawn.
PERSISTENT = ("model", "show_random", "source", "gallery", "image_choice", "stage", "module", "reduction", "channel",
              "topk", "alpha", "overlay", "cmap_mask", "cmap_feature", "cmap_attribution", "contrast_explore",
              "contrast_attribution", "contrast_compare", "contrast_learn", "methods", "ig_steps", "attr_alpha",
              "knockout", "dataset_source", "dataset_split", "dataset_limit", "dataset_filter", "dataset_confidence",
              "dataset_stat", "dataset_sort", "dataset_descending", "dataset_contrast", "dataset_overlay",
              "dataset_alpha", "dataset_page", "faithful_deletion", "sanity_run", "sanity_maps", "parts_k", "parts_pick",
              "parts_rank", "parts_dataset", "atlas_order", "atlas_page", "faithful_other", "knockout_other",
              "sanity_seed", "faithful_dataset", "faithful_dataset_limit", "faithful_pair_a", "faithful_pair_b",
              "faithful_dataset_run", "lecture_mode", "lecture_choice", "lecture_follow")


#: Starting values of the shared controls (widgets are created without their own defaults, so the value in
#: ``st.session_state`` is always the one shown and the one used).
DEFAULTS: dict[str, Any] = {
    "source": "Gallery", "reduction": "mean", "channel": 0, "topk": 8, "alpha": 0.5, "overlay": True,
    "cmap_mask": maps.DEFAULT_CMAPS["mask"], "cmap_feature": maps.DEFAULT_CMAPS["feature"],
    "cmap_attribution": maps.DEFAULT_CMAPS["attribution"], "contrast_explore": "stretch",
    "contrast_attribution": "stretch", "contrast_compare": "shared_stretch", "contrast_learn": "stretch",
    "methods": ["gradcam", "guided_gradcam"], "ig_steps": 16, "attr_alpha": 0.5, "knockout": "zero",
    "dataset_confidence": (0.0, 1.0), "dataset_descending": True, "dataset_contrast": "stretch",
    "dataset_overlay": True, "dataset_alpha": 0.5, "parts_k": "auto", "parts_pick": 1, "parts_rank": 1,
    "atlas_order": "contrast", "atlas_page": 1, "sanity_seed": 0, "faithful_dataset_limit": 40,
    "faithful_pair_a": "mask", "faithful_pair_b": "other",
}


def keep_widget_state() -> None:
    """Set missing defaults, then re-assign every persistent widget value, so Streamlit keeps it when its widget
    is not drawn this run (a page that stops early, another page). Without this an upload run resets the Explore
    controls to their defaults while the maps keep the old settings."""
    for key, value in DEFAULTS.items():
        st.session_state.setdefault(key, value)
    for key in PERSISTENT:
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]


@dataclass
class Context:
    """What the sidebar chose, shared by every page."""

    entry: state.ModelEntry
    model: torch.nn.Module
    meta: dict[str, Any]
    image: Image.Image
    image_name: str
    image_hash: str
    picture: np.ndarray  # the region the model sees, H×W×3 uint8 at DISPLAY_SIDE on its longer side
    stage: int
    index: int
    module_counts: tuple[int, int, int]
    notes: list[str] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return list(self.meta.get("classes") or [])

    def class_name(self, i: int) -> str:
        return self.classes[i] if 0 <= i < len(self.classes) else f"class {i}"

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing.from_meta(self.meta)

    @property
    def mask_scale(self) -> str:
        attention = self.meta.get("overrides", {}).get("attention", "mixed")
        return "channel_mask" if attention == "channel" else "mask"

    def trace(self, **kwargs: Any) -> state.TraceData:
        return state.trace(self.entry.key, self.image_hash, self.model, self.meta, self.image, **kwargs)

    def model_view(self) -> np.ndarray:
        """The exact input tensor, de-normalised, enlarged by nearest neighbour to about DISPLAY_SIDE."""
        return model_view(self.entry.key, self.image_hash, self.meta, self.image)


@st.cache_data(show_spinner=False, max_entries=64)
def model_view(model_key: str, image_hash: str, meta: dict, _image: Image.Image) -> np.ndarray:
    prep = Preprocessing.from_meta(meta)
    x = prep.denormalize(prep(_image))[0]
    picture = (x.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    return maps.enlarge_nearest(picture, DISPLAY_SIDE)


#: Page-wide style for the projector: dark captions (Streamlit's light grey fades on a projector) and less empty
#: space above the title, so the first screen holds the picture, the predictions and the maps.
STYLE = """<style>
[data-testid="stCaptionContainer"], [data-testid="stCaptionContainer"] *, [data-testid="stImageCaption"],
[data-testid="stImageCaption"] * { color: #262730 !important; font-size: 15px !important; opacity: 1 !important; }
[data-testid="stMainBlockContainer"] { padding-top: 2.5rem; }
</style>"""


def style() -> None:
    """Apply :data:`STYLE` (once per run, from ``main.py``; a style-only ``st.html`` takes no space)."""
    st.html(STYLE)


def colorbar(scale: maps.Scale, cmap_name: str, note: str | None = None, container: Any = st,
             under_picture: bool = True) -> None:
    """Draw :func:`colorbar_html` under the picture just shown in ``container`` (``under_picture=False``: under
    a row of labelled pictures, whose last line of text it must not cover)."""
    container.markdown(colorbar_html(scale, cmap_name, note, under_picture),  # numbers as text, 16 px
                       unsafe_allow_html=True)


def map_image(picture: np.ndarray | bytes, scale: maps.Scale, cmap_name: str, caption: str | None = None,
              note: str | None = None, container: Any = st) -> None:
    """A map as the app shows it: the picture, its colorbar as page text, then the caption."""
    container.image(picture, output_format="PNG")  # "auto" sends arrays as JPEG, which smears a map's edges
    colorbar(scale, cmap_name, note, container)
    if caption:
        container.caption(caption)


def cmap(quantity: str) -> str:
    """The colormap the user chose for ``quantity`` ("mask", "feature" or "attribution"), used on every page."""
    return st.session_state.get(f"cmap_{quantity}", maps.DEFAULT_CMAPS[quantity])


def contrast_picker(page: str, container: Any = st) -> str:
    """The page's contrast: the quantity's fixed natural scale, or stretched to each map's 1st–99th percentile."""
    return container.radio(
        "Contrast", maps.CONTRASTS, key=f"contrast_{page}", horizontal=True,
        format_func={"fixed": "fixed natural scale", "stretch": "stretched (1st–99th pct.)"}.get,
        help="Fixed: 0–1 for sigmoid masks, −1–1 for channel attention, symmetric around 0 for T, H and signed "
             "attributions. Stretched: each map's own 1st–99th percentile, which shows structure in masks that "
             "vary little. The colorbar under every map states which one is shown.",
    )


@st.cache_data(show_spinner=False, max_entries=64)
def decode(data: bytes, name: str) -> tuple[Image.Image, str]:
    """Decode an upload once (cached by its bytes); raises ``images.ImageError``."""
    image = images.load_image(data, name)
    return image, images.image_hash(image)


def _gallery_items() -> dict[str, images.GalleryItem]:
    """The gallery, with the samples of ``RESATTN_GALLERY_DATA`` when it is set (cached per setting, so a changed
    setting is never answered with another setting's photos)."""
    return _gallery_for(os.environ.get("RESATTN_GALLERY_DATA") or "")


@st.cache_resource(show_spinner=False)
def _gallery_for(dataset: str) -> dict[str, images.GalleryItem]:
    return {f"{item.label} [{item.source}]": item for item in images.gallery(dataset or None)}


@st.cache_data(show_spinner=False, max_entries=16)
def _gallery_bytes(label: str) -> bytes:
    return _gallery_items()[label].read()


def other_image(ctx: Context, key: str, label: str = "Another image") -> tuple[Image.Image, str, str] | None:
    """A gallery photo other than the sidebar's image (picked with widget ``key``; by default the first gallery
    photo that is not the current image), as (image, name, hash); None, with a note, when there is none."""
    items = [name for name in _gallery_items() if name != ctx.image_name]
    if not items:
        st.info("No other gallery photo to compare with (install scikit-image, scikit-learn or matplotlib).")
        return None
    if st.session_state.get(key) not in items:
        st.session_state[key] = items[0]
    name = st.selectbox(label, items, key=key)
    try:
        image, digest = decode(_gallery_bytes(name), name)
    except images.ImageError as exc:
        st.warning(f"Cannot use {name}: {exc}")
        return None
    if digest == ctx.image_hash:
        st.warning(f"{name} is the image shown: pick another one.")
    return image, name, digest


def _gallery_label(label: str, item: images.GalleryItem, classes: list[str]) -> str:
    """A gallery choice marked with whether it shows one of the model's classes."""
    shown = item.shown_in(classes)
    return f"✓ {label} (a {shown}: a class of this model)" if shown else f"{label} (none of this model's classes)"


def _image_input(meta: dict[str, Any]) -> tuple[Image.Image, str, str] | None:
    """The image chosen in the sidebar as (image, name, hash), or None; bad files are reported, not raised.
    Gallery photos are marked with whether they show one of the model's classes (``meta``'s)."""
    source = st.sidebar.radio("Image source", SOURCES, key="source", horizontal=True)
    if (picked := dataset_tools.picked_image(source)) is not None:  # "Open in Explore" on the Dataset page
        return picked
    candidates: list[tuple[str, bytes]] = []
    if source == "Upload":
        files = st.sidebar.file_uploader(
            "Images (PNG, JPEG, WebP, BMP, GIF, TIFF)", type=list(images.EXTENSIONS),
            accept_multiple_files=True, key="upload",
        )
        candidates = [(f.name, f.getvalue()) for f in files or []]
    elif source == "Camera":
        shot = st.sidebar.camera_input("Camera", key="camera")
        candidates = [("camera photo", shot.getvalue())] if shot is not None else []
    else:
        items = _gallery_items()
        if not items:
            st.sidebar.warning("No gallery photos found (install scikit-image, scikit-learn or matplotlib).")
            return None
        if st.session_state.get("gallery") not in items:
            st.session_state.pop("gallery", None)
        classes = list(meta.get("classes") or []) + list(meta.get("class_folders") or [])
        label = st.sidebar.selectbox("Gallery photo", list(items), key="gallery",
                                     format_func=lambda name: _gallery_label(name, items[name], classes),
                                     help="✓ marks a photo of one of the classes this model can name; the model "
                                          "names only those, whatever the photo shows.")
        candidates = [(label, _gallery_bytes(label))]
    good: dict[str, tuple[Image.Image, str]] = {}
    errors: list[str] = []
    for name, data in candidates:
        try:
            good[name] = decode(data, name)
        except images.ImageError as exc:
            errors.append(f"Cannot use {name}: {exc}")
    for error in errors:
        st.sidebar.error(error)
    st.session_state["_image_errors"] = errors
    if not good:
        if source != "Gallery":
            st.sidebar.info("Upload an image (or take a photo) to begin.")
        return None
    if st.session_state.get("image_choice") not in good:
        st.session_state.pop("image_choice", None)
    name = st.sidebar.selectbox("Image", list(good), key="image_choice") if len(good) > 1 else next(iter(good))
    image, digest = good[name]
    for note in images.image_notes(image):  # e.g. only the first frame of an animated GIF is used
        st.sidebar.info(note)
    return image, name, digest


def _default_model(entries: list[state.ModelEntry]) -> state.ModelEntry:
    """Photos are shown with the photo model when one is present (of a family, the paper's own variant: mixed
    attention, ARL); otherwise the first trained checkpoint."""
    usable = [e for e in entries if e.error is None]
    photo = [e for e in usable if not e.random and state.is_photo_model(e.meta)]
    if photo:
        return min(photo, key=lambda e: paper.variant_rank(e.meta))  # min keeps the first of equals
    return next((e for e in usable if not e.random), usable[0] if usable else entries[0])


def _pick_model() -> tuple[state.ModelEntry, torch.nn.Module, dict[str, Any], list[str]]:
    """The chosen model; if it cannot be loaded, say why and fall back to the next one that can."""
    trained = [e for e in state.catalogue(include_random=False) if e.error is None]
    st.session_state.setdefault("show_random", not trained)
    show_random = st.sidebar.toggle(
        "Show untrained (random) models", key="show_random", disabled=not trained,
        help="Randomly initialised networks show the architecture, not anything learned. Hidden while trained "
             "checkpoints are present, on every page, unless switched on here.")
    entries = state.catalogue(include_random=show_random or not trained)
    if not entries:
        st.error("No models: add checkpoints to checkpoints/ or set RESATTN_APP_MODELS.")
        st.stop()
    by_key = {e.key: e for e in entries}
    if st.session_state.get("model") not in by_key:  # first run, or the chosen model is gone
        st.session_state["model"] = _default_model(entries).key
    chosen = st.sidebar.selectbox("Model", list(by_key), key="model", format_func=lambda k: state.short_label(by_key[k]),
                                  help="Photo uploads use the photo model by default; CIFAR models are listed too.")
    st.sidebar.caption(by_key[chosen].label)
    order = [by_key[chosen]] + [e for e in entries if e.key != chosen]
    notes: list[str] = []
    for entry in order:
        try:
            model, meta = state.load_entry(entry)
        except resattn.CheckpointError as exc:
            notes.append(f"{entry.label}: {exc}")
            continue
        if notes:
            st.sidebar.error("Could not load the chosen model:\n\n" + "\n\n".join(notes)
                             + f"\n\nFalling back to **{entry.label}**.")
        if entry.random:
            st.sidebar.warning("RANDOM weights: this model is untrained; its masks and predictions show the "
                               "architecture, not anything learned.")
        return entry, model, meta, notes
    st.error("No model could be loaded:\n\n" + "\n\n".join(notes))
    st.stop()
    raise AssertionError  # unreachable: st.stop() ends the script


def _module_counts(model: torch.nn.Module) -> tuple[int, int, int]:
    counts = [0, 0, 0]
    for module in getattr(model, "attention_modules", lambda: [])():
        counts[module.stage - 1] += 1
    return tuple(counts)  # type: ignore[return-value]


def stage_picker(counts: tuple[int, int, int]) -> tuple[int, int]:
    """Stage (1–3) and module (1..m) as the paper names them; a choice the new model lacks becomes valid again."""
    stages = [s for s in (1, 2, 3) if counts[s - 1] > 0] or [1]
    if st.session_state.get("stage") not in stages:
        st.session_state["stage"] = stages[0]
    stage = st.sidebar.selectbox("Attention stage", stages, key="stage", format_func=lambda s: f"stage {s}")
    modules = list(range(1, max(1, counts[stage - 1]) + 1))
    if st.session_state.get("module") not in modules:
        st.session_state["module"] = modules[-1] if st.session_state.get("module", 1) > modules[-1] else modules[0]
    index = st.sidebar.selectbox("Module", modules, key="module", format_func=lambda k: f"module {k}")
    return stage, index


def colour_settings() -> None:
    """One colormap per quantity, used by every panel on every page."""
    with st.sidebar.expander("Colours", icon=":material/palette:"):
        for quantity, label in (("mask", "Soft mask M"), ("feature", "Trunk T, output H (signed)"),
                                ("attribution", "Attributions")):
            st.selectbox(label, maps.CMAPS[quantity], key=f"cmap_{quantity}")


def picture_of(image: Image.Image, meta: dict[str, Any]) -> np.ndarray:
    """The region the model sees (the centre crop of its preprocessing), at DISPLAY_SIDE on its longer side."""
    region = Preprocessing.from_meta(meta).view(image)
    w, h = region.size
    scale = DISPLAY_SIDE / max(w, h)
    return np.asarray(region.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR))


@st.cache_data(show_spinner=False, max_entries=64)
def _picture(model_key: str, image_hash: str, meta: dict, _image: Image.Image) -> np.ndarray:
    return picture_of(_image, meta)


def sidebar() -> Context | None:
    """Draw the shared controls and return the context, or None when there is no usable image yet."""
    st.sidebar.header("resattn explorer")
    following = st.session_state.get("lecture_follow")
    if (following and st.session_state.get("lecture_mode") == "follow"
            and st.sidebar.button(f"Follow room {following} again", icon=":material/sync:", key="follow_again")):
        st.switch_page("views/lecture.py")
    entry, model, meta, notes = _pick_model()
    chosen = _image_input(meta)
    counts = _module_counts(model)
    stage, index = stage_picker(counts)
    colour_settings()
    if chosen is None:
        return None
    image, name, digest = chosen
    ctx = Context(entry, model, meta, image, name, digest, _picture(entry.key, digest, meta, image), stage, index,
                  counts, notes)
    st.session_state["_context"] = ctx
    return ctx


def context() -> Context | None:
    """The context drawn by ``sidebar()`` on this run, or None (pages then ask for an image)."""
    ctx = st.session_state.get("_context")
    if ctx is None:
        for error in st.session_state.get("_image_errors", []):
            st.error(error)
        st.info("Choose an image in the sidebar: a gallery photo, an upload or the camera.")
    return ctx


def require_context(banner: bool = True) -> Context:
    """The run's context, or stop the page with a hint to choose an image; optionally show the model banner."""
    ctx = context()
    if ctx is None:
        st.stop()
    for error in st.session_state.get("_image_errors", []):
        st.error(error)
    if banner:
        model_banner(ctx)
    return ctx


def banner_text(entry: state.ModelEntry) -> str:
    """The banner's words: the file and what it is (width, input size, data, attention, accuracy and on what)."""
    return f"**Model shown:** `{state.short_label(entry)}` — {state.describe_meta(entry.meta)}"


def model_banner(ctx: Context) -> None:
    """Which model is shown (name, data, accuracy), with the RANDOM label, at the top of a page."""
    text = banner_text(ctx.entry)
    if ctx.entry.random:
        st.warning(f"{text} — **RANDOM** initialisation, untrained.")
    else:
        st.markdown(f"{text} · checkpoint `{ctx.entry.short_hash}`")


@st.cache_data(show_spinner=False, max_entries=128)
def _png(model_key: str, image_hash: str, what: str, _picture: np.ndarray) -> bytes:
    """A picture encoded once per model and image (every rerun would otherwise encode it again)."""
    return maps.to_png(_picture)


def region_words(ctx: Context) -> str:
    """What part of the image the model sees: the whole image, or its centre crop."""
    fraction = ctx.preprocessing.crop_fraction
    return "the region the model sees " + ("(the whole image)" if fraction == 1 else f"(centre {fraction:.1%} crop)")


def input_image(ctx: Context, container: Any = st) -> None:
    """The exact tensor the model receives, de-normalised and enlarged so each input pixel is a square."""
    size = ctx.preprocessing.size
    container.image(_png(ctx.entry.key, ctx.image_hash, "input", ctx.model_view()),
                    caption=f"The model's input: {size}×{size} pixels, de-normalised, enlarged by nearest neighbour "
                            "(each square is one input pixel)")


def picture_png(ctx: Context) -> bytes:
    """The region the model sees, as PNG (encoded once per model and image)."""
    return _png(ctx.entry.key, ctx.image_hash, "picture", ctx.picture)


def package_versions() -> dict[str, str]:
    """Versions recorded in every export manifest."""
    import captum
    import PIL
    import streamlit
    import torchvision

    return {
        "python": platform.python_version(), "resattn": resattn.__version__, "torch": torch.__version__,
        "torchvision": torchvision.__version__, "numpy": np.__version__, "pillow": PIL.__version__,
        "captum": captum.__version__, "streamlit": streamlit.__version__,
    }


def manifest(ctx: Context, **fields: Any) -> dict[str, Any]:
    """The JSON manifest of an export: what was computed from what."""
    return {
        "image": ctx.image_name, "image_hash": ctx.image_hash,
        "checkpoint": ctx.entry.path.name if ctx.entry.path else None,
        "checkpoint_hash": ctx.entry.key, "random_weights": ctx.entry.random,
        "model": ctx.meta.get("model"), "overrides": ctx.meta.get("overrides", {}),
        "stage": ctx.stage, "module": ctx.index, **fields, "versions": package_versions(),
    }


def npz_bytes(arrays: dict[str, np.ndarray], manifest_: dict[str, Any]) -> bytes:
    """A .npz of the raw maps with the manifest stored as the ``manifest`` entry (a JSON string)."""
    import io

    buffer = io.BytesIO()
    np.savez(buffer, manifest=np.array(json.dumps(manifest_, sort_keys=True)), **arrays)
    return buffer.getvalue()


def timed(label: str, start: float) -> None:
    st.caption(f"⏱ {label} in {(time.perf_counter() - start) * 1000:.0f} ms")
