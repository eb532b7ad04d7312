"""Is a map faithful to the model? Deletion and insertion (Petsiuk et al., *RISE*, BMVC 2018) and the model
randomisation sanity check (Adebayo et al., *Sanity Checks for Saliency Maps*, NeurIPS 2018), for the soft mask
and the attributions side by side.

Maps compared (all H×W at the input's resolution):

* ``mask``: the channel mean of the soft mask M of attention module (stage, index), upsampled bilinearly: the
  class-agnostic map the network itself multiplies its features by;
* ``gradcam`` (and ``guided_gradcam``, ``occlusion`` on request): :mod:`resattn.attribution`'s Captum wrappers,
  Grad-CAM at the output of the same stage;
* ``integrated_gradients``: :func:`resattn.attribution.integrated_gradients` (zero baseline, 16 steps), summed
  over colour channels;
* ``random``: uniform noise from ``numpy.random.default_rng(seed)`` (over a dataset: ``seed`` + the image's
  position in the split), a floor every map should beat;
* ``centre``: a Gaussian bump at the image centre with σ = side / 4, the photographer's-bias prior.

Deletion and insertion
----------------------
Pixels (all colour channels at one position) are ranked by the map, most important first; ties are broken by
position (row-major), so the centre prior's rings have a fixed order. A map at a lower resolution is upsampled
first (:func:`resattn.maps.upsample`). Signed maps are ranked by their value: positive evidence first.

* **Steps**: :data:`DEFAULT_STEPS` = 32 equal steps; step k has changed round(k·P / 32) of the P pixels (32 pixels
  per step at 32×32, 1,568 at 224×224), so a curve has 33 points at fractions 0, 1/32, …, 1.
* **Deletion** replaces pixels by the baseline **0 in normalised space, i.e. the dataset mean colour** (the mean
  image for a checkpoint with a per-pixel mean): what the network's zero padding and the Integrated Gradients
  baseline also see.
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
Results depend on the step count, baseline and blur: compare maps only under the same settings.

Randomisation sanity check
--------------------------
On a deep copy of the model (the caller's model never changes), the blocks are re-initialised from the
classifier downwards, one more per step (cascading randomisation): ``fc`` → ``norm`` (the final BN) → ``tail``
(ImageNet only) → ``stage3`` → ``stage2`` → ``stage1`` → ``stem``; blocks without parameters are skipped.
Re-initialisation is the network's own training initialisation (§4.1, :mod:`resattn.networks`): He normal
(fan-out) convolutions, N(0, 0.01²) classifier weights, zero biases, BatchNorm γ = 1, β = 0 with running
statistics reset to mean 0, variance 1: each block as it was before training, drawn from a ``torch.Generator``
seeded with ``seed`` (default 0), so the check is deterministic. The target class stays fixed (the trained
model's prediction unless given). After each step every map is recomputed and compared with the trained model's
map by Spearman's rank correlation (``scipy.stats.spearmanr``) and SSIM (scikit-image's
``structural_similarity``, 7×7 window, on maps min-max normalised to [0, 1]; a NumPy/PyTorch implementation of
the same formula when scikit-image is missing). Attributions are compared by magnitude |A| (Adebayo et al.'s
absolute-value variant), the mask by its value. Both measures are NaN when either map is constant.

What to expect: a stage's soft mask is computed before every layer above it, so it cannot change until that
stage (or one below it) is re-initialised. That is what a class-agnostic map should do; a class-specific map that
survives re-initialising the classifier explains the architecture, not what was learned.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attribution import METHOD_NAMES
from .inspect import inspect
from .maps import upsample

__all__ = [
    "DEFAULT_STEPS",
    "DELETION_MAPS",
    "SANITY_MAPS",
    "MAP_NAMES",
    "CASCADE",
    "Curve",
    "blur_sigma_for",
    "gaussian_blur",
    "pixel_order",
    "random_map",
    "centre_prior",
    "mask_map",
    "saliency_maps",
    "deletion_insertion",
    "faithfulness_curves",
    "DatasetFaithfulness",
    "faithfulness_over_dataset",
    "cascade_blocks",
    "reinitialise_",
    "randomisation_cascade",
    "ssim",
    "rank_correlation",
    "SanityStep",
    "SanityResult",
    "sanity_check",
    "main",
]

#: Deletion / insertion steps (a curve has ``steps + 1`` points).
DEFAULT_STEPS = 32
#: Maps compared by deletion and insertion.
DELETION_MAPS: tuple[str, ...] = ("mask", "gradcam", "integrated_gradients", "random", "centre")
#: Maps recomputed in the randomisation sanity check (random and centre do not depend on weights).
SANITY_MAPS: tuple[str, ...] = ("mask", "gradcam", "guided_gradcam", "integrated_gradients")
MAP_NAMES: dict[str, str] = {
    "mask": "soft mask M (channel mean)", **METHOD_NAMES, "random": "random", "centre": "centre prior"}
#: Blocks of the randomisation cascade, from the classifier down; missing or parameter-free blocks are skipped.
CASCADE: tuple[str, ...] = ("fc", "norm", "tail", "stage3", "stage2", "stage1", "stem")

Kind = Literal["deletion", "insertion"]


# ------------------------------------------------------------------------------------------------- maps


def random_map(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Uniform noise of ``size`` = (H, W) from ``numpy.random.default_rng(seed)``."""
    return np.random.default_rng(seed).random(size).astype(np.float32)


