"""Explore: top-5 predictions and, for the chosen module, the soft mask M, trunk T and output H; or the mask's
parts (a factorisation into a few spatial regions and the channels that form them) and its channel atlas."""

import json
import time

import numpy as np
import streamlit as st

from resattn import maps

from ui import components, parts_panels, predictions

REDUCTION_NAMES = {"mean": "mean", "max": "max", "channel": "one channel", "topk": "top-k by mask energy"}
#: Ways to look at the mask alone: its parts, and every channel.
MASK_VIEWS = {"parts": "parts (factorised)", "atlas": "channel atlas"}
VIEW_NAMES = {**REDUCTION_NAMES, **MASK_VIEWS}
PARTS_K = ["auto", 2, 3, 4, 5, 6, 7, 8]


@st.cache_data(show_spinner=False, max_entries=256)
def panels(model_key: str, image_hash: str, stage: int, index: int, reduction: str, channel: int, k: int,
           contrast: str, mask_scale: str, mask_cmap: str, feature_cmap: str, alpha: float, overlaid: bool,
           _record: dict, _picture: np.ndarray) -> dict[str, dict]:
    """The three panels as PNG bytes (as shown, and for download with the colorbar drawn in), their scales and
    captions; cached, so a rerun that changes nothing in the maps re-encodes nothing."""
    views = maps.module_views(_record["mask"], _record["trunk"], _record["output"], _picture, how=reduction,
                              channel=channel, k=k, mask_scale=mask_scale, contrast=contrast, mask_cmap=mask_cmap,
                              feature_cmap=feature_cmap, alpha=alpha)
    out = {}
    for key, view in views.items():
        shown = view.overlay if overlaid else view.heat
        out[key] = {
            "name": view.name, "ok": view.stats.ok, "problem": view.stats.problem,
            "png": maps.to_png(shown), "export": maps.to_png(view.picture(overlaid)),
            "scale": view.scale, "cmap": view.cmap, "caption": view.stats.summary(),
            "grid": maps.to_png(view.grid) if view.grid is not None else None,
            "grid_scale": view.grid_scale,
            "grid_cmap": view.grid_cmap,
            "channels": view.channels, "reduced": view.reduced, "upsampled": view.upsampled,
        }
    return out


st.title("Explore the soft masks")
ctx = components.require_context()
start = time.perf_counter()
data = ctx.trace()
top = np.argsort(-data.probs)[:5]

# One screen at 1280×800 holds the picture, the predictions and the stage's M, T, H: the picture and predictions
# in a narrow left column, the maps and their controls to the right; the model's exact input comes after.
left, right = st.columns([1.1, 3], gap="medium")
with left:
    st.image(components.picture_png(ctx),
             caption=f"{ctx.image_name}: {components.region_words(ctx)}")
    st.dataframe(
        {"class": [ctx.class_name(int(i)) for i in top], "probability": [float(data.probs[i]) for i in top]},
        column_config={"class": st.column_config.TextColumn("top-5 class"),
                       "probability": st.column_config.NumberColumn(format="%.3f")},
        hide_index=True,
    )
    predictions.show(ctx.entry, ctx.meta, data.probs)
    components.input_image(ctx)

with right:
    if not data.modules:
        st.info("This model has no attention modules (a plain ResNet baseline): there are no masks to show.")
        st.stop()
    record = data.module(ctx.stage, ctx.index)
    channels = record["mask"].shape[0]
    learning = ctx.meta.get("overrides", {}).get("learning", "arl")
    st.subheader(f"Stage {ctx.stage}, module {ctx.index} — M, T and H = "
                 + ("(1 + M)·T (ARL)" if learning == "arl" else "M·T (NAL)"))
    heading = st.empty()  # what the maps show (the reduction), once the controls below have their values
    maps_area = st.container()  # filled below, once the controls under it have their values
    st.caption(f"`{record['name']}` · {channels} channels at {record['mask'].shape[1]}×{record['mask'].shape[2]}, "
               "upsampled bilinearly to the picture.")
    st.session_state["channel"] = min(st.session_state.get("channel", 0), channels - 1)
    st.session_state["topk"] = min(max(1, st.session_state.get("topk", 8)), min(16, channels))
    c1, c2, c3 = st.columns(3)
    reduction = c1.radio("Look at the channels by", list(VIEW_NAMES), key="reduction", format_func=VIEW_NAMES.get)
    channel = c2.slider("Channel", 0, channels - 1, key="channel", disabled=reduction != "channel")
    k = c2.slider("k (top-k)", 1, min(16, channels), key="topk", disabled=reduction != "topk")
    parts_k = c2.select_slider("Parts", PARTS_K, key="parts_k", disabled=reduction != "parts",
                               help="How many parts to factorise the mask into; auto: the fewest (2–8) that explain "
                                    "75% of its spatial variation.")
    contrast = components.contrast_picker("explore", c3)
    show_overlay = c3.toggle("Overlay on image", key="overlay")
    alpha = c3.slider("Overlay opacity", 0.0, 1.0, step=0.05, key="alpha", disabled=not show_overlay)

