"""A mask's parts and channels, drawn for the pages (Explore's "parts" and "channel atlas", Compare's parts row).

Every picture here is large enough to be read on a projector at 1280 px: parts at :data:`PART_SIDE`, one channel
at :data:`CHANNEL_SIDE`, atlas tiles at :data:`ATLAS_SIDE` with a number under each. The factorisation and its
choices (each channel's floor removed, (1 + M) / 2 for channel attention, k chosen for 75% explained) are
:mod:`resattn.parts`'; :func:`choices_caption` states them wherever parts are shown.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import streamlit as st
import torch
from PIL import Image

import resattn
from resattn import images, maps
from resattn import parts as P
from resattn.masks import spread_indices
from resattn.preprocess import Preprocessing

from . import components, dataset_tools, state

PART_SIDE = 360
CHANNEL_SIDE = 480
ATLAS_SIDE = 150
#: Channels per atlas page: a 6×4 grid fits a 1280×800 screen below the controls.
ATLAS_PAGE = 24
#: Dataset images searched for a part's examples.
EXAMPLE_IMAGES = 200
PART_SCALE = maps.Scale(0.0, 1.0, False, "fixed", "part weight: 0 to the part's own maximum (1)")
ATLAS_ORDERS = {"contrast": "spatial contrast (std over positions), highest first",
                "part": "part (each channel under the part it loads most on), then loading"}


@st.cache_data(show_spinner=False, max_entries=128)
def parts_of(model_key: str, image_hash: str, stage: int, index: int, k: int | None, attention: str | None,
             _mask: np.ndarray) -> P.MaskParts:
    """:func:`resattn.parts.mask_parts` of one module's mask (C×H×W), cached per model, image, module and k."""
    return P.mask_parts(_mask, k, attention=attention)  # type: ignore[arg-type]


def choices_caption(found: P.MaskParts) -> str:
    """What was factorised and how, in one line under the parts."""
    if found.flat:
        return "This mask is the same at every position of each channel: it has no parts to show."
    tried = ", ".join(f"k = {k}: {v:.0%}" for k, v in found.explained_by_k.items())
    return (f"**{found.k} parts explain {found.explained:.0%}** of the mask's spatial variation around each "
            f"channel's mean (tried {tried}). Non-negative factorisation (scikit-learn NMF, fixed seed) of the "
            "C × H·W mask after removing each channel's floor (its lowest value), so the common level takes no "
            "part" + ("; channel attention (values in −1…1) factorised as (1 + M) / 2" if found.transform != "none"
                      else "") + ". Parts are a description of where the mask varies, not evidence of what the "
            "network uses to classify.")


def part_png(found: P.MaskParts, part: int, picture: np.ndarray, side: int = PART_SIDE) -> bytes:
    """One part over the picture, as PNG (draw :func:`part_colorbar` under it)."""
    photo = np.asarray(Image.fromarray(picture).resize((side, side), Image.Resampling.BILINEAR))
    heat = maps.colorize(maps.upsample(found.maps[part], (side, side)), 0.0, 1.0, P.PART_CMAP)
    return maps.to_png(maps.overlay(photo, heat, alpha=0.65))


def part_colorbar(container: Any = st, under_picture: bool = True) -> None:
    """The colorbar of every part picture: each part scaled to its own maximum (``under_picture=False`` under a
    row of captioned parts)."""
    components.colorbar(PART_SCALE, P.PART_CMAP, container=container, under_picture=under_picture)


def part_caption(found: P.MaskParts, part: int, channels: int = 5) -> str:
    top = ", ".join(str(c) for c in found.top_channels(part, channels))
    return (f"part {part + 1}: {found.energy[part]:.0%} of the parts' energy · top-20% share "
            f"{P.concentration(found.maps[part]):.2f} · channels {top}")


def channel_view(mask: np.ndarray, channel: int, picture: np.ndarray, quantity: str, contrast: str, cmap: str,
                 side: int = CHANNEL_SIDE) -> maps.MapView:
    """One channel of the mask, large, on the page's contrast (draw it with its ``scale`` and ``cmap``)."""
    photo = np.asarray(Image.fromarray(picture).resize((side, side), Image.Resampling.BILINEAR))
    return maps.view_map(mask, f"M channel {channel}", photo, how="channel", channel=channel,
                         quantity=quantity, contrast=contrast, cmap=cmap)  # type: ignore[arg-type]


def atlas_order(mask: np.ndarray, found: P.MaskParts | None, how: str) -> list[int]:
    """All channels of ``mask`` (C×H×W) in atlas order: by spatial contrast, or grouped by part."""
    contrast = mask.reshape(mask.shape[0], -1).std(axis=1)
    if how == "part" and found is not None and not found.flat:
        part = found.loadings.argmax(axis=1)
        strength = found.loadings.max(axis=1)
        return [int(c) for c in np.lexsort((-strength, part))]
    return [int(c) for c in np.argsort(-contrast, kind="stable")]