def centre_prior(size: tuple[int, int], sigma_fraction: float = 0.25) -> np.ndarray:
    """A Gaussian bump at the centre of an (H, W) map with σ = ``sigma_fraction`` × the shorter side."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    sigma = sigma_fraction * min(h, w)
    bump = np.exp(-(((yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2) / (2 * sigma**2)))
    return bump.astype(np.float32)


def mask_map(model: nn.Module, x: Tensor, stage: int, index: int = 1) -> tuple[np.ndarray, Tensor]:
    """The channel mean of module (stage, index)'s soft mask M upsampled to the input, and the logits."""
    trace = inspect(model, x)
    reduced = trace.module(stage, index).mask[0].float().mean(dim=0).cpu().numpy()
    return upsample(reduced, tuple(x.shape[-2:])), trace.logits


def saliency_maps(
    model: nn.Module,
    x: Tensor,
    target: int,
    stage: int,
    index: int = 1,
    names: Sequence[str] = DELETION_MAPS,
    *,
    seed: int = 0,
    ig_steps: int = 16,
) -> dict[str, np.ndarray]:
    """The maps ``names`` (keys of :data:`MAP_NAMES`) for one 1×C×H×W input and a target class."""
    from . import attribution

    size = tuple(x.shape[-2:])
    out: dict[str, np.ndarray] = {}
    for name in names:
        if name == "mask":
            out[name] = mask_map(model, x, stage, index)[0]
        elif name == "random":
            out[name] = random_map(size, seed)
        elif name == "centre":
            out[name] = centre_prior(size)
        elif name == "integrated_gradients":
            out[name] = attribution.integrated_gradients(model, x, target, steps=ig_steps)
        elif name in attribution.METHODS:
            out[name] = attribution.attribute(model, x, target, name, stage=stage)
        else:
            raise ValueError(f"map must be one of {tuple(MAP_NAMES)}, got {name!r}")
    return out


# ---------------------------------------------------------------------------------------- deletion / insertion


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


