"""Compare: one image, one stage, every available model side by side, with the mask statistics the paper discusses,
each model's mask parts (mixed / channel / spatial, ARL / NAL on the same photo), the checkpoints' accuracies
against the paper's Tables 1, 3 and 4, and the quantity of its Fig. 4 (the mean absolute output of each stage)."""

import time

import numpy as np
import plotly.graph_objects as go
import streamlit as st

import resattn
from resattn import maps, paper

from ui import components, parts_panels, predictions, state

CONTRASTS = {"shared_fixed": "one fixed scale for the row", "shared_stretch": "one stretched scale for the row",
             "per_model": "stretched per model"}

def _budget(entry: state.ModelEntry, meta: dict) -> str:
    """What a model's training amounted to (epochs, final-epoch test accuracy): comparisons between models mean
    something only at one budget, so the table says each model's."""
    if entry.random:
        return "untrained"
    epochs = meta.get("epochs")
    top1 = (meta.get("metrics") or {}).get("test_top1")
    parts = [f"{epochs:g} ep." if isinstance(epochs, (int, float)) else "",
             f"{top1:.1%} test" if isinstance(top1, (int, float)) else ""]
    return ", ".join(p for p in parts if p) or "—"


st.title("Compare models")
ctx = components.require_context(banner=False)
start = time.perf_counter()
stage = ctx.stage
entries = state.catalogue(include_random=st.session_state.get("show_random", False))
st.markdown(f"Image **{ctx.image_name}**, attention **stage {stage}** (mask statistics averaged over the stage's "
            f"modules). {len(entries)} model(s)"
            + ("" if st.session_state.get("show_random") else "; untrained (random) models are hidden (sidebar switch)")
            + ".")

rows, fig4, thumbs, failures, masks = [], [], [], [], []
known: dict[str, list[str]] = {}  # each model's class list -> the models that can name exactly those
unsure: list[str] = []  # models whose top-1 probability is below their measured threshold
progress = st.progress(0.0, text="Comparing models…")
for number, entry in enumerate(entries, start=1):
    progress.progress((number - 1) / max(len(entries), 1), text=f"Model {number} of {len(entries)}: "
                      f"{state.short_label(entry)} (loading and one forward pass)")
    try:
        model, meta = state.load_entry(entry)
    except resattn.CheckpointError as exc:
        failures.append(f"{entry.label}: {exc}")
        continue
    data = state.trace(entry.key, ctx.image_hash, model, meta, ctx.image)
    top = int(np.argmax(data.probs))
    classes = meta.get("classes") or []
    overrides = meta.get("overrides", {})
    name = state.short_label(entry)
    row = {
        "model": name,
        "attention": (f"{overrides.get('attention', 'mixed')} {str(overrides.get('learning', 'arl')).upper()}"
                      if data.modules else "none"),
        "trained": _budget(entry, meta),
        "top-1": classes[top] if top < len(classes) else f"class {top}",
        "p(top-1)": float(data.probs[top]),
    }
    modules = data.stage_modules(stage)
    if modules:
        stats = [maps.mask_statistics(m["mask"]) for m in modules]
        row["mean mask"] = float(np.mean([s["mean mask"] for s in stats]))
        row["fraction > 0.5"] = float(np.mean([s["fraction > 0.5"] for s in stats]))
        scale = "channel_mask" if overrides.get("attention") == "channel" else "mask"
        thumbs.append((name, maps.reduce_channels(modules[0]["mask"], "mean"), scale))
        masks.append((entry, meta, name, modules[0]["mask"]))
    rows.append(row)
    known.setdefault(predictions.classes_line(meta), []).append(name)
    if predictions.unsure_text(entry, data.probs):
        unsure.append(f"{name} (p = {float(data.probs[top]):.2f}, below {predictions.calibration(entry).threshold:.2f})")
    fig4.append({"model": name, **{f"stage {s}": v for s, v in enumerate(data.stage_response, start=1)}})
progress.empty()

st.dataframe(rows, hide_index=True, column_config={
    "attention": st.column_config.TextColumn(help="Attention type (mixed, channel, spatial) and learning rule "
                                                  "(ARL: H = (1 + M)·T, NAL: H = M·T)"),
    "trained": st.column_config.TextColumn(help="Epochs and final-epoch accuracy on the model's own test split, from "
                                                "the checkpoint; differences between models trained on different "
                                                "budgets are not differences between their architectures"),
    "p(top-1)": st.column_config.NumberColumn(format="%.3f"),
    "mean mask": st.column_config.NumberColumn(
        format="%.3f", help="Mean of M over every channel and position of the stage's modules"),
    "fraction > 0.5": st.column_config.NumberColumn(
        format="%.3f", help="Share of M's entries (every channel and position) above 0.5; the channel-mean maps "
                            "below average channels first, so few of their positions may exceed 0.5")})

if unsure:
    st.warning("This image may show none of the classes these models know: their top prediction is unsure: "
               + "; ".join(unsure) + ". (At most 5% of each model's own test images get a top-1 probability that "
               "low.)", icon=":material/help:")
for line, names in known.items():
    st.caption(f"{', '.join(names)}: {line[0].lower()}{line[1:]}".replace("this model", "these models" if len(names) > 1
                                                                           else "this model"))

