"""Compare: one image, one stage, every available model in a row, with the mask statistics the paper discusses."""

import time

import numpy as np
import streamlit as st

import components
import state
import resattn
from resattn import maps

st.title("Compare models")
ctx = components.require_context(banner=False)
start = time.perf_counter()
stage = ctx.stage
st.markdown(f"Image **{ctx.image_name}**, attention **stage {stage}** (statistics averaged over the stage's modules). "
            "Mean |H| is the mean absolute response of each stage's last module output, as in the paper's Fig. 4 "
            "(which shows it collapsing under NAL).")

rows, thumbs, failures = [], [], []
for entry in state.catalogue():
    try:
        model, meta = state.load_entry(entry)
    except resattn.CheckpointError as exc:
        failures.append(f"{entry.label}: {exc}")
        continue
    data = state.trace(entry.key, ctx.image_hash, model, meta, ctx.image)
    top = int(np.argmax(data.probs))
    classes = meta.get("classes") or []
    overrides = meta.get("overrides", {})
    row = {
        "model": entry.label,
        "weights": "RANDOM" if entry.random else entry.short_hash,
        "attention": overrides.get("attention", "mixed"),
        "learning": str(overrides.get("learning", "arl")).upper(),
        "top-1": classes[top] if top < len(classes) else f"class {top}",
        "p(top-1)": float(data.probs[top]),
    }
    modules = data.stage_modules(stage)
    if modules:
        stats = [maps.mask_statistics(m["mask"]) for m in modules]
        row["mean mask"] = float(np.mean([s["mean mask"] for s in stats]))
        row["fraction > 0.5"] = float(np.mean([s["fraction > 0.5"] for s in stats]))
        mask = maps.reduce_channels(modules[0]["mask"], "mean")
        scale = "channel_mask" if overrides.get("attention") == "channel" else "mask"
        low, high, _ = maps.value_range(maps.describe(mask), scale)
        thumb = maps.colorize(maps.upsample(mask, (96, 96)), low, high) if maps.describe(mask).ok else None
        thumbs.append((entry.label.split(" — ")[-1][:60], thumb))
    for s in (1, 2, 3):
        last = data.stage_modules(s)
        row[f"mean |H| stage {s}"] = maps.mean_abs_response(last[-1]["output"]) if last else float("nan")
    rows.append(row)

st.dataframe(rows, hide_index=True)
if thumbs:
    st.subheader(f"Stage {stage}, module 1: channel-mean mask per model")
    for first in range(0, len(thumbs), 6):
        for column, (label, thumb) in zip(st.columns(6), thumbs[first : first + 6]):
            with column:
                if thumb is None:
                    st.warning("constant / NaN mask")
                else:
                    st.image(thumb, caption=label)
for failure in failures:
    st.error(f"Not compared — {failure}")
st.caption(f"⏱ Compared {len(rows)} model(s) in {(time.perf_counter() - start) * 1000:.0f} ms")