@contextmanager
def _eval(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _probabilities(model: nn.Module, images: Tensor, target: int, batch_size: int) -> np.ndarray:
    out = []
    with _eval(model), torch.inference_mode():
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

    def table(self) -> str:
        """A plain-text table: mean AUC ± standard deviation (standard error) per map."""
        s = self.settings
        lines = [f"deletion / insertion AUC over {len(self.index)} images ({s.get('steps')} steps, target = "
                 f"{s.get('target')}, deletion baseline 0 = mean colour, insertion from a blur with σ = "
                 f"{s.get('blur_sigma'):.3g} px, maps at stage {s.get('stage')}, module {s.get('index')})",
                 f"{'map':28s} {'deletion AUC (lower is better)':>32s} {'insertion AUC (higher is better)':>34s}"]
        for name, row in self.summary().items():
            cells = [f"{row[f'{k}_mean']:.4f} ± {row[f'{k}_std']:.4f} ({row[f'{k}_sem']:.4f})"
                     for k in ("deletion", "insertion")]
            lines.append(f"{MAP_NAMES.get(name, name):28s} {cells[0]:>32s} {cells[1]:>34s}")
        lines.append("mean ± standard deviation (standard error of the mean) over images")
        return "\n".join(lines)


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
    progress: bool = False,
) -> DatasetFaithfulness:
    """Deletion and insertion of every map in ``names`` over uint8 ``images`` (N×C×H×W, already resized and
    cropped as the checkpoint expects; ``meta`` gives mean and std). The random map of image i uses seed
    ``seed + positions[i]``. ``target="label"`` scores the true class (needs ``labels``)."""
    from .preprocess import Preprocessing

    prep = Preprocessing.from_meta(meta)
    positions = np.arange(len(images)) if positions is None else np.asarray(positions, np.int64)
    if target == "label" and labels is None:
        raise ValueError("target='label' needs labels")
    device = next(iter(model.parameters()), torch.empty(0)).device
    deletion: dict[str, list[np.ndarray]] = {n: [] for n in names}
    insertion: dict[str, list[np.ndarray]] = {n: [] for n in names}
    targets = []
    fractions = _counts(1, steps).astype(np.float64)
    items: Any = range(len(images))
    if progress:
        from tqdm import tqdm

        items = tqdm(items, desc="deletion/insertion", unit="img")
    sigma = blur_sigma
    for i in items:
        x = prep.normalize(images[i : i + 1].to(device))
        sigma = blur_sigma_for(tuple(x.shape[-2:])) if blur_sigma is None else blur_sigma
        with torch.inference_mode():
            logits = model(x) if target == "prediction" else None
        cls = int(logits.argmax(1)) if logits is not None else int(labels[i])  # type: ignore[index]
        maps = saliency_maps(model, x, cls, stage, index, names, seed=seed + int(positions[i]), ig_steps=ig_steps)
        curves = faithfulness_curves(model, x, cls, maps, steps, blur_sigma=sigma, batch_size=batch_size)
        for n in names:
            deletion[n].append(curves[n]["deletion"].probabilities)
            insertion[n].append(curves[n]["insertion"].probabilities)
            fractions = curves[n]["deletion"].fractions
        targets.append(cls)
    settings = {"steps": steps, "target": target, "blur_sigma": sigma, "baseline": 0.0, "stage": stage,
                "index": index, "seed": seed, "ig_steps": ig_steps}
    return DatasetFaithfulness(list(names), fractions, {n: np.array(v) for n, v in deletion.items()},
                               {n: np.array(v) for n, v in insertion.items()}, positions,
                               np.array(targets, np.int64), settings)


# ------------------------------------------------------------------------------------- randomisation check