if thumbs:
    st.subheader(f"Stage {stage}, module 1: channel-mean mask per model")
    contrast = st.radio("Colour scale", list(CONTRASTS), key="contrast_compare", horizontal=True,
                        format_func=CONTRASTS.get)
    colours = components.cmap("mask")
    values = np.concatenate([t.ravel() for _, t, _ in thumbs])
    quantity = "channel_mask" if any(q == "channel_mask" for _, _, q in thumbs) else "mask"
    shared = None if contrast == "per_model" else maps.scale_for(
        values, quantity, "fixed" if contrast == "shared_fixed" else "stretch")
    side = 120
    for first in range(0, len(thumbs), 6):
        for column, (label, mask, q) in zip(st.columns(6), thumbs[first : first + 6]):
            with column:
                if not maps.describe(mask).ok:
                    st.warning(f"{label}: constant / NaN mask")
                    continue
                scale = shared or maps.scale_for(mask, q, "stretch")
                heat = maps.colorize(maps.upsample(mask, (side, side)), scale.low, scale.high, colours)
                st.image(heat if shared else maps.with_colorbar(heat, scale, colours), caption=label)
    if shared is not None:
        st.image(maps.colorbar(shared, colours, 6 * side), caption=f"One scale for every thumbnail: {shared.description}")
    else:
        st.caption("Each thumbnail is stretched to its own 1st–99th percentile (its own colorbar): compare shapes, "
                   "not values.")

if masks:
    st.subheader(f"Stage {stage}, module 1: each model's mask parts")
    if st.toggle("Factorise each model's mask into parts", key="compare_parts",
                 help="The fewest parts (2–8) that explain 75% of each mask's spatial variation; the Explore page's "
                      "parts view says how they are computed."):
        for entry, meta, name, mask in masks:
            attention = meta.get("overrides", {}).get("attention")
            found = parts_panels.parts_of(entry.key, ctx.image_hash, stage, 1, None, attention, mask)
            picture = components.picture_of(ctx.image, meta)
            summary = ("no spatial variation, no parts" if found.flat else
                       f"{found.k} parts explain {found.explained:.0%}"
                       + (", factorised as (1 + M) / 2" if found.transform != "none" else ""))
            st.markdown(f"**{name}** ({attention or 'mixed'} {str(meta.get('overrides', {}).get('learning', 'arl')).upper()})"
                        f": {summary}")
            if not found.flat:
                for column, j in zip(st.columns(4), range(min(4, found.k))):
                    column.image(parts_panels.part_png(found, j, picture, side=220),
                                 caption=f"part {j + 1}: {found.energy[j]:.0%} of the energy")
        st.caption("Each part over the image the model saw, scaled to its own maximum (colorbar 0–1); parts describe "
                   "where each mask varies, not what the model uses to classify.")

st.subheader("The paper's Tables 1, 3 and 4 with these checkpoints")
trained = {state.short_label(e): e.meta for e in entries if not e.random and not e.error}
summary = paper.summary_rows(trained)
if summary:
    st.dataframe(summary, hide_index=True, column_config={
        "epochs": st.column_config.NumberColumn(format="%g"),
        "test error (%)": st.column_config.NumberColumn(
            format="%.2f", help="Final-epoch top-1 error on the model's test split, from the checkpoint"),
        "paper error (%)": st.column_config.NumberColumn(
            format="%.2f", help="The paper's CIFAR-10 top-1 error for this variant, from the table named beside it")})
pairs = paper.contrasts(trained)
if pairs:
    # one line per pair (wraps at any width, unlike a wide table); gaps in points of error, positive when the
    # paper's better variant (named first) is better here too
    st.markdown("\n".join(
        f"- **{r.contrast.table}: {r.contrast.question}**: `{r.a}` vs `{r.b}`; error gap in the paper "
        f"{r.contrast.paper_gap():.2f} points, here {r.gap:.2f}: **{r.verdict()}**" for r in pairs))
    st.caption("Each line names the paper's better variant first; a gap is the other's error minus its error "
               "(positive: the paper's order). "
               "Two checkpoints are comparable only when everything but the variant matches: data, recipe, epochs, "
               "architecture revision. Test-set noise is two standard errors of the gap, √(p₁(1−p₁)/n + "
               "p₂(1−p₂)/n), over n test images, counted as independent (both models see the same images; where "
               "their mistakes fall on the same images, as they usually do, the true figure is smaller). "
               "Seed-to-seed spread is not in it: with one seed per variant a gap beyond "
               "it is a hint, not evidence about the architectures. The paper's Attention-56 gaps are 0.37–0.96 "
               "points.")
else:
    st.info("No two trained CIFAR-10 checkpoints here differ the way one of the paper's comparisons does "
            "(mixed / channel / spatial attention, ARL / NAL, hourglass / local mask).")

st.subheader("The paper's Fig. 4: mean absolute output of each stage")
st.markdown("The mean of |x| over the output of each stage (after its last unit), for every model including the "
            "ResNet baseline. Fig. 4 plots this for Attention-164 under ARL and NAL and ResNet-164, where the "
            "response collapses under NAL after the stage-2 modules. On one image of a small model it is an "
            "illustration, not a measurement.")
if fig4:
    figure = go.Figure()
    for entry in fig4:
        stages = [k for k in entry if k.startswith("stage")]
        figure.add_trace(go.Scatter(x=stages, y=[entry[k] for k in stages], mode="lines+markers", name=entry["model"]))
    figure.update_layout(height=320, margin=dict(l=10, r=10, t=10, b=10), yaxis_title="mean |stage output|",
                         legend=dict(orientation="h"))
    st.plotly_chart(figure, width="stretch")
    st.dataframe(fig4, hide_index=True, column_config={
        f"stage {s}": st.column_config.NumberColumn(format="%.3f") for s in (1, 2, 3)})
for failure in failures:
    st.error(f"Not compared — {failure}")
st.caption(f"⏱ Compared {len(rows)} model(s) in {(time.perf_counter() - start) * 1000:.0f} ms")
