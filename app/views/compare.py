"""Compare: one image, one stage, every available model side by side, with the mask statistics the paper discusses,
each model's mask over the picture it saw and its mask parts (mixed / channel / spatial, ARL / NAL on the same
photo), the checkpoints' accuracies against the paper's tables that have a checkpoint here (Tables 1, 3 and 4 at
most), and the quantity of its Fig. 4 (the mean absolute output of each stage)."""

import html
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
import streamlit as st

import resattn
from resattn import maps, paper
from resattn.attention import fixed_by_activation

from ui import components, parts_panels, predictions, state

CONTRASTS = {"shared_fixed": "one fixed scale per kind of mask",
             "shared_stretch": "one stretched scale per kind of mask", "per_model": "stretched per model"}
#: The kinds of mask, sigmoid first, with their natural ranges: kinds of different ranges never share a colour scale.
KINDS: dict[maps.Quantity, tuple[str, str]] = {
    "mask": ("sigmoid-mask", "Sigmoid masks (mixed and spatial attention), natural range 0 to 1"),
    "channel_mask": ("channel-attention", ("Channel-attention masks (each position's channels L2-normalised), "
                                           "natural range −1 to 1"))}
PER_ROW = 3  # thumbnails per row: about 260 px each at 1280 px, large enough to read from the back of a room


@dataclass(frozen=True)
class Thumb:
    """One model's channel-mean mask, with the picture that model saw (its own crop and size)."""

    name: str
    words: str  # attention type and learning rule, e.g. "mixed ARL"
    mask: np.ndarray  # H×W: the channel mean of the mask of the stage's first module
    quantity: maps.Quantity  # "mask" (sigmoid) or "channel_mask"
    picture: np.ndarray  # H×W×3 uint8, components.picture_of


def scale_groups(thumbs: Sequence[Thumb], contrast: str) -> list[tuple[maps.Quantity, list[Thumb], maps.Scale | None]]:
    """The thumbnails grouped by quantity (sigmoid masks first), each group with the one scale its masks share,
    or ``None`` when each is stretched on its own (contrast ``per_model``). Masks of different natural ranges
    (sigmoid 0–1, channel attention −1–1) are never put on one scale: a scale pooled over both is centred on 0
    and flattens every sigmoid mask into one colour."""
    groups: list[tuple[maps.Quantity, list[Thumb], maps.Scale | None]] = []
    for quantity in KINDS:
        members = [t for t in thumbs if t.quantity == quantity]
        if not members:
            continue
        shared = None if contrast == "per_model" else maps.scale_for(
            np.concatenate([t.mask.ravel() for t in members]), quantity,
            "fixed" if contrast == "shared_fixed" else "stretch")
        groups.append((quantity, members, shared))
    return groups


def _label_html(thumb: Thumb) -> str:
    """The model's name on its own line (breaking only after an underscore, never mid-word), then its kind."""
    name = "_<wbr>".join(html.escape(part) for part in thumb.name.split("_"))
    return (f'<div class="ra-thumb" style="font-size:15px;line-height:1.3;color:#262730;overflow-wrap:normal;'
            f'word-break:normal"><b>{name}</b><br>{html.escape(thumb.words)}</div>')


def _thumbnail(thumb: Thumb, shared: maps.Scale | None, alpha: float) -> None:
    """One mask over its model's picture; with its own colorbar when it has its own scale."""
    stats = maps.describe(thumb.mask)
    if not stats.ok:
        st.warning(f"{thumb.name}: {stats.problem}; not drawn as a map")
    else:
        drawn = maps.heat(thumb.mask, thumb.quantity, "stretch", components.cmap("mask"), thumb.picture.shape[:2],
                          scale=shared, over=thumb.picture, alpha=alpha)
        st.image(maps.to_png(drawn.picture), output_format="PNG")  # PNG: no JPEG blur
        if shared is None:
            components.colorbar(drawn.scale, drawn.cmap)
    st.markdown(_label_html(thumb), unsafe_allow_html=True)


def fig4_words(baselines: Sequence[str]) -> str:
    """What the Fig. 4 plot shows: a ResNet baseline is named only when one is among the models compared."""
    shown = (f"for every model compared here, including the ResNet baseline {', '.join(f'`{b}`' for b in baselines)}"
             if baselines else "for every model compared here")
    return (f"The mean of |x| over the output of each stage (after its last unit), {shown}. The paper's Fig. 4 "
            "plots it for Attention-164 under ARL and NAL and for ResNet-164: the response collapses under NAL "
            "after the stage-2 modules. On one image of a small model it is an illustration, not a measurement.")