if reduction in MASK_VIEWS:
    maps_area.info(f"The mask's {VIEW_NAMES[reduction]} are shown below, across the page.")
    st.subheader(f"M, {VIEW_NAMES[reduction]}")
    if reduction == "parts":
        parts_panels.render_parts(ctx, record, None if parts_k == "auto" else int(parts_k), contrast)
    else:
        parts_panels.render_atlas(ctx, record, contrast)
    st.caption(f"⏱ page computed in {(time.perf_counter() - start) * 1000:.0f} ms")
    st.stop()

shown = panels(ctx.entry.key, ctx.image_hash, ctx.stage, ctx.index, reduction, channel, k, contrast, ctx.mask_scale,
               components.cmap("mask"), components.cmap("feature"), alpha, show_overlay, record, ctx.picture)
what = {"mean": "channel mean", "max": "channel max", "channel": f"channel {channel}",
        "topk": f"mean of top-{k} channels"}[reduction]
heading.markdown(f"Each map: the **{what}** of its tensor")
with maps_area:
    for column, (key, panel) in zip(st.columns(3), shown.items()):
        with column:
            st.markdown(f"**{panel['name']}**")
            if panel["ok"]:
                components.map_image(panel["png"], panel["scale"], panel["cmap"], caption=panel["caption"])
            else:
                st.warning(f"{panel['name']}: {panel['problem']}. Not drawn as a map.")
            if panel["grid"] is not None:
                components.map_image(panel["grid"], panel["grid_scale"], panel["grid_cmap"],
                                     caption=f"channels {panel['channels']}, the top-{k} by mask energy, each alone")
            st.download_button("PNG", lambda png=panel["export"]: png,
                               file_name=f"{key}_stage{ctx.stage}_module{ctx.index}_{reduction}.png",
                               mime="image/png", key=f"png_{key}", on_click="ignore",
                               help="The panel with its colorbar drawn into the picture")

st.subheader("Export this view")
manifest = components.manifest(ctx, reduction=reduction, channel=channel if reduction == "channel" else None,
                               topk=shown["M"]["channels"] or None, method="soft mask", contrast=contrast,
                               predicted_class=ctx.class_name(int(top[0])), predicted_index=int(top[0]))


def export_npz() -> bytes:
    arrays = {"image": ctx.picture, "model_input": ctx.model_view(), "probs": data.probs}
    for key, panel in shown.items():
        raw = {"M": "mask", "T": "trunk", "H": "output"}[key]
        arrays[f"{key}_raw"] = record[raw]
        arrays[f"{key}_reduced"] = panel["reduced"]
        arrays[f"{key}_upsampled"] = panel["upsampled"]
    return components.npz_bytes(arrays, manifest)


e1, e2 = st.columns(2)
e1.download_button("Raw maps (.npz)", export_npz, file_name=f"resattn_stage{ctx.stage}_module{ctx.index}.npz",
                   mime="application/octet-stream", key="export_npz", on_click="ignore")
e2.download_button("Manifest (.json)", json.dumps(manifest, indent=2, sort_keys=True),
                   file_name=f"resattn_stage{ctx.stage}_module{ctx.index}.json", mime="application/json",
                   key="export_json", on_click="ignore")
st.caption(f"⏱ Model pass {data.seconds * 1000:.0f} ms (cached per image) · page computed in "
           f"{(time.perf_counter() - start) * 1000:.0f} ms")
