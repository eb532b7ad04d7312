"""Is a map faithful to the model? Two on-demand panels over :mod:`resattn.faithfulness`, for the existing pages:

* :func:`deletion_insertion_panel` (Attribution page): deletion and insertion curves (Petsiuk et al., BMVC 2018)
  of the soft mask, Grad-CAM and Integrated Gradients beside their controls (another image's mask, the inverted
  mask, a random map as smooth as the mask, pixel noise, a centre prior) for the current image and class, with
  their AUCs; the same over many images of a dataset, with paired tests, is in :mod:`faithful_dataset`;
* :func:`sanity_panel` (Learn page): the cascading randomisation sanity check (Adebayo et al., NeurIPS 2018), as a
  plot of Spearman ρ and SSIM per step and as the maps themselves.

Both cost seconds, so each runs behind a toggle, with a progress bar. Results are shared by every session of the
server through ``state.SharedResults`` (in ``st.cache_resource``), keyed by model key, image hash, target class,
stage, module and settings: ``st.cache_data`` cannot carry the progress callbacks, and a session that asks for a
result another session is computing waits for it instead of computing it twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import plotly.graph_objects as go
import streamlit as st
import torch
from plotly.subplots import make_subplots
from torch import nn

from resattn import faithfulness as F
from resattn import maps

from . import components, state

Progress = Callable[[int, int, str], None]
#: One colour per map, the same in every plot.
COLOURS = {"mask": "#1f77b4", "gradcam": "#d62728", "guided_gradcam": "#ff7f0e", "integrated_gradients": "#2ca02c",
           "random": "#7f7f7f", "centre": "#9467bd", "occlusion": "#8c564b", "other": "#17becf",
           "inverted": "#bcbd22", "smooth_random": "#e377c2"}
SIDE = 200  # the sanity check's map thumbnails
PER_ROW = 4  # sanity-check thumbnails per row: wide enough for each one's colorbar numbers
SHORT = {"mask": "mask M", "gradcam": "Grad-CAM", "guided_gradcam": "Guided Grad-CAM", "integrated_gradients": "IG"}


@st.cache_resource(show_spinner=False)
def results() -> state.SharedResults:
    """One per server process: deletion/insertion curves and sanity checks by (model, image, class, settings)."""
    return state.SharedResults(max_entries=24)


def _none(done: int, total: int, text: str) -> None:  # noqa: ARG001 - default progress
    return None


def map_names(ctx: components.Context, names: Sequence[str]) -> list[str]:
    """``names`` without the soft mask when the model has no attention modules (the ResNet baseline)."""
    return [n for n in names if n != "mask" or sum(ctx.module_counts) > 0]


def reference_map(ctx: components.Context) -> str:
    """The map the controls are made from: the mask, or Grad-CAM for a model without attention modules."""
    return "mask" if sum(ctx.module_counts) > 0 else "gradcam"


def ig_steps_setting() -> int:
    """The Attribution page's IG steps (16 before the page sets them)."""
    return int(st.session_state.get("ig_steps", 16))


def run_shared(key: tuple, compute: Callable[[Progress], Any], label: str) -> Any:
    """Compute (or fetch) a shared result with a progress bar that is removed afterwards."""
    status = st.empty()
    bar = status.progress(0.0, text=label)

    def progress(done: int, total: int, text: str) -> None:
        bar.progress(min(1.0, done / max(total, 1)), text=f"{label} {text} ({done} of {total} done)")

    def waiting(message: str) -> None:
        status.info(f"{label} {message}.")

    try:
        return results().get(key, lambda: compute(progress), waiting)
    finally:
        status.empty()


# ------------------------------------------------------------------------------------ deletion / insertion


@dataclass
class DeletionResult:
    """Deletion and insertion curves of several maps on one image, for one class."""

    names: list[str]
    maps: dict[str, np.ndarray]  # at the model input's resolution
    fractions: np.ndarray
    deletion: dict[str, np.ndarray]  # probabilities of the target class per step
    insertion: dict[str, np.ndarray]
    auc: dict[str, dict[str, float]]  # name → {"deletion", "insertion"}
    input_size: tuple[int, int]
    steps: int
    blur_sigma: float
    seconds: float