def draw_thumbnails(thumbs: Sequence[Thumb], contrast: str, alpha: float) -> None:
    """The thumbnails, :data:`PER_ROW` to a row, a group per kind of mask with its scale and colorbar."""
    groups = scale_groups(thumbs, contrast)
    if len(groups) > 1:
        st.markdown("Sigmoid masks and channel-attention masks have different natural ranges (0 to 1 and −1 to 1), "
                    "so they **never share a colour scale**: each kind has its own scale and colorbar. Compare "
                    "colours within a kind, not across kinds.")
    for quantity, members, shared in groups:
        if len(groups) > 1:
            st.markdown(f"**{KINDS[quantity][1]}**")
        for first in range(0, len(members), PER_ROW):
            for column, thumb in zip(st.columns(PER_ROW), members[first : first + PER_ROW]):
                with column:
                    _thumbnail(thumb, shared, alpha)
        if shared is not None:
            names = ", ".join(t.name for t in members)
            components.colorbar(shared, maps.cmap_for(shared, components.cmap("mask"), quantity),
                                note=f"one scale for the {KINDS[quantity][0]} thumbnails ({names}): "
                                     f"{shared.description}", under_picture=False)
    if contrast == "per_model":
        st.caption("Each thumbnail is stretched to its own 1st–99th percentile (its own colorbar): compare shapes, "
                   "not values.")


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


def trained_on(entry: state.ModelEntry) -> str:
    """The data a model was trained on, as the page's filter names it: models of one dataset are a family the
    paper's comparisons can be made in (CIFAR-10's 32 px set, Imagenette's photo models)."""
    if entry.random:
        return "untrained (random)"
    dataset = str(entry.meta.get("dataset") or "")
    for prefix, words in (("cifar10", "CIFAR-10"), ("imagenette", "Imagenette photos")):
        if dataset.lower().startswith(prefix):
            return words
    return dataset or "unknown data"


st.title("Compare models")
ctx = components.require_context(banner=False)
start = time.perf_counter()
stage = ctx.stage
catalogue = state.catalogue(include_random=st.session_state.get("show_random", False))
groups = Counter(trained_on(e) for e in catalogue if not e.error)
if st.session_state.get("compare_data") not in ("all", *groups):
    st.session_state.pop("compare_data", None)  # that family is gone (a file removed, random models hidden)
chosen = st.radio("Models trained on", ["all", *groups], horizontal=True, key="compare_data",
                  format_func=lambda g: f"all ({sum(groups.values())})" if g == "all" else f"{g} ({groups[g]})",
                  help="Compare one family at a time: the photo models on a photo, the CIFAR-10 set on its 32-pixel "
                       "view of the image. Unreadable files are always listed.")
entries = [e for e in catalogue if e.error or chosen == "all" or trained_on(e) == chosen]
st.markdown(f"Image **{ctx.image_name}**, attention **stage {stage}** (mask statistics averaged over the stage's "
            f"modules). {len(entries)} of {len(catalogue)} model(s)"
            + ("" if st.session_state.get("show_random") else "; untrained (random) models are hidden (sidebar switch)")
            + ".")

rows, fig4, failures, masks = [], [], [], []
thumbs: list[Thumb] = []
baselines: list[str] = []  # models without attention modules (the ResNet baseline of the paper's Fig. 4)
known: dict[str, list[str]] = {}  # each model's class list -> the models that can name exactly those
unsure: list[str] = []  # models whose top-1 probability is below their measured threshold
kinds: set[str] = set()  # the attention types of the models with attention modules
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
    words = f"{overrides.get('attention', 'mixed')} {str(overrides.get('learning', 'arl')).upper()}"
    row = {
        "model": name,
        "attention": words if data.modules else "none",
        "trained": _budget(entry, meta),
        "top-1": classes[top] if top < len(classes) else f"class {top}",
        "p(top-1)": float(data.probs[top]),
    }
    modules = data.stage_modules(stage)
    if modules:
        stats = [maps.mask_statistics(m["mask"]) for m in modules]
        row["mean mask"] = float(np.mean([s["mean mask"] for s in stats]))
        row["fraction > 0.5"] = float(np.mean([s["fraction > 0.5"] for s in stats]))
        quantity = "channel_mask" if overrides.get("attention") == "channel" else "mask"
        thumbs.append(Thumb(name, words, maps.reduce_channels(modules[0]["mask"], "mean"), quantity,
                            components.picture_of(ctx.image, meta)))
        masks.append((entry, meta, name, modules[0]["mask"]))
        kinds.add(overrides.get("attention", "mixed"))
    if not data.modules:
        baselines.append(name)
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

fixed = fixed_by_activation(kinds)
if fixed:
    st.caption("What the activation alone fixes, whatever the model learned: " + " ".join(fixed) + " Compare these "
               "models by where their masks vary (the maps below), not by the mean mask and fraction > 0.5 columns.")
if unsure:
    st.warning("This image may show none of the classes these models know: their top prediction is unsure: "
               + "; ".join(unsure) + ". (At most 5% of each model's own test images get a top-1 probability that "
               "low.)", icon=":material/help:")
for line, names in known.items():
    st.caption(f"{', '.join(names)}: {line[0].lower()}{line[1:]}".replace("this model", "these models" if len(names) > 1
                                                                           else "this model"))

