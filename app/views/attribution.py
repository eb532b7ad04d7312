"""Attribution: the chosen module's mask beside Grad-CAM, Guided Grad-CAM, Integrated Gradients and Occlusion."""

import json
import time

import numpy as np
import streamlit as st

import components
import state
from resattn import attribution, maps

st.title("Masks and attributions")
ctx = components.require_context()
start = time.perf_counter()
data = ctx.trace()
order = [int(i) for i in np.argsort(-data.probs)]
c1, c2, c3 = st.columns([2, 2, 1])
target = c1.selectbox("Class to explain (top-1 first)", order, key="target",
                      format_func=lambda i: f"{ctx.class_name(i)} (p = {data.probs[i]:.3f})")
methods = c2.multiselect("Methods", attribution.METHODS, default=["gradcam", "guided_gradcam"], key="methods",
                         format_func=attribution.METHOD_NAMES.get)
steps = c3.slider("IG steps", 4, 64, 16, 4, key="ig_steps")
alpha = c3.slider("Opacity", 0.0, 1.0, 0.5, 0.05, key="attr_alpha")

height, width = ctx.picture.shape[:2]
size = int(ctx.meta["input_size"]) if isinstance(ctx.meta["input_size"], int) else ctx.meta["input_size"][-1]
if data.modules:
    mask = maps.reduce_channels(data.module(ctx.stage, ctx.index)["mask"], "mean")
    mask_input = maps.upsample(mask, tuple(state.model_input(ctx.image, ctx.meta).shape[-2:]))
else:
    mask_input = None

panels: list[tuple[str, np.ndarray, str]] = []
if mask_input is not None:
    panels.append((f"Mask M, stage {ctx.stage} module {ctx.index} (channel mean)", mask_input, "mask"))
rows = []
exports: dict[str, np.ndarray] = {}
for method in methods:
    amap, seconds = state.attribution_map(ctx.entry.key, ctx.image_hash, method, target, ctx.stage, steps,
                                          ctx.model, ctx.meta, ctx.image)
    name = attribution.METHOD_NAMES[method]
    panels.append((f"{name} ({seconds:.2f} s)", amap, method))
    exports[method] = amap
    if mask_input is not None:
        scores = attribution.agreement(mask_input, amap)
        rows.append({"method": name, "Spearman ρ (mask vs |A|)": scores["spearman"],
                     "top-20% IoU": scores["top_iou"]})

for column, (title, amap, key) in zip(st.columns(max(1, len(panels))), panels):
    with column:
        st.markdown(f"**{title}**")
        stats = maps.describe(amap)
        if not stats.ok:
            st.warning(f"{stats.problem}. Not drawn as a map.")
            continue
        low, high, diverging = maps.value_range(stats, ctx.mask_scale if key == "mask" else "auto")
        up = maps.upsample(amap, (height, width))
        heat = maps.colorize(up, low, high, "RdBu_r" if diverging else "jet")
        picture = maps.overlay(ctx.picture, heat, alpha)
        st.image(picture)
        st.caption(stats.summary())
        st.download_button("PNG", maps.to_png(picture), file_name=f"{key}_stage{ctx.stage}.png", mime="image/png",
                           key=f"attr_png_{key}", on_click="ignore")

if rows:
    st.subheader("Agreement between the mask and each attribution")
    st.dataframe(rows, hide_index=True)
st.info(
    "**What agreement means.** Spearman ρ compares the *ranking* of all pixels; the IoU compares the 20% of pixels "
    "each map ranks highest. High agreement says the mask emphasises the places that matter for this class by that "
    "method. It does **not** validate either map: the mask is class-agnostic (it weighs features for every class), "
    "the attributions are explanations with their own failure modes, and on a RANDOM model any agreement reflects "
    "the architecture (e.g. the shared upsampling), not learning."
)
if exports:
    manifest = components.manifest(ctx, method=methods, target_class=ctx.class_name(target), target_index=target,
                                   reduction="mean", ig_steps=steps)
    arrays = {f"attr_{k}": v for k, v in exports.items()}
    if mask_input is not None:
        arrays["mask_mean_upsampled"] = mask_input
    st.download_button("All maps (.npz)", components.npz_bytes(arrays, manifest), file_name="resattn_attribution.npz",
                       mime="application/octet-stream", key="attr_npz", on_click="ignore")
    st.download_button("Manifest (.json)", json.dumps(manifest, indent=2, sort_keys=True),
                       file_name="resattn_attribution.json", mime="application/json", key="attr_json",
                       on_click="ignore")
st.caption(f"⏱ Page computed in {(time.perf_counter() - start) * 1000:.0f} ms (attributions are cached per image, "
           "class, stage and method)")