def atlas_tiles(mask: np.ndarray, channels: list[int], quantity: str, contrast: str, cmap: str,
                side: int = ATLAS_SIDE) -> list[tuple[bytes, str]]:
    """One tile per channel: the channel on the page's scale (fixed, or stretched to each channel's own
    percentiles), enlarged to ``side``, and a caption with its number and range."""
    tiles = []
    for c in channels:
        values = mask[c]
        scale = maps.scale_for(values, quantity, contrast)  # type: ignore[arg-type]
        picture = maps.colorize(values, scale.low, scale.high, cmap)
        picture = np.asarray(Image.fromarray(picture).resize((side, side), Image.Resampling.NEAREST))
        tiles.append((maps.to_png(picture), f"ch {c}: {values.min():.2f}–{values.max():.2f}"
                      + (" (stretched)" if scale.stretched else "")))
    return tiles


# ---------------------------------------------------------------------------------------------- dataset examples


def example_datasets(meta: dict[str, Any]) -> dict[str, str]:
    """The configured datasets (``RESATTN_DATASETS``) whose classes this model knows."""
    found = {}
    for name, path in dataset_tools.configured_datasets().items():
        try:
            split = dataset_tools.listing(dataset_tools.source_key(name, path), path, "test")
            dataset_tools.label_map(split.classes, meta)
        except Exception:  # noqa: BLE001 - a dataset that does not fit this model is simply not offered
            continue
        found[name] = path
    return found


@st.cache_data(show_spinner=False, max_entries=16)
def dataset_module_masks(model_key: str, dataset_key: str, path: str, stage: int, index: int, limit: int,
                         _model: torch.nn.Module, _meta: dict) -> tuple[np.ndarray, list[np.ndarray], list[str]]:
    """One module's full masks (N×C×H×W) over ``limit`` images spread through the test split, with the pictures
    the model saw and the file names: what a part's or channel's dataset examples are picked from."""
    split = dataset_tools.listing(dataset_key, path, "test")
    positions = spread_indices(len(split.items), limit)
    masks, pictures, names = [], [], []
    prep = Preprocessing.from_meta(_meta)
    for name, data in dataset_tools.read_positions(split, positions):
        if isinstance(data, Exception):
            continue
        try:
            image = images.load_image(data, name)
        except images.ImageError:
            continue
        x = state.model_input(image, _meta)
        record = resattn.inspect(_model, x).module(stage, index)
        masks.append(record.mask[0].float().numpy())
        pictures.append((prep.denormalize(x)[0].permute(1, 2, 0).numpy().clip(0, 1) * 255 + 0.5).astype(np.uint8))
        names.append(name)
    return np.stack(masks), pictures, names


