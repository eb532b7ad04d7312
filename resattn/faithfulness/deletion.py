"""Deletion and insertion (Petsiuk et al., *RISE*, BMVC 2018): does removing the pixels a map ranks first lower the
model's probability fastest, and does revealing them first raise it fastest? For one image
(:func:`faithfulness_curves`) and over a dataset (:func:`faithfulness_over_dataset`, with per-map AUC statistics
in :class:`DatasetFaithfulness`).

Pixels (all colour channels at one position) are ranked by the map, most important first; ties are broken by
position (row-major), so the centre prior's rings have a fixed order. A map at a lower resolution is upsampled
first (:func:`resattn.maps.upsample`). Signed maps are ranked by their value: positive evidence first.

* **Steps**: :data:`DEFAULT_STEPS` = 32 equal steps; step k has changed round(k·P / 32) of the P pixels (32 pixels
  per step at 32×32, 1,568 at 224×224), so a curve has 33 points at fractions 0, 1/32, …, 1.
* **Deletion** replaces pixels by the baseline **0 in normalised space, i.e. the dataset mean colour** (the mean
  image for a checkpoint with a per-pixel mean): what the network's zero padding sees, and **Integrated
  Gradients' own baseline**, which favours IG here: its attributions add up to the change from this very image.
* **Insertion** starts from a **Gaussian blur with σ = side / 16** (2 px at 32×32, 14 px at 224×224; kernel cut
  at 3σ, reflect padding), applied in normalised space (for per-channel normalisation this equals blurring the
  picture, because the blur is linear with weights summing to 1), and reveals the original pixels in map order.
* **Score**: the softmax probability of the target class, by default the model's prediction on the intact image.
* **AUC**: trapezoid rule over the fraction of pixels in [0, 1]; probabilities lie in [0, 1], so AUCs do too.
  Lower deletion AUC and higher insertion AUC mean the ordering is more faithful to the model.
* **Batching**: all 2 × 33 perturbed images of every map are built at once and run in batches of
  ``batch_size`` in inference mode.

Caveats. Deleted and blurred images leave the data distribution (flat mean-coloured patches, a blurred photo):
part of a probability change is the model's reaction to the artefact, not to the evidence removed (ROAR, Hooker
et al. 2019, retrains to avoid this; this module does not). The soft mask is class-agnostic, and it weights
features (by 1 + M under ARL) inside the network rather than claiming anything about input pixels; judging it by
one class's probability, after upsampling a stage's coarse map to pixels, is a reading of it, not its definition.
Results depend on the step count, baseline and blur: compare maps only under the same settings, against the
controls of :mod:`~resattn.faithfulness.saliency` (another image's map, the inverted map, a random map as smooth as
the map under test), and image by image (:meth:`DatasetFaithfulness.paired`, :mod:`~resattn.faithfulness.stats`):
two maps scored on the same images share each image's difficulty.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..maps import upsample
from .saliency import CONTROLS, DELETION_MAPS, MAP_NAMES, REFERENCE_CONTROLS, derangement, evaluating, saliency_maps
from .stats import PairedDifference, paired_difference

__all__ = [
    "DEFAULT_STEPS",
    "Kind",
    "Curve",
    "blur_sigma_for",
    "gaussian_blur",
    "pixel_order",
    "faithfulness_curves",
    "deletion_insertion",
    "DatasetFaithfulness",
    "default_pairs",
    "faithfulness_over_dataset",
]

#: Deletion / insertion steps (a curve has ``steps + 1`` points).
DEFAULT_STEPS = 32

Kind = Literal["deletion", "insertion"]


# --------------------------------------------------------------------------------------------------- one image


@dataclass(frozen=True)
class Curve:
    """One deletion or insertion curve: the target's probability after each step."""

    kind: str  # "deletion" or "insertion"
    fractions: np.ndarray  # steps + 1 values from 0 to 1: the fraction of pixels deleted / inserted
    probabilities: np.ndarray  # softmax probability of the target class at each fraction

    @property
    def auc(self) -> float:
        """Area under the curve by the trapezoid rule, in [0, 1]."""
        return _trapezoid(self.probabilities, self.fractions)


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))