def cascade_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The blocks of :data:`CASCADE` that ``model`` has and that hold parameters, classifier first."""
    blocks = []
    for name in CASCADE:
        block = getattr(model, name, None)
        if isinstance(block, nn.Module) and any(True for _ in block.parameters()):
            blocks.append((name, block))
    return blocks


def reinitialise_(block: nn.Module, generator: torch.Generator, prefix: str = "") -> list[str]:
    """Re-initialise every layer of ``block`` in place as before training; returns the state-dict keys changed.

    Convolutions: He normal (fan-out, ReLU); linear layers: N(0, 0.01²); biases 0; BatchNorm: γ = 1, β = 0,
    running mean 0, running variance 1. Any other layer with parameters raises ``TypeError``.
    """
    changed = []
    with torch.no_grad():
        for name, module in block.named_modules():
            direct = list(module.named_parameters(recurse=False))
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu", generator=generator)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.01, generator=generator)
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()
                if module.affine:
                    nn.init.ones_(module.weight)
            elif direct:
                raise TypeError(f"cannot re-initialise {type(module).__name__} ({prefix}{name})")
            else:
                continue
            bias = getattr(module, "bias", None)
            if isinstance(bias, Tensor):
                nn.init.zeros_(bias)
            where = f"{prefix}{name}." if name else prefix
            changed += [where + key for key in module.state_dict(keep_vars=True) if "." not in key]
    return changed


def randomisation_cascade(model: nn.Module, seed: int = 0) -> Iterator[tuple[str, nn.Module, tuple[str, ...]]]:
    """Yield ``(block, randomised, reinitialised)`` for each step of the cascade: one deep copy of ``model``,
    re-initialised in place one more block at a time (so take what you need from it before the next step), and
    the state-dict keys re-initialised so far. ``model`` itself never changes."""
    randomised = copy.deepcopy(model).eval()
    generator = torch.Generator(device="cpu").manual_seed(seed)
    done: list[str] = []
    for name, block in cascade_blocks(randomised):
        device = next(block.parameters()).device
        if device.type != "cpu":  # draw on the CPU so every device gets the same weights
            block.to("cpu")
            done += reinitialise_(block, generator, prefix=f"{name}.")
            block.to(device)
        else:
            done += reinitialise_(block, generator, prefix=f"{name}.")
        yield name, randomised, tuple(done)


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's ρ between two maps of one shape (``scipy.stats.spearmanr``); NaN if either is constant."""
    from scipy.stats import spearmanr

    if a.shape != b.shape:
        raise ValueError(f"maps differ in shape: {a.shape} vs {b.shape}")
    if np.ptp(a) == 0 or np.ptp(b) == 0 or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("nan")
    return float(spearmanr(a.ravel(), b.ravel())[0])


def _unit(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64)
    return (a - a.min()) / (a.max() - a.min())


def ssim(a: np.ndarray, b: np.ndarray, win_size: int = 7) -> float:
    """SSIM of two maps after min-max normalisation to [0, 1] (data range 1, uniform ``win_size`` window,
    sample covariance: scikit-image's defaults); NaN if either map is constant or not finite."""
    if a.shape != b.shape:
        raise ValueError(f"maps differ in shape: {a.shape} vs {b.shape}")
    if np.ptp(a) == 0 or np.ptp(b) == 0 or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("nan")
    win_size = min(win_size, *(s if s % 2 else s - 1 for s in a.shape))
    if win_size < 3:
        return float("nan")
    x, y = _unit(a), _unit(b)
    try:
        from skimage.metrics import structural_similarity
    except ImportError:
        return _ssim(x, y, win_size)
    return float(structural_similarity(x, y, win_size=win_size, data_range=1.0))


def _ssim(x: np.ndarray, y: np.ndarray, win_size: int) -> float:
    """scikit-image's SSIM formula (uniform window, sample covariance, K1 = 0.01, K2 = 0.03, data range 1),
    averaged over the positions whose window lies inside the map."""
    t = torch.from_numpy(np.stack([x, y, x * x, y * y, x * y]))[:, None]
    m = F.avg_pool2d(t, win_size, stride=1)[:, 0].numpy()
    ux, uy, uxx, uyy, uxy = m
    norm = win_size**2 / (win_size**2 - 1)
    vx, vy, vxy = norm * (uxx - ux * ux), norm * (uyy - uy * uy), norm * (uxy - ux * uy)
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    return float(s.mean())


@dataclass
class SanityStep:
    """One step of the cascade: every map, and how far each still resembles the trained model's."""

    block: str  # "trained", or the block re-initialised at this step
    reinitialised: tuple[str, ...]  # every state-dict key re-initialised so far
    maps: dict[str, np.ndarray]
    spearman: dict[str, float]
    ssim: dict[str, float]
    probability: float  # softmax probability of the (fixed) target class
    prediction: int