def deletion_curves(model: nn.Module, x: torch.Tensor, target: int, stage: int, index: int, names: Sequence[str],
                    ig_steps: int = 16, steps: int = F.DEFAULT_STEPS, progress: Progress = _none, *,
                    reference: str = "mask", other: torch.Tensor | None = None) -> DeletionResult:
    """:func:`resattn.faithfulness.saliency_maps`, then :func:`resattn.faithfulness.faithfulness_curves` with the
    library's defaults one map at a time (the same curves: each perturbed image is scored on its own), with progress
    before each map is computed and before it is scored."""
    start = time.perf_counter()
    total = 2 * len(names)  # each map computed, then scored (its perturbed images run through the model)

    def maps_progress(done: int, _total: int, text: str) -> None:
        progress(done, total, f"computing {text}")

    found = F.saliency_maps(model, x, target, stage, index, names, ig_steps=ig_steps, reference=reference,
                            other=other, progress=maps_progress)
    curves: dict[str, dict[str, F.Curve]] = {}
    for done, name in enumerate(names, start=len(names)):  # one map at a time, so the bar moves while scoring
        progress(done, total, f"scoring {F.MAP_NAMES[name]} ({2 * (steps + 1)} perturbed images)")
        curves.update(F.faithfulness_curves(model, x, target, {name: found[name]}, steps))
    size = tuple(x.shape[-2:])
    progress(total, total, "done")
    return DeletionResult(
        list(names), found, curves[names[0]]["deletion"].fractions,
        {n: curves[n]["deletion"].probabilities for n in names},
        {n: curves[n]["insertion"].probabilities for n in names},
        {n: {k: curves[n][k].auc for k in ("deletion", "insertion")} for n in names},
        size, steps, F.blur_sigma_for(size), time.perf_counter() - start)


#: The curves' titles: short enough to fit over each half of the chart at 1280 px (what each curve does is said in
#: the text above the chart).
CURVE_TITLES = ("Deletion: lower AUC is better", "Insertion: higher AUC is better")
TITLE_PX = 16


def _curve_figure(result: DeletionResult, class_name: str) -> go.Figure:
    """Deletion and insertion side by side, with titles and axis labels that fit each half at 1280 px."""
    figure = make_subplots(rows=1, cols=2, horizontal_spacing=0.12, subplot_titles=CURVE_TITLES)
    figure.update_annotations(font_size=TITLE_PX)
    for col, kind in enumerate(("deletion", "insertion"), start=1):
        for name in result.names:
            figure.add_trace(go.Scatter(
                x=result.fractions, y=getattr(result, kind)[name], mode="lines", showlegend=col == 1,
                name=f"{F.MAP_NAMES[name]}", legendgroup=name, line=dict(color=COLOURS.get(name))), row=1, col=col)
        figure.update_xaxes(title_text=f"fraction of pixels {'deleted' if kind == 'deletion' else 'inserted'}",
                            range=[0, 1], row=1, col=col)
    figure.update_yaxes(title_text=f"p({class_name})", range=[0, 1.02], row=1, col=1)
    figure.update_yaxes(range=[0, 1.02], row=1, col=2)
    figure.update_layout(height=400, margin=dict(l=10, r=10, t=40, b=10), font=dict(size=14),
                         legend=dict(orientation="h", y=-0.25))
    return figure


def _map_panel(picture_side: int, amap: np.ndarray, quantity: maps.Quantity, contrast: maps.Contrast,
               chosen_cmap: str, title: str, stats: maps.MapStats | None = None) -> None:
    """One map with its colorbar as page text, which states its scale (or why it is not drawn)."""
    stats = stats or maps.describe(amap)
    if not stats.ok:
        st.warning(f"{title}: {stats.problem}. Not drawn as a map.")
        return
    drawn = maps.heat(amap, quantity, contrast, chosen_cmap, (picture_side, picture_side))  # signed: diverging
    components.map_image(maps.to_png(drawn.picture), drawn.scale, drawn.cmap, caption=f"{title} · {stats.summary()}")