def blur_sigma_for(size: tuple[int, int]) -> float:
    """The insertion start's default blur: σ = shorter side / 16 pixels."""
    return min(size) / 16


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of an N×C×H×W tensor (kernel cut at 3σ, reflect padding)."""
    if sigma <= 0:
        return x.clone()
    h, w = x.shape[-2:]
    radius = max(1, min(math.ceil(3 * sigma), h - 1, w - 1))
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-(taps**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).to(x.dtype).to(x.device)
    c = x.shape[1]
    out = F.pad(x, (radius, radius, 0, 0), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    out = F.pad(out, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def pixel_order(saliency: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Flat pixel indices of an (H, W) input, most important first (ties: row-major position)."""
    full = upsample(np.asarray(saliency, np.float32), size) if saliency.shape != tuple(size) else saliency
    values = np.nan_to_num(np.asarray(full, np.float64).ravel(), nan=-np.inf)
    return np.argsort(-values, kind="stable")


def _counts(pixels: int, steps: int) -> np.ndarray:
    return np.round(np.arange(steps + 1) * pixels / steps).astype(np.int64)


def _perturbed(x: Tensor, order: np.ndarray, counts: np.ndarray, start: Tensor, finish: Tensor) -> Tensor:
    """len(counts) images: image k shows ``finish`` at the first counts[k] pixels of ``order``, ``start`` elsewhere."""
    h, w = x.shape[-2:]
    rank = torch.empty(h * w, dtype=torch.int64)
    rank[torch.from_numpy(order)] = torch.arange(h * w)
    chosen = (rank[None, :] < torch.from_numpy(counts)[:, None]).view(len(counts), 1, h, w).to(x.device)
    return torch.where(chosen, finish, start)


def _probabilities(model: nn.Module, images: Tensor, target: int, batch_size: int) -> np.ndarray:
    out = []
    with evaluating(model), torch.inference_mode():
        for chunk in images.split(batch_size):
            out.append(torch.softmax(model(chunk).float(), dim=1)[:, int(target)].cpu())
    return torch.cat(out).double().numpy()


def faithfulness_curves(
    model: nn.Module,
    x: Tensor,
    target: int,
    maps: Mapping[str, np.ndarray],
    steps: int = DEFAULT_STEPS,
    *,
    baseline: float = 0.0,
    blur_sigma: float | None = None,
    batch_size: int = 128,
) -> dict[str, dict[str, Curve]]:
    """Deletion and insertion curves of every map in ``maps`` for one normalised 1×C×H×W input:
    ``{name: {"deletion": Curve, "insertion": Curve}}``; all perturbed images run in shared batches."""
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"expected one 1×C×H×W input, got shape {tuple(x.shape)}")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    size = tuple(x.shape[-2:])
    x = x.detach()
    blurred = gaussian_blur(x, blur_sigma_for(size) if blur_sigma is None else blur_sigma)
    base = torch.full_like(x, float(baseline))
    counts = _counts(size[0] * size[1], steps)
    parts = []
    for saliency in maps.values():
        order = pixel_order(saliency, size)
        parts.append(_perturbed(x, order, counts, x, base))  # deletion: the original, then the baseline
        parts.append(_perturbed(x, order, counts, blurred, x))  # insertion: the blur, then the original
    probs = _probabilities(model, torch.cat(parts), target, batch_size).reshape(len(maps), 2, steps + 1)
    fractions = counts / counts[-1]
    return {
        name: {kind: Curve(kind, fractions, probs[i, j]) for j, kind in enumerate(("deletion", "insertion"))}
        for i, name in enumerate(maps)
    }


def deletion_insertion(
    model: nn.Module,
    x: Tensor,
    target: int,
    saliency: np.ndarray,
    steps: int = DEFAULT_STEPS,
    **options: Any,
) -> tuple[Curve, Curve]:
    """The deletion and insertion curves of one map (see :func:`faithfulness_curves` for the options)."""
    curves = faithfulness_curves(model, x, target, {"map": saliency}, steps, **options)["map"]
    return curves["deletion"], curves["insertion"]


# ---------------------------------------------------------------------------------------------- over a dataset