def loadings_key(found: P.MaskParts, part: int) -> str:
    return hashlib.sha256(found.loadings[:, part].tobytes()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- page sections


def render_parts(ctx: Any, record: dict[str, Any], k: int | None, contrast: str) -> P.MaskParts:
    """Explore's "parts" view: every part large over the picture, then one part's channels one by one and,
    with a dataset configured, where in the dataset the part is most concentrated."""
    attention = ctx.meta.get("overrides", {}).get("attention")
    found = parts_of(ctx.entry.key, ctx.image_hash, ctx.stage, ctx.index, k, attention, record["mask"])
    st.markdown(choices_caption(found))
    if found.flat:
        return found
    columns = st.columns(min(3, found.k))
    for j in range(found.k):
        with columns[j % len(columns)]:
            st.image(part_png(found, j, ctx.picture))
            part_colorbar()
            st.caption(part_caption(found, j))
            if st.button(f"Channels of part {j + 1}", key=f"parts_open_{j}"):
                st.session_state["parts_pick"] = j + 1
    pick = min(int(st.session_state.get("parts_pick", 1)), found.k)
    st.session_state["parts_pick"] = pick
    st.subheader(f"Part {pick}, channel by channel")
    part = pick - 1
    members = found.top_channels(part, min(16, found.loadings.shape[0]))
    left, right = st.columns([1, 2])
    with left:
        st.radio("Part", list(range(1, found.k + 1)), key="parts_pick", horizontal=True,
                 format_func=lambda j: f"part {j}")
        st.session_state["parts_rank"] = min(max(1, int(st.session_state.get("parts_rank", 1))), len(members))
        rank = st.slider("Channel (by loading on this part)", 1, len(members), key="parts_rank")
        channel = members[rank - 1]
        st.markdown(f"**Channel {channel}**: loading {found.loadings[channel, part]:.3f} on part {pick} "
                    f"(rank {rank} of {found.loadings.shape[0]} channels)")
        st.image(part_png(found, part, ctx.picture, side=240))
        part_colorbar()
        st.caption(part_caption(found, part))
    with right:
        view = channel_view(record["mask"], channel, ctx.picture, ctx.mask_scale, contrast,
                            st.session_state.get("cmap_mask", maps.DEFAULT_CMAPS["mask"]))
        components.map_image(view.heat, view.scale, view.cmap, caption=f"channel {channel} · {view.stats.summary()}")
    _examples(ctx, found, part)
    return found


def _examples(ctx: Any, found: P.MaskParts, part: int) -> None:
    offered = example_datasets(ctx.meta)
    if not offered:
        st.caption("Dataset examples: configure a dataset this model knows (`RESATTN_DATASETS=name=path`) to see "
                   "where in it this part is most concentrated.")
        return
    name = st.selectbox("Dataset examples from", list(offered), key="parts_dataset")
    if not st.button(f"Find where part {part + 1} is most concentrated ({EXAMPLE_IMAGES} test images of {name})",
                     key="parts_examples"):
        return
    path = offered[name]
    with st.spinner(f"Masks of {EXAMPLE_IMAGES} images of {name}…"):
        masks, pictures, names = dataset_module_masks(ctx.entry.key, dataset_tools.source_key(name, path), path,
                                                      ctx.stage, ctx.index, EXAMPLE_IMAGES, ctx.model, ctx.meta)
    weighted = P.part_images(found, masks, part=part)
    index, scores = P.dataset_examples(weighted, count=6)
    side = 240
    for first in range(0, len(index), 3):  # rows of three, in rank order
        for column, i, score in zip(st.columns(3), index[first:first + 3], scores[first:first + 3]):
            own = weighted[i] / max(float(weighted[i].max()), 1e-12)
            photo = np.asarray(Image.fromarray(pictures[i]).resize((side, side), Image.Resampling.BILINEAR))
            heat = maps.colorize(maps.upsample(own, (side, side)), 0.0, 1.0, P.PART_CMAP)
            column.image(maps.to_png(maps.overlay(photo, heat, 0.6)),
                         caption=f"{'/'.join(names[i].split('/')[-2:])} · top-20% share {score:.2f}")
    part_colorbar(under_picture=False)
    st.caption(f"The {len(index)} of {len(masks)} images where part {part + 1}'s channels (weighted by their loadings, "
               "each above its own floor) are most concentrated; each map scaled to its own maximum.")


def render_atlas(ctx: Any, record: dict[str, Any], contrast: str) -> None:
    """Explore's "channel atlas": every channel of the mask, a page at a time, each readable."""
    mask = record["mask"]
    channels = mask.shape[0]
    how = st.radio("Order channels by", list(ATLAS_ORDERS), key="atlas_order", horizontal=True,
                   format_func=lambda h: ATLAS_ORDERS[h])
    found = None
    if how == "part":
        attention = ctx.meta.get("overrides", {}).get("attention")
        found = parts_of(ctx.entry.key, ctx.image_hash, ctx.stage, ctx.index, None, attention, mask)
    order = atlas_order(mask, found, how)
    pages = -(-channels // ATLAS_PAGE)
    st.session_state["atlas_page"] = min(max(1, int(st.session_state.get("atlas_page", 1))), pages)
    page = st.slider("Atlas page", 1, pages, key="atlas_page", disabled=pages == 1) if pages > 1 else 1
    shown = order[(page - 1) * ATLAS_PAGE: page * ATLAS_PAGE]
    scale = maps.scale_for(mask, ctx.mask_scale, "fixed")  # type: ignore[arg-type]
    cmap = maps.cmap_for(scale, st.session_state.get("cmap_mask"), ctx.mask_scale)  # type: ignore[arg-type]
    tiles = atlas_tiles(mask, shown, ctx.mask_scale, contrast, cmap)
    for start in range(0, len(tiles), 6):
        for column, (png, caption) in zip(st.columns(6), tiles[start:start + 6]):
            column.image(png, caption=caption)
    if contrast == "fixed":
        components.colorbar(scale, cmap, note=f"every tile: {scale.description}", under_picture=False)
    else:
        st.caption("Each tile is stretched to its own 1st–99th percentile: compare shapes, not levels "
                   "(each caption gives the channel's range).")
    part_note = f"; grouped by the part each loads most on ({found.k} parts)" if found is not None and not found.flat else ""
    st.caption(f"Channels {(page - 1) * ATLAS_PAGE + 1}–{(page - 1) * ATLAS_PAGE + len(shown)} of {channels} in order of "
               f"{ATLAS_ORDERS[how]}{part_note}.")