def deletion_insertion_panel(ctx: components.Context, target: int) -> None:
    """Deletion and insertion curves of every map and control for the current image and class ``target``
    (on demand)."""
    st.subheader("Is the map faithful? Deletion and insertion, with controls")
    names = map_names(ctx, F.DELETION_MAPS)
    reference = reference_map(ctx)
    shown = F.MAP_NAMES[reference]
    class_name = ctx.class_name(int(target))
    st.markdown(
        "Remove the pixels in the order a map ranks them, most important first, and follow the probability of "
        f"**{class_name}** (*deletion*: it should fall fast), or reveal them in that order on a blurred copy "
        "(*insertion*: it should rise fast) — Petsiuk et al., BMVC 2018. A map ordered like the model's evidence "
        "has a low deletion AUC and a high insertion AUC. **The controls say what a score means**: *another "
        f"image's map* ({shown} of the image chosen below) knows nothing about this image, so matching it means "
        "the score comes from the map's usual layout; the *inverted map* ranks its last pixels first; a *random "
        f"map as smooth as the {shown}* separates what smoothness alone does (deleting blobs rather than "
        "scattered pixels) from what the map knows; pixel noise and a centre prior are the usual floors.")
    other = components.other_image(ctx, "faithful_other", "Another image (for the control “another image's map”)")
    if other is None:
        names = [n for n in names if n != "other"]
    scored = 2 * (F.DEFAULT_STEPS + 1) * len(names)
    if not st.toggle(f"Compute the deletion and insertion curves ({len(names)} maps, {scored} perturbed images to "
                     "score: up to tens of seconds on a CPU, with a progress bar)", key="faithful_deletion"):
        return
    ig_steps = ig_steps_setting()
    key = ("deletion", ctx.entry.key, ctx.image_hash, int(target), ctx.stage, ctx.index, tuple(names), ig_steps,
           F.DEFAULT_STEPS, reference, other[2] if other else None)
    x = state.model_input(ctx.image, ctx.meta)
    other_x = state.model_input(other[0], ctx.meta) if other else None
    result: DeletionResult = run_shared(key, lambda progress: deletion_curves(
        ctx.model, x, int(target), ctx.stage, ctx.index, names, ig_steps, progress=progress, reference=reference,
        other=other_x), f"Deletion and insertion for {class_name}:")
    st.plotly_chart(_curve_figure(result, class_name), width="stretch", key="faithful_curves")
    st.dataframe([{"map": F.MAP_NAMES[n], "deletion AUC (lower is better)": result.auc[n]["deletion"],
                   "insertion AUC (higher is better)": result.auc[n]["insertion"]} for n in result.names],
                 hide_index=True, column_config={
                     "deletion AUC (lower is better)": st.column_config.NumberColumn(format="%.3f"),
                     "insertion AUC (higher is better)": st.column_config.NumberColumn(format="%.3f")})
    h, w = result.input_size
    per_step = round(h * w / result.steps)
    st.caption(
        f"**Choices.** {result.steps} equal steps of about {per_step} of the {h}×{w} input pixels (all colour "
        "channels of a position together); ties broken by position. **Baseline**: deletion replaces pixels by 0 "
        "in normalised space, i.e. the dataset's mean colour — the same image Integrated Gradients starts from, "
        "which favours IG here (its attributions add up to the change from that very image). Insertion starts "
        f"from a Gaussian blur of the input with σ = {result.blur_sigma:.3g} px (side / 16) and puts the original "
        f"pixels back. Score: the softmax probability of class {class_name} (index {int(target)}); AUC by the "
        f"trapezoid rule over the fraction of pixels, in [0, 1]. Maps: the soft mask M of stage {ctx.stage}, "
        f"module {ctx.index} (channel mean, upsampled bilinearly; class-agnostic), Grad-CAM at the output of "
        f"stage {ctx.stage}, Integrated Gradients ({ig_steps} steps, summed over colour channels; signed maps are "
        "ranked by value, positive evidence first). Controls, made from the "
        f"{shown}: the same map of another image{f' ({other[1]})' if other else ''} for this class, the map "
        "inverted within its range, and a phase-randomised copy (its Fourier amplitudes with random phases, seed "
        "0: as smooth, no layout); uniform pixel noise (seed 0) and a centre Gaussian with σ = side / 4. "
        "**Caveats.** Mean-coloured holes and blurred images are outside the training data: part of every drop "
        "or rise is the model reacting to the artefact (ROAR retrains to avoid this; this does not). The mask "
        "weighs features inside the network for every class; scoring it by one class's probability after "
        "upsampling a coarse map is one reading of it, not its definition (the Learn page's knock-out tests what "
        "it does). One image is an anecdote: the panel below, and `python -m resattn.faithfulness deletion`, "
        "compare maps image by image over a dataset; the numbers depend on the steps, baseline and blur: compare "
        f"maps only under the same settings. Computed in {result.seconds:.1f} s.")
    with st.expander("The maps that ordered the pixels"):
        contrast = st.session_state.get("contrast_attribution", "stretch")
        for first in range(0, len(result.names), PER_ROW):  # PER_ROW to a row: room for each colorbar's numbers
            for column, name in zip(st.columns(PER_ROW), result.names[first : first + PER_ROW]):
                with column:
                    quantity = ctx.mask_scale if name == "mask" else "attribution"
                    cmap = components.cmap("mask" if name == "mask" else "attribution")
                    _map_panel(SIDE, result.maps[name], quantity, contrast, cmap, F.MAP_NAMES[name])