@dataclass
class DatasetFaithfulness:
    """Deletion and insertion over many images: per-image curves of every map, and their AUCs."""

    names: list[str]
    fractions: np.ndarray  # steps + 1
    deletion: dict[str, np.ndarray]  # name → N×(steps + 1) probabilities
    insertion: dict[str, np.ndarray]
    index: np.ndarray  # N positions in the split
    targets: np.ndarray  # N target classes
    settings: dict[str, Any] = field(default_factory=dict)
    other_index: np.ndarray | None = None  # N positions: whose map the control "other" used for each image

    def aucs(self, kind: Kind) -> dict[str, np.ndarray]:
        """Per-image AUCs of every map for ``kind``."""
        curves = self.deletion if kind == "deletion" else self.insertion
        return {n: np.array([_trapezoid(c, self.fractions) for c in curves[n]]) for n in self.names}

    def summary(self) -> dict[str, dict[str, float]]:
        """Per map: mean, standard deviation (ddof 1) and standard error of the deletion and insertion AUCs."""
        out: dict[str, dict[str, float]] = {n: {} for n in self.names}
        for kind in ("deletion", "insertion"):
            for name, values in self.aucs(kind).items():
                n = len(values)
                std = float(np.std(values, ddof=1)) if n > 1 else float("nan")
                out[name].update({f"{kind}_mean": float(np.mean(values)), f"{kind}_std": std,
                                  f"{kind}_sem": std / math.sqrt(n) if n > 1 else float("nan")})
        return out

    def paired(self, a: str, b: str, kind: Kind) -> PairedDifference:
        """Map ``a`` against map ``b``, image by image: statistics of AUC(a) − AUC(b) for ``kind``."""
        aucs = self.aucs(kind)
        return paired_difference(aucs[a], aucs[b])

    def paired_table(self, pairs: Sequence[tuple[str, str]] | None = None) -> str:
        """Paired differences of the AUCs for ``pairs`` (default: :func:`default_pairs`), one line per pair."""
        pairs = default_pairs(self.names, self.settings.get("reference", "mask")) if pairs is None else pairs
        lines = [f"paired differences over the same {len(self.index)} images: mean of AUC(a) − AUC(b) "
                 "[95% t interval], paired t-test and Wilcoxon signed-rank p"]
        for a, b in pairs:
            cells = [self.paired(a, b, kind).text() for kind in ("deletion", "insertion")]
            lines.append(f"{_name(a, self.settings)} − {_name(b, self.settings)}")
            lines.append(f"    deletion {cells[0]}; insertion {cells[1]}")
        return "\n".join(lines)

    def table(self) -> str:
        """A plain-text table: mean AUC ± standard deviation (standard error) per map."""
        s = self.settings
        lines = [f"deletion / insertion AUC over {len(self.index)} images ({s.get('steps')} steps, target = "
                 f"{s.get('target')}, deletion baseline 0 = the mean colour (also Integrated Gradients' baseline), "
                 f"insertion from a blur with σ = {s.get('blur_sigma'):.3g} px, maps at stage {s.get('stage')}, "
                 f"module {s.get('index')}; controls made from {MAP_NAMES.get(s.get('reference', 'mask'))})",
                 f"{'map':32s} {'deletion AUC (lower is better)':>32s} {'insertion AUC (higher is better)':>34s}"]
        for name, row in self.summary().items():
            cells = [f"{row[f'{k}_mean']:.4f} ± {row[f'{k}_std']:.4f} ({row[f'{k}_sem']:.4f})"
                     for k in ("deletion", "insertion")]
            lines.append(f"{_name(name, s):32s} {cells[0]:>32s} {cells[1]:>34s}")
        lines.append("mean ± standard deviation (standard error of the mean) over images")
        return "\n".join(lines)


def _name(name: str, settings: Mapping[str, Any]) -> str:
    """A map's display name; a control made from the reference says so when the reference is not the mask."""
    reference = settings.get("reference", "mask")
    if name in REFERENCE_CONTROLS and reference != "mask":
        return f"{MAP_NAMES[name]} ({reference})"
    return MAP_NAMES.get(name, name)


