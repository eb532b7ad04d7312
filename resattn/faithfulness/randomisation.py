"""The model randomisation sanity check (Adebayo et al., *Sanity Checks for Saliency Maps*, NeurIPS 2018): does a
map change when the weights it claims to explain are replaced by random ones?

On a deep copy of the model (the caller's model never changes), the blocks are re-initialised from the
classifier downwards, one more per step (cascading randomisation): ``fc`` → ``norm`` (the final BN) → ``tail``
(ImageNet only) → ``stage3`` → ``stage2`` → ``stage1`` → ``stem``; blocks without parameters are skipped.
Re-initialisation is the network's own training initialisation (§4.1, :mod:`resattn.networks`): He normal
(fan-out) convolutions, N(0, 0.01²) classifier weights, zero biases, BatchNorm γ = 1, β = 0 with running
statistics reset to mean 0, variance 1: each block as it was before training, drawn from a ``torch.Generator``
seeded with ``seed`` (default 0), so the check is deterministic. The target class stays fixed (the trained
model's prediction unless given). After each step every map is recomputed and compared with the trained model's
map by Spearman's rank correlation (``scipy.stats.spearmanr``) twice, as Adebayo et al. do: on the maps as they
are (signed) and on their absolute values; and by SSIM (scikit-image's ``structural_similarity``, 7×7 window, on
maps min-max normalised to [0, 1], attributions by |A| and the mask by its value; a NumPy/PyTorch implementation
of the same formula when scikit-image is missing). Every measure is NaN when either map is constant (Grad-CAM is
all zero when no channel weighs positively).

What the check can show, and what it cannot. A map that hardly changes when the weights it claims to explain are
destroyed explains the architecture (or the input), not what was learned. For the soft mask the first part holds
**by construction**: stage k's mask is computed before every layer above it, so re-initialising the classifier,
the tail or a later stage cannot change it, and re-initialising its own stage must. That is what a class-agnostic
map computed inside the network does; it is not evidence that the mask is a faithful explanation, only that it is
the output of its own stage's weights. How far it then changes measures how much of the trained mask the random
stage reproduces from the same input. One image and one re-initialisation seed are an anecdote: correlations
after a re-initialisation vary widely with the seed; :mod:`~resattn.faithfulness.sanity_summary` runs the cascade
over several images and seeds.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .saliency import MAP_NAMES, evaluating, saliency_maps

__all__ = [
    "SANITY_MAPS",
    "CASCADE",
    "cascade_blocks",
    "reinitialise_",
    "randomisation_cascade",
    "rank_correlation",
    "ssim",
    "SanityStep",
    "SanityResult",
    "sanity_check",
    "compared",
]

#: ``progress(done, total, text)``, called between the steps of the cascade.
Progress = Callable[[int, int, str], None]

#: Maps recomputed in the randomisation sanity check (random and centre do not depend on weights).
SANITY_MAPS: tuple[str, ...] = ("mask", "gradcam", "guided_gradcam", "integrated_gradients")
#: Blocks of the randomisation cascade, from the classifier down; missing or parameter-free blocks are skipped.
CASCADE: tuple[str, ...] = ("fc", "norm", "tail", "stage3", "stage2", "stage1", "stem")


# ------------------------------------------------------------------------------------------------- the cascade


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


# -------------------------------------------------------------------------------------- similarity of two maps


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


# --------------------------------------------------------------------------------------------------- the check


@dataclass
class SanityStep:
    """One step of the cascade: every map, and how far each still resembles the trained model's."""

    block: str  # "trained", or the block re-initialised at this step
    reinitialised: tuple[str, ...]  # every state-dict key re-initialised so far
    maps: dict[str, np.ndarray]
    spearman: dict[str, float]  # Spearman ρ of the maps as they are (signed)
    ssim: dict[str, float]
    probability: float  # softmax probability of the (fixed) target class
    prediction: int
    spearman_abs: dict[str, float] = field(default_factory=dict)  # Spearman ρ of the absolute values


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
        """One row per step: target probability, then ρ, ρ of |map| and SSIM of every map against the trained map."""
        head = [f"{'re-initialised down to':24s}", f"{'p(target)':>9s}"]
        head += [f"{_short(n) + ' ρ / ρ|·| / SSIM':>28s}" for n in self.names]
        lines = [f"randomisation cascade (target class {self.target}, maps at stage {self.stage}, module "
                 f"{self.index}, seed {self.settings.get('seed', 0)})", " ".join(head)]
        for step in self.steps:
            cells = [f"{step.block:24s}", f"{step.probability:9.4f}"]
            cells += [f"{' / '.join(_num(v[n]) for v in (step.spearman, step.spearman_abs, step.ssim)):>28s}"
                      for n in self.names]
            lines.append(" ".join(cells))
        lines.append("ρ: Spearman rank correlation of the maps as they are, ρ|·|: of their absolute values; SSIM on "
                     "maps scaled to [0, 1] (attributions by |A|, the mask by value); nan: a constant map")
        return "\n".join(lines)


def _short(name: str) -> str:
    return {"mask": "mask M", "integrated_gradients": "IG", "guided_gradcam": "Guided GC"}.get(name, MAP_NAMES.get(name, name))


def _num(value: float) -> str:
    return "nan" if not np.isfinite(value) else f"{value:.3f}"


def compared(name: str, a: np.ndarray) -> np.ndarray:
    """What SSIM compares: the mask by its value, attributions by magnitude |A|."""
    return a if name == "mask" else np.abs(a)


def _none(done: int, total: int, text: str) -> None:  # noqa: ARG001 - the default progress
    return None


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
    progress: Progress = _none,
    trained: SanityStep | None = None,
) -> SanityResult:
    """Cascading randomisation (see the module docstring) for one normalised 1×C×H×W input: every map of
    ``names`` at each step, with Spearman ρ (signed and absolute) and SSIM against the trained model's map.
    ``model`` is not changed. ``trained``: the trained model's step from an earlier call on the same input, target
    and maps (another seed), which is then not recomputed."""

    def measure(net: nn.Module, block: str, done: tuple[str, ...], cls: int) -> SanityStep:
        maps = saliency_maps(net, x, cls, stage, index, names, seed=seed, ig_steps=ig_steps)
        with torch.inference_mode(), evaluating(net):
            probs = torch.softmax(net(x).float(), dim=1)[0]
        return SanityStep(block, done, maps, {}, {}, float(probs[cls]), int(probs.argmax()))

    if target is None:
        with torch.inference_mode(), evaluating(model):
            target = int(model(x).argmax(1))
    total = len(cascade_blocks(model)) + 1
    progress(0, total, "maps of the trained model")
    steps = [trained if trained is not None else measure(model, "trained", (), target)]
    for number, (block, randomised, done) in enumerate(randomisation_cascade(model, seed), start=1):
        progress(number, total, f"re-initialised down to {block}")
        steps.append(measure(randomised, block, done, target))
    progress(total, total, "done")
    reference = steps[0].maps
    for step in steps[1:] if trained is not None else steps:
        for n in names:
            step.spearman[n] = rank_correlation(reference[n], step.maps[n])
            step.spearman_abs[n] = rank_correlation(np.abs(reference[n]), np.abs(step.maps[n]))
            step.ssim[n] = ssim(compared(n, reference[n]), compared(n, step.maps[n]))
    return SanityResult(int(target), stage, index, list(names), steps, {"seed": seed, "ig_steps": ig_steps})