if thumbs:
    st.subheader(f"Stage {stage}, module 1: channel-mean mask per model")
    alpha = float(st.session_state.get("alpha", components.DEFAULTS["alpha"]))
    st.markdown(f"Each model's mask over the picture it saw (its own crop and size), at the Explore page's map "
                f"opacity ({alpha:.0%}).")
    contrast = st.radio("Colour scale", list(CONTRASTS), key="contrast_compare", horizontal=True,
                        format_func=CONTRASTS.get)
    draw_thumbnails(thumbs, contrast, alpha)

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
                parts_panels.part_colorbar(under_picture=False)  # one scale for every part of the row
        st.caption("Each part over the image the model saw, scaled to its own maximum (the colorbar under each row); "
                   "parts describe where each mask varies, not what the model uses to classify.")

trained = {state.short_label(e): e.meta for e in entries if not e.random and not e.error}
summary = paper.summary_rows(trained)
pairs = paper.contrasts(trained, {state.short_label(e): found for e in entries if not e.random and not e.error
                                  and (found := predictions.outcomes(e)) is not None})
# the heading names exactly the tables that have a row or a comparison below it
tables = paper.tables_words([r["paper table"] for r in summary]
                            + [r.contrast.table for r in pairs if r.contrast.paper_gap() is not None])
st.subheader(f"The paper's {tables} with these checkpoints" if tables else "The paper's CIFAR-10 tables")
if not summary:
    st.info("No checkpoint here is a variant the paper reports a CIFAR-10 figure for (full width, trained from "
            "scratch on CIFAR-10), so none stands beside the paper's tables.")
else:
    st.dataframe(summary, hide_index=True, column_config={
        "epochs": st.column_config.NumberColumn(format="%g"),
        "test error (%)": st.column_config.NumberColumn(
            format="%.2f", help="Final-epoch top-1 error on the model's test split, from the checkpoint"),
        "paper error (%)": st.column_config.NumberColumn(
            format="%.2f", help="The paper's CIFAR-10 top-1 error for this variant, from the table named beside it")})
if pairs:
    # one line per pair (wraps at any width, unlike a wide table); gaps in points of error, positive when the
    # paper's better variant (named first) is better here too
    st.markdown("\n".join(
        f"- **{r.contrast.table}: {r.contrast.question}"
        f"{' (photos)' if r.contrast.paper_gap() is None else ''}**: `{r.a}` vs `{r.b}`; {r.contrast.words()}"
        + (f", here {r.gap:.2f} points" if r.contrast.paper_gap() is not None else
           f"; error gap here {r.gap:.2f} points") + f": **{r.verdict()}**" for r in pairs))
    st.caption("Each line names the paper's better variant first; a gap is the other's error minus its error "
               "(positive: the paper's order). "
               "Two checkpoints are comparable only when everything but the variant matches: data, recipe, epochs, "
               "architecture revision. Where both files' per-image test results are recorded (the shipped "
               "checkpoints: `checkpoints/confidence.json`, measured on the shipped files), the verdict is McNemar's "
               f"exact test on the images only one of the two gets right (beyond noise at p < "
               f"{paper.SIGNIFICANCE}): the images are the same, so this resolves smaller gaps. Otherwise test-set "
               "noise is two standard errors of the gap, √(p₁(1−p₁)/n + p₂(1−p₂)/n), over n test images, counted "
               "as independent (where the two models' mistakes fall on the same images, as they usually do, the "
               "true figure is smaller). "
               "Seed-to-seed spread is not in it: with one seed per variant a gap beyond "
               "it is a hint, not evidence about the architectures. The paper's Attention-56 gaps are "
               f"{min(paper.paper_gaps('attention56_cifar')):.2f}–{max(paper.paper_gaps('attention56_cifar')):.2f} "
               "points. Accuracies and gaps here are the checkpoints' recorded final-epoch figures, the ones the "
               "README states.")
else:
    st.info("No two trained CIFAR-10 checkpoints, nor two photo models, here differ the way one of the paper's "
            "comparisons does (mixed / channel / spatial attention, ARL / NAL, hourglass / local mask).")

st.subheader("The paper's Fig. 4: mean absolute output of each stage")
st.markdown(fig4_words(baselines))
if fig4:
    figure = go.Figure()
    for entry in fig4:
        stages = [k for k in entry if k.startswith("stage")]
        figure.add_trace(go.Scatter(x=stages, y=[entry[k] for k in stages], mode="lines+markers", name=entry["model"]))
    figure.update_layout(height=340, margin=dict(l=10, r=10, t=10, b=10), yaxis_title="mean |stage output|",
                         legend=dict(orientation="h"), font=dict(size=14))
    st.plotly_chart(figure, width="stretch")
    st.dataframe(fig4, hide_index=True, column_config={
        f"stage {s}": st.column_config.NumberColumn(format="%.3f") for s in (1, 2, 3)})
for failure in failures:
    st.error(f"Not compared — {failure}")
st.caption(f"⏱ Compared {len(rows)} model(s) in {(time.perf_counter() - start) * 1000:.0f} ms")