@dataclass
class SanityResult:
    """The randomisation cascade for one image: step 0 is the trained model."""

    target: int
    stage: int
    index: int
    names: list[str]
    steps: list[SanityStep]
    settings: dict[str, Any] = field(default_factory=dict)

    def table(self) -> str:
        """One row per step: target probability, then Spearman ρ / SSIM of every map against the trained map."""
        head = [f"{'re-initialised down to':24s}", f"{'p(target)':>9s}"]
        head += [f"{_short(n) + ' ρ / SSIM':>24s}" for n in self.names]
        lines = [f"randomisation cascade (target class {self.target}, maps at stage {self.stage}, module "
                 f"{self.index}, seed {self.settings.get('seed', 0)})", " ".join(head)]
        for step in self.steps:
            cells = [f"{step.block:24s}", f"{step.probability:9.4f}"]
            cells += [f"{_num(step.spearman[n]) + ' / ' + _num(step.ssim[n]):>24s}" for n in self.names]
            lines.append(" ".join(cells))
        lines.append("ρ: Spearman rank correlation, SSIM on maps scaled to [0, 1]; attributions compared by |A|; "
                     "nan: a constant map")
        return "\n".join(lines)


def _short(name: str) -> str:
    return {"mask": "mask M", "integrated_gradients": "IG", "guided_gradcam": "Guided GC"}.get(name, MAP_NAMES.get(name, name))


def _num(value: float) -> str:
    return "nan" if not np.isfinite(value) else f"{value:.3f}"


def _compared(name: str, a: np.ndarray) -> np.ndarray:
    return a if name == "mask" else np.abs(a)


def sanity_check(
    model: nn.Module,
    x: Tensor,
    target: int | None = None,
    stage: int = 2,
    index: int = 1,
    names: Sequence[str] = SANITY_MAPS,
    *,
    seed: int = 0,
    ig_steps: int = 16,
) -> SanityResult:
    """Cascading randomisation (see the module docstring) for one normalised 1×C×H×W input: every map of
    ``names`` at each step, with Spearman ρ and SSIM against the trained model's map. ``model`` is not changed."""

    def measure(net: nn.Module, block: str, done: tuple[str, ...], cls: int) -> SanityStep:
        maps = saliency_maps(net, x, cls, stage, index, names, seed=seed, ig_steps=ig_steps)
        with torch.inference_mode(), _eval(net):
            probs = torch.softmax(net(x).float(), dim=1)[0]
        return SanityStep(block, done, maps, {}, {}, float(probs[cls]), int(probs.argmax()))

    if target is None:
        with torch.inference_mode(), _eval(model):
            target = int(model(x).argmax(1))
    steps = [measure(model, "trained", (), target)]
    for block, randomised, done in randomisation_cascade(model, seed):
        steps.append(measure(randomised, block, done, target))
    trained = steps[0].maps
    for step in steps:
        for n in names:
            a, b = _compared(n, trained[n]), _compared(n, step.maps[n])
            step.spearman[n] = rank_correlation(a, b)
            step.ssim[n] = ssim(a, b)
    return SanityResult(int(target), stage, index, list(names), steps, {"seed": seed, "ig_steps": ig_steps})


# ------------------------------------------------------------------------------------------------------ CLI


def _load(checkpoint: str, device: str) -> tuple[nn.Module, dict[str, Any]]:
    from .checkpoint import load_checkpoint

    model, meta = load_checkpoint(checkpoint)
    dev = torch.device("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu")
    return model.to(dev).to(memory_format=torch.channels_last), meta