def default_pairs(names: Sequence[str], reference: str = "mask") -> list[tuple[str, str]]:
    """The comparisons worth making among ``names``: the reference against every other map (its controls first),
    and the smooth random map against pixel noise (what smoothness alone is worth)."""
    if reference not in names:
        return []
    others = [n for n in names if n in CONTROLS and n != reference] + [
        n for n in names if n not in CONTROLS and n != reference]
    pairs = [(reference, n) for n in others]
    if "smooth_random" in names and "random" in names:
        pairs.append(("smooth_random", "random"))
    return pairs


def faithfulness_over_dataset(
    model: nn.Module,
    meta: Mapping[str, Any],
    images: Tensor,
    labels: Tensor | None,
    stage: int,
    index: int = 1,
    names: Sequence[str] = DELETION_MAPS,
    *,
    positions: Sequence[int] | np.ndarray | None = None,
    steps: int = DEFAULT_STEPS,
    target: Literal["prediction", "label"] = "prediction",
    blur_sigma: float | None = None,
    seed: int = 0,
    ig_steps: int = 16,
    batch_size: int = 128,
    progress: bool | Callable[[int, int, str], None] = False,
    reference: str = "mask",
) -> DatasetFaithfulness:
    """Deletion and insertion of every map in ``names`` over uint8 ``images`` (N×C×H×W, already resized and
    cropped as the checkpoint expects; ``meta`` gives mean and std). The random maps of image i use seed
    ``seed + positions[i]``; the control ``other`` of image i is ``reference`` on image ``derangement(N, seed)[i]``
    for image i's target. ``target="label"`` scores the true class (needs ``labels``). ``progress``: a tqdm bar
    (``True``) or ``progress(done, total, text)`` before each image and at the end."""
    from ..preprocess import Preprocessing

    prep = Preprocessing.from_meta(meta)
    positions = np.arange(len(images)) if positions is None else np.asarray(positions, np.int64)
    if target == "label" and labels is None:
        raise ValueError("target='label' needs labels")
    device = next(iter(model.parameters()), torch.empty(0)).device
    deletion: dict[str, list[np.ndarray]] = {n: [] for n in names}
    insertion: dict[str, list[np.ndarray]] = {n: [] for n in names}
    targets = []
    others = derangement(len(images), seed) if "other" in names else None
    fractions = _counts(1, steps).astype(np.float64)
    items: Any = range(len(images))
    report = progress if callable(progress) else None
    if progress is True:
        from tqdm import tqdm

        items = tqdm(items, desc="deletion/insertion", unit="img")
    sigma = blur_sigma
    for i in items:
        if report is not None:
            report(i, len(images), f"image {i + 1} of {len(images)}")
        x = prep.normalize(images[i : i + 1].to(device))
        sigma = blur_sigma_for(tuple(x.shape[-2:])) if blur_sigma is None else blur_sigma
        with torch.inference_mode():
            logits = model(x) if target == "prediction" else None
        cls = int(logits.argmax(1)) if logits is not None else int(labels[i])  # type: ignore[index]
        other = prep.normalize(images[others[i] : others[i] + 1].to(device)) if others is not None else None
        maps = saliency_maps(model, x, cls, stage, index, names, seed=seed + int(positions[i]), ig_steps=ig_steps,
                             reference=reference, other=other)
        curves = faithfulness_curves(model, x, cls, maps, steps, blur_sigma=sigma, batch_size=batch_size)
        for n in names:
            deletion[n].append(curves[n]["deletion"].probabilities)
            insertion[n].append(curves[n]["insertion"].probabilities)
            fractions = curves[n]["deletion"].fractions
        targets.append(cls)
    if report is not None:
        report(len(images), len(images), "done")
    settings = {"steps": steps, "target": target, "blur_sigma": sigma, "baseline": 0.0, "stage": stage,
                "index": index, "seed": seed, "ig_steps": ig_steps, "reference": reference}
    return DatasetFaithfulness(list(names), fractions, {n: np.array(v) for n, v in deletion.items()},
                               {n: np.array(v) for n, v in insertion.items()}, positions,
                               np.array(targets, np.int64), settings,
                               positions[others] if others is not None else None)
