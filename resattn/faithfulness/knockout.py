"""Does the network need its masks? The knock-out of the Learn page (:func:`resattn.inspect.knockout`) measured over
a dataset: each attention module's mask replaced in turn, and the change in top-1 accuracy and in the true class's
logit, image by image against the intact network.

This is the test that fits a class-agnostic gating map: the soft mask does not claim that some *pixels* are
evidence for one class (what deletion and insertion test), it weights the trunk's features, for every class at
once. Replacing it asks what that weighting contributes to the network's decisions:

* ``zero``: M = 0 (under ARL the module passes its trunk through, H = T; under NAL it outputs 0);
* ``one``: M = 1 (the largest weight everywhere, H = 2T under ARL);
* ``mean``: each channel's spatial mean: keeps *how much* each channel is weighted, removes *where*;
* ``other``: another image's mask at this module (image i gets image ``derangement(N, seed)[i]``'s): a real mask
  with a mask's statistics and layout, that knows nothing about this image.

If the mask's spatial layout mattered for this image, ``mean`` and ``other`` would cost accuracy; if only the
channel weighting mattered, ``mean`` would cost nothing and ``zero`` / ``one`` would. One module is replaced at a
time, the others compute their own masks (from the changed features). Intervals are paired 95% intervals over the
images (:mod:`~resattn.faithfulness.stats`): they measure test-image noise, not seed-to-seed spread of training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..inspect import inspect, knockout
from .saliency import derangement, evaluating
from .stats import PairedDifference, PairedRates, paired_difference, paired_rates

__all__ = ["KNOCKOUT_MODES", "KNOCKOUT_NAMES", "KnockoutEffect", "DatasetKnockout", "knockout_over_dataset"]

#: The replacements, in the order they are reported.
KNOCKOUT_MODES: tuple[str, ...] = ("zero", "one", "mean", "other")
KNOCKOUT_NAMES: dict[str, str] = {"zero": "M = 0", "one": "M = 1", "mean": "spatial mean",
                                  "other": "another image's mask"}


@dataclass(frozen=True)
class KnockoutEffect:
    """One module, one replacement: accuracy and true-class logit against the intact network."""

    stage: int
    index: int
    mode: str
    accuracy: PairedRates  # a: intact, b: knocked out (change = knocked out − intact)
    logit: PairedDifference  # knocked out − intact, the true class's logit
    changed: float  # fraction of images whose top-1 class changed


@dataclass
class DatasetKnockout:
    """Every module × replacement over the same images, and the per-image numbers behind them."""

    effects: list[KnockoutEffect]
    index: np.ndarray  # N positions in the split
    labels: np.ndarray  # N true classes
    intact_logits: np.ndarray  # N × classes
    logits: dict[tuple[int, int, str], np.ndarray]  # (stage, index, mode) → N × classes
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def intact_accuracy(self) -> float:
        return float(np.mean(self.intact_logits.argmax(1) == self.labels))

    def table(self) -> str:
        """One line per module and replacement: accuracy change and true-class logit change, with intervals."""
        n = len(self.labels)
        lines = [f"mask knock-out over {n} images: intact top-1 {100 * self.intact_accuracy:.2f}%; per module and "
                 "replacement, the change (knocked out − intact) with its paired 95% interval",
                 f"{'module':18s} {'mask set to':22s} {'top-1 after':>11s} {'Δ top-1, points':>40s} "
                 f"{'Δ true-class logit':>60s} {'top-1 changed':>14s}"]
        for e in self.effects:
            lines.append(f"{f'stage {e.stage}, module {e.index}':18s} {KNOCKOUT_NAMES[e.mode]:22s} "
                         f"{100 * e.accuracy.rate_b:10.2f}% {e.accuracy.text():>40s} {e.logit.text(3):>60s} "
                         f"{100 * e.changed:13.1f}%")
        lines.append("interval for Δ top-1: normal, from the paired standard error; for Δ logit: t; p-values: "
                     "McNemar's exact test, paired t-test and Wilcoxon signed-rank")
        return "\n".join(lines)


def _logits(model: nn.Module, x: Tensor) -> Tensor:
    return inspect(model, x).logits.float().cpu()


def knockout_over_dataset(
    model: nn.Module,
    meta: Mapping[str, Any],
    images: Tensor,
    labels: Tensor,
    modules: Sequence[tuple[int, int]] | None = None,
    modes: Sequence[str] = KNOCKOUT_MODES,
    *,
    positions: Sequence[int] | np.ndarray | None = None,
    seed: int = 0,
    batch_size: int = 100,
    progress: bool = False,
) -> DatasetKnockout:
    """Knock out each module of ``modules`` (default: every attention module, as (stage, index)) with each of
    ``modes`` over uint8 ``images`` (N×C×H×W, already resized and cropped as the checkpoint expects) with true
    ``labels``; ``meta`` gives the normalisation."""
    from ..preprocess import Preprocessing

    unknown = [m for m in modes if m not in KNOCKOUT_MODES]
    if unknown:
        raise ValueError(f"knock-outs must be among {KNOCKOUT_MODES}, got {unknown}")
    prep = Preprocessing.from_meta(meta)
    device = next(iter(model.parameters()), torch.empty(0)).device
    n = len(images)
    positions = np.arange(n) if positions is None else np.asarray(positions, np.int64)
    others = derangement(n, seed) if "other" in modes else None
    with evaluating(model):
        first = inspect(model, prep.normalize(images[:1].to(device)))
        modules = [(r.stage, r.index) for r in first.modules] if modules is None else list(modules)
        runs = [(stage, index, mode) for stage, index in modules for mode in modes]
        batches: Any = range(0, n, batch_size)
        if progress:
            from tqdm import tqdm

            batches = tqdm(batches, desc="knock-out", unit="batch")
        intact, edited = [], {run: [] for run in runs}  # type: ignore[var-annotated]
        for start in batches:
            x = prep.normalize(images[start : start + batch_size].to(device))
            intact.append(_logits(model, x))
            other = None
            if others is not None:
                other = prep.normalize(images[torch.from_numpy(others[start : start + batch_size])].to(device))
            for stage, index, mode in runs:
                trace = knockout(model, x, stage, index, mode, other=other if mode == "other" else None)  # type: ignore[arg-type]
                edited[(stage, index, mode)].append(trace.logits.float().cpu())
    truth = labels.numpy().astype(np.int64)
    base = torch.cat(intact).numpy()
    rows = np.arange(n)
    effects, logits = [], {}
    for run in runs:
        after = torch.cat(edited[run]).numpy()
        logits[run] = after
        effects.append(KnockoutEffect(
            run[0], run[1], run[2], paired_rates(base.argmax(1) == truth, after.argmax(1) == truth),
            paired_difference(after[rows, truth], base[rows, truth]), float(np.mean(after.argmax(1) != base.argmax(1)))))
    settings = {"seed": seed, "modes": list(modes), "modules": modules}
    return DatasetKnockout(effects, positions, truth, base, logits, settings)
