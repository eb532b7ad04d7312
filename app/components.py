"""The controls every page shares, drawn in the sidebar: model picker, image input, stage and module picker.

``sidebar()`` returns a :class:`Context` with the loaded model, the chosen image and the chosen module; pages
read it with ``context()``. Bad images and checkpoints are reported here and never stop the app.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import streamlit as st
import torch
from PIL import Image

import resattn
from resattn import images

import state

DISPLAY_SIDE = 320  # panels are drawn at this longer side (maps are upsampled to it)
SOURCES = ("Gallery", "Upload", "Camera")


@dataclass
class Context:
    """What the sidebar chose, shared by every page."""

    entry: state.ModelEntry
    model: torch.nn.Module
    meta: dict[str, Any]
    image: Image.Image
    image_name: str
    image_hash: str
    picture: np.ndarray  # the model's view of the image (crop), H×W×3 uint8 at DISPLAY_SIDE
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
    def mask_scale(self) -> str:
        attention = self.meta.get("overrides", {}).get("attention", "mixed")
        return "channel_mask" if attention == "channel" else "mask"

    def trace(self, **kwargs: Any) -> state.TraceData:
        return state.trace(self.entry.key, self.image_hash, self.model, self.meta, self.image, **kwargs)


@st.cache_data(show_spinner=False, max_entries=32)
def decode(data: bytes, name: str) -> tuple[Image.Image, str]:
    """Decode an upload once (cached by its bytes); raises ``images.ImageError``."""
    image = images.load_image(data, name)
    return image, images.image_hash(image)


def _gallery_items() -> dict[str, images.GalleryItem]:
    return {f"{item.label} [{item.source}]": item for item in images.gallery()}


def _image_input() -> tuple[Image.Image, str, str] | None:
    """The image chosen in the sidebar as (image, name, hash), or None; bad files are reported, not raised."""
    source = st.sidebar.radio("Image source", SOURCES, key="source", horizontal=True)
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
        label = st.sidebar.selectbox("Gallery photo", list(items), key="gallery")
        candidates = [(label, items[label].read())]
    good: dict[str, tuple[Image.Image, str]] = {}
    for name, data in candidates:
        try:
            good[name] = decode(data, name)
        except images.ImageError as exc:
            st.sidebar.error(f"Cannot use {name}: {exc}")
    if not good:
        if source != "Gallery":
            st.sidebar.info("Upload an image (or take a photo) to begin.")
        return None
    name = st.sidebar.selectbox("Image", list(good), key="image_choice") if len(good) > 1 else next(iter(good))
    image, digest = good[name]
    return image, name, digest


def _pick_model() -> tuple[state.ModelEntry, torch.nn.Module, dict[str, Any], list[str]]:
    """The chosen model; if it cannot be loaded, say why and fall back to the next one that can."""
    entries = state.catalogue()
    if not entries:
        st.error("No models: add checkpoints to checkpoints/ or set RESATTN_APP_MODELS.")
        st.stop()
    labels = [e.label for e in entries]
    chosen = st.sidebar.selectbox("Model", labels, key="model")
    order = [entries[labels.index(chosen)]] + [e for e in entries if e.label != chosen]
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
    """Stage (1–3) and module (1..m) as the paper names them."""
    stages = [s for s in (1, 2, 3) if counts[s - 1] > 0] or [1]
    stage = st.sidebar.selectbox("Attention stage", stages, key="stage", format_func=lambda s: f"stage {s}")
    modules = list(range(1, max(1, counts[stage - 1]) + 1))
    index = st.sidebar.selectbox("Module", modules, key="module", format_func=lambda k: f"module {k}")
    return stage, index


def picture_of(image: Image.Image, meta: dict[str, Any]) -> np.ndarray:
    """The region the model sees, at DISPLAY_SIDE on its longer side."""
    fitted = images.fit_to_input(image, meta["input_size"])
    w, h = fitted.size
    scale = DISPLAY_SIDE / max(w, h)
    return np.asarray(fitted.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR))


def sidebar() -> Context | None:
    """Draw the shared controls and return the context, or None when there is no usable image yet."""
    st.sidebar.header("resattn explorer")
    entry, model, meta, notes = _pick_model()
    chosen = _image_input()
    counts = _module_counts(model)
    stage, index = stage_picker(counts)
    if chosen is None:
        return None
    image, name, digest = chosen
    ctx = Context(entry, model, meta, image, name, digest, picture_of(image, meta), stage, index, counts, notes)
    st.session_state["_context"] = ctx
    return ctx


def context() -> Context | None:
    """The context drawn by ``sidebar()`` on this run, or None (pages then ask for an image)."""
    ctx = st.session_state.get("_context")
    if ctx is None:
        st.info("Choose an image in the sidebar: a gallery photo, an upload or the camera.")
    return ctx


def require_context(banner: bool = True) -> Context:
    """The run's context, or stop the page with a hint to choose an image; optionally show the model banner."""
    ctx = context()
    if ctx is None:
        st.stop()
    if banner:
        model_banner(ctx)
    return ctx


def model_banner(ctx: Context) -> None:
    """The model name, RANDOM label and accuracy at the top of a page."""
    text = f"**Model:** {ctx.entry.label}"
    if ctx.entry.random:
        st.warning(f"{text} — **RANDOM** initialisation, untrained.")
    else:
        st.markdown(f"{text} · checkpoint `{ctx.entry.short_hash}`")


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
    """A .npz of the raw maps with the manifest stored as the ``manifest`` entry (a JSON string).

    Uncompressed: it is rebuilt on every rerun of the page, and compression would cost more than the
    0.2 s a stage or reduction switch may take."""
    import io

    buffer = io.BytesIO()
    np.savez(buffer, manifest=np.array(json.dumps(manifest_, sort_keys=True)), **arrays)
    return buffer.getvalue()
