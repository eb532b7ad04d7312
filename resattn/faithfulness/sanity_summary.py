"""The randomisation cascade (:mod:`~resattn.faithfulness.randomisation`) over several images and several
re-initialisation seeds, summarised: one image and one seed are an anecdote, because how far a map still resembles
the trained model's after a re-initialisation depends strongly on the random weights drawn.

For every image the trained model's maps are computed once; each seed then runs the whole cascade on a fresh copy.
Per map and step, :class:`SanitySummary` reports Spearman's ρ with the trained map, signed and on absolute values
(Adebayo et al. report both), and SSIM: mean and standard deviation over all image × seed runs, their range, and
the spread that the seed alone causes (the standard deviation over seeds, averaged over images). Runs where a map
is constant (ρ undefined) are left out of that map's statistics and counted.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from .randomisation import SANITY_MAPS, Progress, SanityResult, _none, _num, _short, sanity_check
from .saliency import evaluating

__all__ = ["Measure", "SanitySummary", "sanity_over_images"]

Measure = Literal["signed", "absolute", "ssim"]
MEASURE_NAMES = {"signed": "ρ (signed)", "absolute": "ρ (|map|)", "ssim": "SSIM"}


@dataclass
class SanitySummary:
    """Cascade measures per map as images × seeds × steps arrays (step 0: the trained model)."""

    names: list[str]
    blocks: list[str]  # "trained", then the block re-initialised at each step
    seeds: list[int]
    index: np.ndarray  # positions of the images (in the split, or 0 for a single file)
    targets: np.ndarray  # the class every map explains, per image (the trained model's prediction unless given)
    signed: dict[str, np.ndarray]
    absolute: dict[str, np.ndarray]
    ssim: dict[str, np.ndarray]
    probability: np.ndarray  # images × seeds × steps: softmax probability of the target class
    settings: dict[str, Any] = field(default_factory=dict)

    def values(self, measure: Measure, name: str) -> np.ndarray:
        """images × seeds × steps values of ``measure`` for map ``name``."""
        return {"signed": self.signed, "absolute": self.absolute, "ssim": self.ssim}[measure][name]

    def stats(self, measure: Measure, name: str, step: int) -> dict[str, float]:
        """Mean, standard deviation (ddof 1), min and max over the image × seed runs of one step; ``seed_sd``: the
        standard deviation over seeds, averaged over images; ``runs`` and ``undefined`` (NaN) counts."""
        grid = self.values(measure, name)[:, :, step]
        flat = grid[np.isfinite(grid)]
        nan = float("nan")
        out = {"runs": float(grid.size), "undefined": float(grid.size - flat.size), "mean": nan, "sd": nan,
               "min": nan, "max": nan, "seed_sd": nan}
        if flat.size:
            out.update(mean=float(flat.mean()), min=float(flat.min()), max=float(flat.max()),
                       sd=float(flat.std(ddof=1)) if flat.size > 1 else nan)
        if grid.shape[1] > 1:
            with warnings.catch_warnings():  # an image whose map is constant for every seed has no spread
                warnings.simplefilter("ignore", RuntimeWarning)
                per_image = np.nanstd(grid, axis=1, ddof=1)
            if np.isfinite(per_image).any():
                out["seed_sd"] = float(np.nanmean(per_image))
        return out

    def table(self) -> str:
        """One line per map and step: ρ (signed), ρ (|map|) and SSIM as mean ± sd [min, max], and the seed's
        share of the spread."""
        s = self.settings
        lines = [f"randomisation cascade over {len(self.index)} image(s) × {len(self.seeds)} seed(s) "
                 f"({', '.join(map(str, self.seeds))}); maps at stage {s.get('stage')}, module {s.get('index')}, "
                 f"IG with {s.get('ig_steps')} steps; each measure against the trained model's map: mean ± sd over "
                 "the runs [min, max]",
                 f"{'map':10s} {'re-initialised to':18s} {'ρ (signed)':>28s} {'ρ (|map|)':>28s} {'SSIM':>14s} "
                 f"{'sd over seeds':>14s} {'undefined':>9s}"]
        for name in self.names:
            for step, block in enumerate(self.blocks):
                if step == 0:
                    continue
                cells = []
                for measure in ("signed", "absolute"):
                    st = self.stats(measure, name, step)  # type: ignore[arg-type]
                    cells.append(f"{_num(st['mean'])} ± {_num(st['sd'])} [{_num(st['min'])}, {_num(st['max'])}]")
                sim = self.stats("ssim", name, step)
                signed = self.stats("signed", name, step)
                lines.append(f"{_short(name):10s} {block:18s} {cells[0]:>28s} {cells[1]:>28s} "
                             f"{_num(sim['mean']) + ' ± ' + _num(sim['sd']):>14s} {_num(signed['seed_sd']):>14s} "
                             f"{int(signed['undefined']):>4d}/{int(signed['runs'])}")
        lines.append("sd over seeds: the standard deviation of signed ρ between seeds, averaged over images; "
                     "undefined: runs where a map was constant (e.g. Grad-CAM all zero); SSIM compares attributions "
                     "by |A| and the mask by value")
        return "\n".join(lines)


def sanity_over_images(
    model: nn.Module,
    inputs: Tensor,
    targets: Sequence[int | None] | None = None,
    stage: int = 2,
    index: int = 1,
    names: Sequence[str] = SANITY_MAPS,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    *,
    positions: Sequence[int] | np.ndarray | None = None,
    ig_steps: int = 16,
    progress: Progress = _none,
) -> SanitySummary:
    """The cascade for each normalised input (N×C×H×W) and each seed of ``seeds``; ``targets`` per image (None:
    the trained model's prediction). ``progress(done, total, text)`` counts cascades."""
    if not len(seeds):
        raise ValueError("need at least one seed")
    n = len(inputs)
    targets = [None] * n if targets is None else list(targets)
    positions = np.arange(n) if positions is None else np.asarray(positions, np.int64)
    per_image: list[list[SanityResult]] = []
    total = n * len(seeds)
    for i in range(n):
        x = inputs[i : i + 1]
        target = targets[i]
        if target is None:
            with torch.inference_mode(), evaluating(model):
                target = int(model(x).argmax(1))
        results: list[SanityResult] = []
        for seed in seeds:
            progress(i * len(seeds) + len(results), total, f"image {i + 1} of {n}, seed {seed}")
            results.append(sanity_check(model, x, target, stage, index, names, seed=int(seed), ig_steps=ig_steps,
                                        trained=results[0].steps[0] if results else None))
        per_image.append(results)
    progress(total, total, "done")
    blocks = [step.block for step in per_image[0][0].steps]

    def gather(attribute: str, name: str) -> np.ndarray:
        return np.array([[[getattr(step, attribute)[name] for step in r.steps] for r in results]
                         for results in per_image], np.float64)

    probability = np.array([[[step.probability for step in r.steps] for r in results] for results in per_image])
    return SanitySummary(
        list(names), blocks, [int(s) for s in seeds], positions, np.array([r[0].target for r in per_image]),
        {m: gather("spearman", m) for m in names}, {m: gather("spearman_abs", m) for m in names},
        {m: gather("ssim", m) for m in names}, probability,
        {"stage": stage, "index": index, "ig_steps": ig_steps})