# ------------------------------------------------------------------------------------------- sanity check


def sanity_with_progress(model: nn.Module, x: torch.Tensor, target: int, stage: int, index: int,
                         names: Sequence[str], *, seed: int = 0, ig_steps: int = 16,
                         progress: Progress = _none) -> F.SanityResult:
    """:func:`resattn.faithfulness.sanity_check` with progress, and the seconds it took in its settings."""
    start = time.perf_counter()
    result = F.sanity_check(model, x, target, stage, index, names, seed=seed, ig_steps=ig_steps, progress=progress)
    result.settings["seconds"] = time.perf_counter() - start
    return result


def _step_label(block: str) -> str:
    return "trained" if block == "trained" else f"→ {block}"


def _sanity_figure(result: F.SanityResult) -> go.Figure:
    labels = [_step_label(s.block) for s in result.steps]
    figure = make_subplots(rows=1, cols=3, horizontal_spacing=0.06, subplot_titles=(
        "Spearman ρ (signed maps)", "Spearman ρ (absolute values)", "SSIM with the trained model's map"))
    for col, measure in enumerate(("spearman", "spearman_abs", "ssim"), start=1):
        for name in result.names:
            figure.add_trace(go.Scatter(
                x=labels, y=[getattr(s, measure)[name] for s in result.steps], mode="lines+markers",
                name=F.MAP_NAMES[name], legendgroup=name, showlegend=col == 1, line=dict(color=COLOURS.get(name))),
                row=1, col=col)
        figure.update_xaxes(title_text="weights re-initialised from the classifier down to", row=1, col=col)
        figure.update_yaxes(range=[-1.05, 1.05], row=1, col=col)
    figure.update_layout(height=380, margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.3),
                         font=dict(size=14))  # axis numbers legible on a projector (issue 24)
    return figure