def _deletion(args: argparse.Namespace) -> int:
    from .data import DataError, load_split
    from .masks import spread_indices
    from .preprocess import Preprocessing

    model, meta = _load(args.checkpoint, args.device)
    prep = Preprocessing.from_meta(meta)
    decoded = load_split(args.data, args.split, prep.resize,
                         os.path.expanduser(args.cache_dir) if args.cache_dir else None, crop=prep.size)
    folders = meta.get("class_folders", meta.get("classes", decoded.classes))
    if decoded.classes != folders:
        raise DataError(f"{args.data} has classes {decoded.classes}, the checkpoint was trained on {folders}")
    chosen = torch.from_numpy(spread_indices(len(decoded.labels), args.limit))
    result = faithfulness_over_dataset(
        model, meta, decoded.images[chosen], decoded.labels[chosen], args.stage, args.index, args.maps,
        positions=chosen.numpy(), steps=args.steps, target=args.target, blur_sigma=args.blur_sigma, seed=args.seed,
        ig_steps=args.ig_steps, batch_size=args.batch_size, progress=not args.no_progress)
    print(result.table())
    if args.out:
        arrays = {"fractions": result.fractions, "index": result.index, "targets": result.targets}
        for n in result.names:
            arrays[f"deletion/{n}"] = result.deletion[n]
            arrays[f"insertion/{n}"] = result.insertion[n]
        np.savez_compressed(args.out, **arrays)
        print(f"wrote per-image curves to {args.out}")
    return 0


def _sanity(args: argparse.Namespace) -> int:
    from .images import load_image
    from .preprocess import Preprocessing

    model, meta = _load(args.checkpoint, args.device)
    device = next(model.parameters()).device
    x = Preprocessing.from_meta(meta)(load_image(args.image)).to(device)
    result = sanity_check(model, x, args.target, args.stage, args.index, args.maps, seed=args.seed,
                          ig_steps=args.ig_steps)
    classes = meta.get("classes") or []
    name = classes[result.target] if result.target < len(classes) else str(result.target)
    print(f"{os.path.basename(args.image)}: target {result.target} ({name})")
    print(result.table())
    if args.out:
        np.savez_compressed(args.out, **{f"{s.block}/{n}": s.maps[n] for s in result.steps for n in result.names})
        print(f"wrote the maps of every step to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m resattn.faithfulness",
                                description="Deletion / insertion AUCs and the randomisation sanity check.")
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--checkpoint", required=True, help="a .safetensors checkpoint written by resattn")
    common.add_argument("--stage", type=int, default=2, help="stage of the soft mask and of Grad-CAM")
    common.add_argument("--index", type=int, default=1, help="module within the stage (mask)")
    common.add_argument("--seed", type=int, default=0, help="seed of the random map / the re-initialisation")
    common.add_argument("--ig-steps", type=int, default=16, help="Integrated Gradients steps")
    common.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="device")
    common.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    common.add_argument("--out", help="also write the per-image curves (deletion) or the maps (sanity) as .npz")
    fmt = argparse.ArgumentDefaultsHelpFormatter
    d = sub.add_parser("deletion", parents=[common], formatter_class=fmt,
                       help="deletion and insertion AUCs of every map over a dataset")
    d.add_argument("--data", required=True, help="'cifar10', a folder or a zip with test/ (or val/)")
    d.add_argument("--split", default="test", help="which split")
    d.add_argument("--limit", type=int, default=100, help="N images evenly spaced through the split")
    d.add_argument("--cache-dir", help="cache decoded datasets here")
    d.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="deletion / insertion steps")
    d.add_argument("--blur-sigma", type=float, help="insertion start blur σ in pixels (default: side / 16)")
    d.add_argument("--target", choices=["prediction", "label"], default="prediction", help="the class scored")
    d.add_argument("--maps", nargs="+", default=list(DELETION_MAPS), choices=list(MAP_NAMES), help="maps")
    d.add_argument("--batch-size", type=int, default=128, help="perturbed images per forward pass")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")
    d.set_defaults(run=_deletion)
    s = sub.add_parser("sanity", parents=[common], formatter_class=fmt,
                       help="cascading randomisation of the weights (Adebayo et al. 2018) for one image")
    s.add_argument("--image", required=True, help="an image file")
    s.add_argument("--target", type=int, help="the class to explain (default: the trained model's prediction)")
    s.add_argument("--maps", nargs="+", default=list(SANITY_MAPS),
                   choices=["mask", "gradcam", "guided_gradcam", "integrated_gradients", "occlusion"], help="maps")
    s.set_defaults(run=_sanity)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")  # Captum's notices
        warnings.filterwarnings("ignore", message=".*required_grads has been set automatically")
        return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
