"""Attribution: the chosen module's mask beside Grad-CAM, Guided Grad-CAM, Integrated Gradients and Occlusion."""

import json
import time

import numpy as np
import streamlit as st

from resattn import attribution, maps

from ui import components, faithful_dataset, faithful_panels, predictions, state

st.title("Masks and attributions")
ctx = components.require_context()
start = time.perf_counter()
data = ctx.trace()
order = [int(i) for i in np.argsort(-data.probs)]

# The class to explain belongs to this model and image: a new model or image starts from its own top-1, unless the
# user had picked another class by name and the new model has a class of that name.
target_key = f"target|{ctx.entry.key}|{ctx.image_hash}"
for stale in [k for k in st.session_state if str(k).startswith("target|") and k != target_key]:
    del st.session_state[stale]
if target_key not in st.session_state:
    pinned = st.session_state.get("target_pinned")
    st.session_state[target_key] = ctx.classes.index(pinned) if pinned in ctx.classes else order[0]


def _pin() -> None:
    chosen = st.session_state[target_key]
    st.session_state["target_pinned"] = None if chosen == order[0] else ctx.class_name(chosen)


c1, c2, c3, c4 = st.columns([2, 2, 1, 1])
target = c1.selectbox("Class to explain (top-1 first)", order, key=target_key, on_change=_pin,
                      format_func=lambda i: f"{ctx.class_name(i)} (p = {data.probs[i]:.3f})")
methods = c2.multiselect("Methods", attribution.METHODS, key="methods", format_func=attribution.METHOD_NAMES.get)
steps = c3.slider("IG steps", 4, 64, step=4, key="ig_steps")
alpha = c3.slider("Opacity", 0.0, 1.0, step=0.05, key="attr_alpha")
contrast = components.contrast_picker("attribution", c4)
st.markdown(f"Explaining class **{ctx.class_name(target)}** (index {target}, p = {data.probs[target]:.3f}) "
            f"at stage {ctx.stage}; the mask is stage {ctx.stage}, module {ctx.index}.")
predictions.show(ctx.entry, ctx.meta, data.probs)

input_size = tuple(state.model_input(ctx.image, ctx.meta).shape[-2:])
height, width = ctx.picture.shape[:2]
mask_input = None
if data.modules:
    mask_input = maps.upsample(maps.reduce_channels(data.module(ctx.stage, ctx.index)["mask"], "mean"), input_size)

panels: list[tuple[str, np.ndarray, str]] = []
if mask_input is not None:
    panels.append((f"Mask M, stage {ctx.stage} module {ctx.index} (channel mean)", mask_input, "mask"))
rows = []
exports: dict[str, np.ndarray] = {}
status = st.empty()
for number, method in enumerate(methods, start=1):
    name = attribution.METHOD_NAMES[method]
    bar = status.progress(0.0, text=f"{name} ({number} of {len(methods)}) for class {ctx.class_name(target)}…")

    def report(done: int, total: int, name: str = name, bar=bar) -> None:
        bar.progress(min(1.0, done / max(total, 1)), text=f"{name}: {done} of {total} steps done")

    def waiting(message: str, name: str = name) -> None:
        status.info(f"{name}: {message}.")

    amap, seconds = state.attribution_map(ctx.entry.key, ctx.image_hash, method, target, ctx.stage, steps,
                                          ctx.model, ctx.meta, ctx.image, progress=report, on_wait=waiting)
    panels.append((f"{name} ({seconds:.2f} s)", amap, method))
    exports[method] = amap
    if mask_input is not None:
        scores = attribution.agreement(mask_input, amap)
        rows.append({"method": name, "Spearman ρ (mask vs |A|)": scores["spearman"], "top-20% IoU": scores["top_iou"]})
status.empty()

PER_ROW = 3  # panels per row: at 1280 px five in a row left each map about 170 px wide, too small for a room
for first in range(0, len(panels), PER_ROW):
    for column, (title, amap, key) in zip(st.columns(PER_ROW), panels[first : first + PER_ROW]):
        with column:
            st.markdown(f"**{title}**")
            stats = maps.describe(amap)
            if not stats.ok:
                st.warning(f"{stats.problem}. Not drawn as a map.")
                continue
            quantity = ctx.mask_scale if key == "mask" else "attribution"
            drawn = maps.heat(amap, quantity, contrast, components.cmap("mask" if key == "mask" else "attribution"),
                              (height, width), over=ctx.picture, alpha=alpha)
            shown, scale, colours = drawn.picture, drawn.scale, drawn.cmap
            components.map_image(shown, scale, colours, caption=stats.summary())
            st.download_button("PNG", lambda shown=shown, scale=scale, colours=colours:
                               maps.to_png(maps.with_colorbar(shown, scale, colours)),
                               file_name=f"{key}_stage{ctx.stage}.png", mime="image/png", key=f"attr_png_{key}",
                               on_click="ignore", help="The map with its colorbar drawn into the picture")

if rows:
    st.subheader("Agreement between the mask and each attribution")
    st.dataframe(rows, hide_index=True)
faithful_panels.deletion_insertion_panel(ctx, target)
faithful_dataset.dataset_panel(ctx)
st.info(
    "**What agreement means.** Spearman ρ compares the *ranking* of all pixels; the IoU compares the 20% of pixels "
    "each map ranks highest. High agreement says the mask emphasises the places that matter for this class by that "
    "method. It does **not** validate either map: the mask is class-agnostic (it weighs features for every class), "
    "the attributions are explanations with their own failure modes, and on a RANDOM model any agreement reflects "
    "the architecture (e.g. the shared upsampling), not learning."
)
if exports:
    manifest = components.manifest(ctx, method=methods, target_class=ctx.class_name(target), target_index=target,
                                   target_probability=float(data.probs[target]), reduction="mean", ig_steps=steps)
    arrays = {f"attr_{k}": v for k, v in exports.items()}
    if mask_input is not None:
        arrays["mask_mean_upsampled"] = mask_input
    d1, d2 = st.columns(2)
    d1.download_button("All maps (.npz)", lambda: components.npz_bytes(arrays, manifest),
                       file_name="resattn_attribution.npz", mime="application/octet-stream", key="attr_npz",
                       on_click="ignore")
    d2.download_button("Manifest (.json)", json.dumps(manifest, indent=2, sort_keys=True),
                       file_name="resattn_attribution.json", mime="application/json", key="attr_json",
                       on_click="ignore")
st.caption(f"⏱ Page computed in {(time.perf_counter() - start) * 1000:.0f} ms (attributions are shared by every "
           "session: computed once per model, image, class, stage and method)")