def sanity_panel(ctx: components.Context) -> None:
    """The randomisation sanity check for the current image (on demand): plot, table and maps per step."""
    st.header("Sanity check: do the maps depend on what was learned?")
    probs = ctx.trace().probs
    target = int(np.argmax(probs))
    class_name = ctx.class_name(target)
    st.markdown(
        "Adebayo et al. (NeurIPS 2018): destroy the trained weights, from the classifier downwards one block at a "
        "time (re-initialised as before training), and recompute each map. **A map that does not change when the "
        "weights it should depend on are destroyed explains the architecture, not what was learned.**\n\n"
        f"**What this can and cannot show for the mask.** The soft mask of stage {ctx.stage} is computed *before* "
        f"the classifier and every later stage, so it cannot change until stage {ctx.stage} (or one below it) is "
        "re-initialised, and then it must: that holds **by construction** and is no evidence that the mask "
        "explains anything, only that it is its own stage's output. Grad-CAM and Integrated Gradients explain the "
        f"class **{class_name}** (the trained model's top-1 here, kept fixed through the cascade): they should "
        "change as soon as the classifier is gone. **One image and one seed are an anecdote**: how far a map "
        "still resembles the trained one depends strongly on the random weights drawn (try other seeds); "
        "`python -m resattn.faithfulness sanity --data D --seeds 0 1 2 3 4` gives mean and spread over images "
        "and seeds.")
    options = map_names(ctx, F.SANITY_MAPS)
    st.session_state.setdefault("sanity_maps", [n for n in ("mask", "gradcam", "integrated_gradients") if n in options])
    left, right = st.columns([3, 1])
    names = left.multiselect("Maps", options, key="sanity_maps", format_func=F.MAP_NAMES.get)
    seed = int(right.number_input("Re-initialisation seed", 0, 999, step=1, key="sanity_seed"))
    if not st.toggle("Run the randomisation cascade (seconds: every map at every step)", key="sanity_run"):
        return
    if not names:
        st.info("Choose at least one map.")
        return
    ig_steps = ig_steps_setting()
    key = ("sanity", ctx.entry.key, ctx.image_hash, target, ctx.stage, ctx.index, tuple(names), ig_steps, seed)
    x = state.model_input(ctx.image, ctx.meta)
    result: F.SanityResult = run_shared(key, lambda progress: sanity_with_progress(
        ctx.model, x, target, ctx.stage, ctx.index, names, seed=seed, ig_steps=ig_steps, progress=progress),
        "Randomisation cascade:")
    st.plotly_chart(_sanity_figure(result), width="stretch", key="sanity_plot")
    rows = []
    for step in result.steps:
        row: dict[str, Any] = {"re-initialised to": step.block, f"p({class_name})": step.probability,
                               "top-1": ctx.class_name(step.prediction)}
        for n in result.names:
            row[f"{SHORT[n]} ρ"] = step.spearman[n]
            row[f"{SHORT[n]} ρ |·|"] = step.spearman_abs[n]
            row[f"{SHORT[n]} SSIM"] = step.ssim[n]
        rows.append(row)
    numbers = {k: st.column_config.NumberColumn(format="%.3f", width="small") for k in rows[0]
               if k not in ("re-initialised to", "top-1")}
    st.dataframe(rows, hide_index=True, column_config={
        **numbers, "re-initialised to": st.column_config.TextColumn(width="small"),
        "top-1": st.column_config.TextColumn(width="small")})
    st.caption(
        f"Step k re-initialises one more block ({' → '.join(s.block for s in result.steps[1:])}) with the "
        "network's own initialisation (He normal convolutions, N(0, 0.01²) classifier, BatchNorm γ = 1, β = 0, "
        f"running statistics reset), seed {seed}, on a copy: the loaded model is untouched. ρ: Spearman rank "
        "correlation with the trained model's map as it is (signed), ρ |·|: of the absolute values (Adebayo et al. "
        "report both); SSIM (7×7 window) on both maps scaled to [0, 1], attributions by |A|, the mask by its "
        "value; empty: a constant map (Grad-CAM is all zero when no channel weighs positively). Integrated "
        "Gradients with "
        f"{ig_steps} steps; Grad-CAM and the mask at stage {ctx.stage} (mask: module {ctx.index}, channel mean). "
        f"Computed in {result.settings['seconds']:.1f} s (shared by every session once computed).")
    contrast = st.session_state.get("contrast_learn", "stretch")
    st.markdown("**The maps at each step** (each with its own colorbar; the scale follows the contrast chosen "
                "under “Inside one soft mask branch”)")
    for name in result.names:
        shown = "value" if name == "mask" else "magnitude |A|"
        st.markdown(f"*{F.MAP_NAMES[name]}* — {shown}, at the {result.steps[0].maps[name].shape[0]}×"
                    f"{result.steps[0].maps[name].shape[1]} input")
        quantity = ctx.mask_scale if name == "mask" else "attribution"
        cmap = components.cmap("mask" if name == "mask" else "attribution")
        for first in range(0, len(result.steps), PER_ROW):
            for column, step in zip(st.columns(PER_ROW), result.steps[first : first + PER_ROW]):
                with column:
                    amap = F.compared(name, step.maps[name])
                    stats = maps.describe(amap)
                    if not stats.ok:
                        st.caption(f"{_step_label(step.block)}: {stats.problem}")
                        continue
                    _map_panel(SIDE, amap, quantity, contrast, cmap, _step_label(step.block), stats)
