"""Explore: top-5 predictions and, for the chosen module, the soft mask M, trunk T and output H."""

import json
import time

import numpy as np
import streamlit as st

import components
from resattn import maps

st.title("Explore the soft masks")
ctx = components.require_context()
start = time.perf_counter()
data = ctx.trace()

left, right = st.columns([1, 2])
with left:
    st.image(ctx.picture, caption=f"{ctx.image_name} — the model's view ({ctx.meta['input_size']} px input)")
with right:
    st.subheader("Top-5 predictions")
    top = np.argsort(-data.probs)[:5]
    st.dataframe(
        {"class": [ctx.class_name(int(i)) for i in top], "probability": [float(data.probs[i]) for i in top]},
        column_config={"probability": st.column_config.ProgressColumn(format="%.3f", min_value=0.0, max_value=1.0)},
        hide_index=True,
    )

if not data.modules:
    st.info("This model has no attention modules (a plain ResNet baseline): there are no masks to show.")
    st.stop()

record = data.module(ctx.stage, ctx.index)
channels = record["mask"].shape[0]
st.subheader(f"Stage {ctx.stage}, module {ctx.index} — M, T and H = "
             + ("(1 + M)·T (ARL)" if ctx.meta.get("overrides", {}).get("learning", "arl") == "arl" else "M·T (NAL)"))
st.caption(f"`{record['name']}` · {channels} channels at {record['mask'].shape[1]}×{record['mask'].shape[2]}, "
           "upsampled bilinearly to the picture.")

c1, c2, c3, c4 = st.columns(4)
reduction = c1.radio("Reduce channels by", maps.REDUCTIONS, key="reduction",
                     format_func={"mean": "mean", "max": "max", "channel": "one channel",
                                  "topk": "top-k by mask energy"}.get)
channel = c2.slider("Channel", 0, channels - 1, 0, key="channel", disabled=reduction != "channel")
k = c2.slider("k (top-k)", 1, min(16, channels), min(8, channels), key="topk", disabled=reduction != "topk")
cmap = c3.selectbox("Colormap", ["viridis", "magma", "inferno", "jet", "gray", "RdBu_r"], key="cmap")
alpha = c3.slider("Overlay opacity", 0.0, 1.0, 0.5, 0.05, key="alpha")
show_overlay = c4.toggle("Overlay on image", True, key="overlay")

views = maps.module_views(record["mask"], record["trunk"], record["output"], ctx.picture, how=reduction,
                          channel=channel, k=k, mask_scale=ctx.mask_scale, cmap=cmap, alpha=alpha)
what = {"mean": "channel mean", "max": "channel max", "channel": f"channel {channel}",
        "topk": f"mean of top-{k} channels"}[reduction]
for column, (key, view) in zip(st.columns(3), views.items()):
    with column:
        st.markdown(f"**{view.name}** — {what}")
        if view.stats.ok:
            st.image(view.overlay if show_overlay else view.heat)
            st.caption(view.stats.summary() + f" · colour scale [{view.low:.3g}, {view.high:.3g}]"
                       + (" (diverging, 0 at centre)" if view.diverging else ""))
        else:
            st.warning(f"{view.name}: {view.stats.problem}. Not drawn as a map.")
        if view.grid is not None:
            st.image(view.grid, caption=f"top-{k} channels by mask energy: {view.channels}")
        st.download_button("PNG", maps.to_png(view.overlay if show_overlay else view.heat),
                           file_name=f"{key}_stage{ctx.stage}_module{ctx.index}_{reduction}.png",
                           mime="image/png", key=f"png_{key}", on_click="ignore")

st.subheader("Export this view")
manifest = components.manifest(ctx, reduction=reduction, channel=channel if reduction == "channel" else None,
                               topk=views["M"].channels or None, method="soft mask",
                               predicted_class=ctx.class_name(int(top[0])), predicted_index=int(top[0]))
arrays = {"image": ctx.picture, "probs": data.probs}
for key, view in views.items():
    raw = {"M": "mask", "T": "trunk", "H": "output"}[key]
    arrays[f"{key}_raw"] = record[raw]
    arrays[f"{key}_reduced"] = view.reduced
    arrays[f"{key}_upsampled"] = view.upsampled
e1, e2 = st.columns(2)
e1.download_button("Raw maps (.npz)", components.npz_bytes(arrays, manifest),
                   file_name=f"resattn_stage{ctx.stage}_module{ctx.index}.npz", mime="application/octet-stream",
                   key="export_npz", on_click="ignore")
e2.download_button("Manifest (.json)", json.dumps(manifest, indent=2, sort_keys=True),
                   file_name=f"resattn_stage{ctx.stage}_module{ctx.index}.json", mime="application/json",
                   key="export_json", on_click="ignore")
st.caption(f"⏱ Model pass {data.seconds * 1000:.0f} ms (cached per image) · page computed in "
           f"{(time.perf_counter() - start) * 1000:.0f} ms")
