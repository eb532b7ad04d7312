"""The paper's reported results, and how a set of checkpoints measures up to its comparisons.

The figures are those of Wang et al. (CVPR 2017, arXiv v1): Table 1 (mask activations), Table 3 (attention residual
learning against naive attention learning), Table 4 (mask structure) and Table 7 (ImageNet). :func:`contrasts` puts
checkpoints side by side the way those tables do, and says when two of them can be compared at all (one training
budget) and how large a difference the test set alone can resolve: with McNemar's exact test
(:func:`paired_comparison`) where both checkpoints' per-image test results are known, otherwise two standard errors
of two independent accuracies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

__all__ = ["PaperResult", "Contrast", "ContrastRow", "RESULTS", "CONTRASTS", "PHOTO_CONTRASTS", "paper_result",
           "variant", "contrasts", "test_images", "budget_key", "summary_rows", "tables_words", "paper_gaps",
           "paired_comparison", "Outcomes", "SIGNIFICANCE", "ATTENTION_ORDER", "variant_rank", "p_words",
           "unpaired_noise", "against_paper"]

#: McNemar's p below which a paired gap counts as beyond test-set noise.
SIGNIFICANCE = 0.05


@dataclass(frozen=True)
class PaperResult:
    """One reported figure: the top-1 error (%) of a network variant on a dataset, and the table it comes from."""

    model: str
    attention: str
    learning: str
    mask: str
    dataset: str
    error: float
    table: str

    @property
    def accuracy(self) -> float:
        """Top-1 accuracy in percent."""
        return 100.0 - self.error

    def describe(self) -> str:
        """e.g. ``94.48% (Table 1: 5.52% error)``."""
        return f"{self.accuracy:.2f}% ({self.table}: {self.error:.2f}% error)"


#: Every figure the paper reports for a variant this package builds. Attention-56 mixed ARL with the hourglass
#: mask (5.52%) appears in Tables 1, 3 and 4; it is listed once, under Table 1.
RESULTS: tuple[PaperResult, ...] = (
    PaperResult("attention56_cifar", "mixed", "arl", "hourglass", "CIFAR-10", 5.52, "Table 1"),
    PaperResult("attention56_cifar", "channel", "arl", "hourglass", "CIFAR-10", 6.24, "Table 1"),
    PaperResult("attention56_cifar", "spatial", "arl", "hourglass", "CIFAR-10", 6.33, "Table 1"),
    PaperResult("attention56_cifar", "mixed", "nal", "hourglass", "CIFAR-10", 5.89, "Table 3"),
    PaperResult("attention56_cifar", "mixed", "arl", "local", "CIFAR-10", 6.48, "Table 4"),
    PaperResult("attention92_cifar", "mixed", "arl", "hourglass", "CIFAR-10", 4.99, "Table 3"),
    PaperResult("attention92_cifar", "mixed", "nal", "hourglass", "CIFAR-10", 5.35, "Table 3"),
    PaperResult("attention128_cifar", "mixed", "arl", "hourglass", "CIFAR-10", 4.44, "Table 3"),
    PaperResult("attention128_cifar", "mixed", "nal", "hourglass", "CIFAR-10", 5.57, "Table 3"),
    PaperResult("attention164_cifar", "mixed", "arl", "hourglass", "CIFAR-10", 4.31, "Table 3"),
    PaperResult("attention164_cifar", "mixed", "nal", "hourglass", "CIFAR-10", 7.18, "Table 3"),
    PaperResult("attention56_imagenet", "mixed", "arl", "hourglass", "ImageNet-1k", 21.76, "Table 7"),
)

Variant = tuple[str, str, str, str]  # (model, attention, learning, mask)


def _mapping(value: Any) -> Mapping[str, Any]:
    """A metadata field that should be a mapping, or an empty one (metadata comes from files of any origin)."""
    return value if isinstance(value, Mapping) else {}


def variant(meta: Mapping[str, Any]) -> Variant:
    """(model, attention, learning, mask) of a checkpoint's metadata, with the package defaults filled in."""
    overrides = _mapping(meta.get("overrides"))
    return (str(meta.get("model", "?")), str(overrides.get("attention", "mixed")),
            str(overrides.get("learning", "arl")), str(overrides.get("mask", "hourglass")))


#: The attention types in the order of the paper's Table 1 (its best first).
ATTENTION_ORDER: tuple[str, ...] = ("mixed", "channel", "spatial")


def variant_rank(meta: Mapping[str, Any]) -> tuple[int, str, str]:
    """Sort key of a checkpoint's variant: mixed, channel, spatial attention (Table 1's order), ARL before NAL,
    hourglass before local: the paper's own variant first, e.g. to pick a default among a family."""
    _, attention, learning, mask = variant(meta)
    rank = ATTENTION_ORDER.index(attention) if attention in ATTENTION_ORDER else len(ATTENTION_ORDER)
    return rank, learning, mask


def paper_result(model: str, attention: str = "mixed", learning: str = "arl",
                 mask: str = "hourglass") -> PaperResult | None:
    """The paper's figure for this variant, or ``None`` where it reports none."""
    for result in RESULTS:
        if (result.model, result.attention, result.learning, result.mask) == (model, attention, learning, mask):
            return result
    return None


@dataclass(frozen=True)
class Contrast:
    """A comparison the paper makes: variant ``a`` (its better one) against ``b``, all else equal."""

    table: str
    question: str
    model: str
    a: tuple[str, str, str]  # (attention, learning, mask)
    b: tuple[str, str, str]

    def words(self) -> str:
        """The comparison as a line states it: the paper's gap, or that the paper makes it on CIFAR-10 only."""
        gap = self.paper_gap()
        if gap is None:
            return f"the paper compares these on CIFAR-10 only ({self.table})"
        return f"error gap in the paper {gap:.2f} points"

    def paper_gap(self) -> float | None:
        """The paper's error of ``b`` minus that of ``a``, in points (positive: ``a`` is better)."""
        first, second = paper_result(self.model, *self.a), paper_result(self.model, *self.b)
        return None if first is None or second is None else round(second.error - first.error, 2)


#: The paper's comparisons: (table, question, its better variant, the other), each (attention, learning, mask).
_COMPARISONS = (
    ("Table 1", "mixed vs channel", ("mixed", "arl", "hourglass"), ("channel", "arl", "hourglass")),
    ("Table 1", "mixed vs spatial", ("mixed", "arl", "hourglass"), ("spatial", "arl", "hourglass")),
    ("Table 3", "ARL vs NAL", ("mixed", "arl", "hourglass"), ("mixed", "nal", "hourglass")),
    ("Table 4", "hourglass vs local mask", ("mixed", "arl", "hourglass"), ("mixed", "arl", "local")),
)

CONTRASTS: tuple[Contrast, ...] = tuple(
    Contrast(table, question, model, a, b)
    for model in ("attention56_cifar", "attention92_cifar", "attention128_cifar", "attention164_cifar")
    for table, question, a, b in _COMPARISONS
    if paper_result(model, *a) is not None and paper_result(model, *b) is not None
)

#: The paper's Table 1 and 3 comparisons on photos (the half-width Imagenette models), which the paper does not
#: make: rows without a paper figure, the same verdict from the same test-set noise.
PHOTO_CONTRASTS: tuple[Contrast, ...] = tuple(
    Contrast(table, question, "attention56_imagenet", a, b)
    for table, question, a, b in _COMPARISONS if table in ("Table 1", "Table 3")
)

#: Recipe fields that do not change what a run learns (paths, devices, bookkeeping), that name the variant itself, or
#: the seed (runs with different seeds are an equally fair comparison).
_NOT_BUDGET = {"attention", "learning", "mask", "data", "device", "threads", "resume", "save_every", "compile", "cuda_graphs",
               "probe", "bf16", "channels_last", "eval_batch_size", "stop_after", "classes", "seed"}


def budget_key(meta: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """What must match for two checkpoints to be a fair comparison: dataset, architecture revision, epochs, label
    noise and every training setting of the recipe except the variant's own (attention, learning rule, mask)."""
    recipe = {k: v for k, v in _mapping(meta.get("recipe")).items() if k not in _NOT_BUDGET}
    fields = {**recipe, "dataset": meta.get("dataset"), "arch_revision": meta.get("arch_revision", 1),
              "epochs": meta.get("epochs"), "label_noise": meta.get("label_noise", 0.0),
              "init_from": _mapping(meta.get("init_from")).get("checkpoint")}
    return tuple(sorted((k, repr(v)) for k, v in fields.items()))


_CIFAR10_TEST = 10_000


def test_images(meta: Mapping[str, Any]) -> int | None:
    """How many test images the checkpoint's accuracy was measured on: recorded by the trainer, or the whole
    CIFAR-10 test split (10,000 images) for older CIFAR-10 checkpoints trained without a test limit."""
    recorded = _mapping(meta.get("metrics")).get("test_images")
    if isinstance(recorded, int) and recorded > 0:
        return recorded
    recipe = _mapping(meta.get("recipe"))
    if _is_cifar10(meta) and recipe.get("test_limit") is None:
        return _CIFAR10_TEST
    return None


def _is_cifar10(meta: Mapping[str, Any]) -> bool:
    """Whether the checkpoint was trained on CIFAR-10 (dataset names such as ``cifar10``, ``cifar10-jpeg``)."""
    return str(meta.get("dataset", "")).lower().startswith("cifar10")


def _top1(meta: Mapping[str, Any]) -> float | None:
    value = _mapping(meta.get("metrics")).get("test_top1")
    return float(value) if isinstance(value, (int, float)) and 0 <= value <= 1 else None


@dataclass(frozen=True)
class Outcomes:
    """Which test images a checkpoint gets right: the split (a digest of its labels in order) and one boolean per
    image. Two checkpoints with the same ``images`` digest were tested on the same images in the same order."""

    images: str
    correct: np.ndarray


def paired_comparison(correct_a: np.ndarray, correct_b: np.ndarray) -> dict:
    """Compare two models' per-image correctness on the same images (booleans, one per image).

    Returns the counts of the 2×2 table (``both``, ``only_a``, ``only_b``, ``neither``), the gap in top-1
    (a − b, in points), its paired standard error 100·√(n₁₀ + n₀₁ − (n₁₀ − n₀₁)²/n) / n, and McNemar's exact
    two-sided p-value: under "no difference" the images only one model gets right fall to either side with
    probability ½ (a binomial test on the discordant pairs; 1 when there are none).
    """
    from scipy.stats import binomtest

    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise ValueError(f"need two equal, non-empty per-image vectors, got {a.shape} and {b.shape}")
    n = len(a)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    discordant = only_a + only_b
    p = 1.0 if discordant == 0 else float(binomtest(only_a, discordant, 0.5).pvalue)
    return {
        "images": n, "both": int(np.sum(a & b)), "only_a": only_a, "only_b": only_b, "neither": int(np.sum(~a & ~b)),
        "gap_points": 100.0 * (only_a - only_b) / n,
        "gap_se_points": 100.0 * float(np.sqrt(max(discordant - (only_a - only_b) ** 2 / n, 0.0))) / n,
        "mcnemar_p": p,
    }


def p_words(p: float) -> str:
    """A p-value as a line states it: two significant digits, and "p < 0.001" below that (no 1.2e-26 on a slide)."""
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


@dataclass(frozen=True)
class ContrastRow:
    """One of the paper's comparisons between two checkpoints (``a``: the variant the paper finds better)."""

    contrast: Contrast
    a: str
    b: str
    error_a: float  # percent
    error_b: float
    comparable: bool
    reason: str  # why not comparable, or ""
    noise: float | None  # two standard errors of the gap from test-set sampling alone, in points
    paired: dict | None = None  # paired_comparison of the two on the same test images (a first), when both are known

    @property
    def gap(self) -> float:
        """Error of ``b`` minus error of ``a``, in points (positive: agrees in sign with the paper)."""
        return self.error_b - self.error_a

    def verdict(self) -> str:
        """What the gap says, in words that stay true for one seed per variant (a gap beyond test-set noise is a
        hint: seed-to-seed spread is not measured). With both checkpoints' per-image results, McNemar's exact test
        decides (p < :data:`SIGNIFICANCE`), on the sign of the paired gap; otherwise two standard errors."""
        if not self.comparable:
            return f"not comparable: {self.reason}"
        if self.paired is not None:
            p, gap = self.paired["mcnemar_p"], self.paired["gap_points"]
            if p >= SIGNIFICANCE or gap == 0:
                return f"within test-set noise (McNemar's {p_words(p)})"
            side = "same order as the paper" if gap > 0 else "opposite order to the paper"
            return f"{side}, beyond test-set noise (McNemar's {p_words(p)}); one seed each"
        if self.noise is None:
            return "test-set size unknown: cannot say how large a gap is noise"
        if abs(self.gap) < self.noise:
            return f"within test-set noise (|gap| < {self.noise:.2f})"
        side = "same order as the paper" if self.gap > 0 else "opposite order to the paper"
        return f"{side}, beyond test-set noise; one seed each"


def _difference(meta_a: Mapping[str, Any], meta_b: Mapping[str, Any]) -> str:
    """Why two checkpoints' budgets differ, briefly ("" if they match)."""
    key_a, key_b = dict(budget_key(meta_a)), dict(budget_key(meta_b))
    differing = sorted(k for k in key_a.keys() | key_b.keys() if key_a.get(k) != key_b.get(k))
    if not differing:
        return ""
    if "epochs" in differing:
        epochs = [meta.get("epochs") for meta in (meta_a, meta_b)]
        if all(isinstance(e, (int, float)) for e in epochs):
            return f"different budgets ({epochs[0]:g} vs {epochs[1]:g} epochs)"
        return "different budgets"
    return "different training settings (" + ", ".join(differing[:4]) + ("…" if len(differing) > 4 else "") + ")"


def contrasts(checkpoints: Mapping[str, Mapping[str, Any]],
              outcomes: Mapping[str, Outcomes] | None = None) -> list[ContrastRow]:
    """The paper's comparisons (Tables 1, 3 and 4) among ``checkpoints`` (name → metadata): one row for every
    pair of trained checkpoints on CIFAR-10 that differ the way a comparison does, then the same comparisons
    among the photo models (:data:`PHOTO_CONTRASTS`, whose rows have no paper gap).

    ``noise`` is twice the standard error of the gap between two accuracies measured on n test images each,
    treated as independent samples, √(p_a(1−p_a)/n + p_b(1−p_b)/n). Both are measured on the same images; where
    the two models' mistakes overlap, as they usually do, the true sampling error of the gap is smaller.
    Seed-to-seed spread, which one seed per variant cannot measure, comes on top. Where ``outcomes`` (name →
    :class:`Outcomes`) holds both checkpoints' results on the same images, the row also carries their
    :func:`paired_comparison`, and its noise is two paired standard errors. A pair that differs in more than the
    variant is listed, as not comparable, only when no comparable pair answers the same comparison.
    """
    outcomes = outcomes or {}
    photo_models = {c.model for c in PHOTO_CONTRASTS}
    trained = {name: meta for name, meta in checkpoints.items() if _top1(meta) is not None
               and (_is_cifar10(meta) or variant(meta)[0] in photo_models)}
    rows = []
    for contrast in CONTRASTS + PHOTO_CONTRASTS:
        found: list[ContrastRow] = []
        firsts = [n for n, m in trained.items() if variant(m) == (contrast.model, *contrast.a)]
        seconds = [n for n, m in trained.items() if variant(m) == (contrast.model, *contrast.b)]
        for name_a in firsts:
            for name_b in seconds:
                meta_a, meta_b = trained[name_a], trained[name_b]
                p_a, p_b = _top1(meta_a), _top1(meta_b)
                assert p_a is not None and p_b is not None
                reason = _difference(meta_a, meta_b)
                n_a, n_b = test_images(meta_a), test_images(meta_b)
                noise = None if not n_a or not n_b else unpaired_noise(p_a, n_a, p_b, n_b)
                paired = None
                found_a, found_b = outcomes.get(name_a), outcomes.get(name_b)
                if found_a is not None and found_b is not None and found_a.images == found_b.images:
                    paired = paired_comparison(found_a.correct, found_b.correct)
                    noise = 2 * paired["gap_se_points"]
                found.append(ContrastRow(contrast, name_a, name_b, 100 * (1 - p_a), 100 * (1 - p_b),
                                         comparable=not reason, reason=reason, noise=noise, paired=paired))
        # a checkpoint trained another way (the paper's recipe beside the fast set) makes pairs that compare
        # budgets, not variants: say so only where no pair answers the comparison
        rows += [r for r in found if r.comparable] or found
    return rows


def unpaired_noise(p_a: float, n_a: int, p_b: float, n_b: int) -> float:
    """Two standard errors (points) of the gap between accuracies ``p_a`` and ``p_b`` (fractions) measured on
    ``n_a`` and ``n_b`` test images, counted as independent samples: √(p_a(1−p_a)/n_a + p_b(1−p_b)/n_b)."""
    return 200 * math.sqrt(p_a * (1 - p_a) / n_a + p_b * (1 - p_b) / n_b)


def _as_the_paper_built(meta: Mapping[str, Any]) -> bool:
    """Whether a checkpoint is its variant as the paper builds it: full width and trained from scratch (not
    fine-tuned from another checkpoint)."""
    width = _mapping(meta.get("overrides")).get("width_mult", _mapping(meta.get("recipe")).get("width_mult", 1.0))
    return width == 1.0 and not meta.get("init_from")


def against_paper(meta: Mapping[str, Any]) -> str | None:
    """For a checkpoint trained with the paper's own recipe (``--recipe paper``), as the paper builds it, on
    CIFAR-10: how far its final-epoch accuracy lies from the paper's figure for its variant, and whether that is
    beyond test-set noise (:func:`unpaired_noise`: the paper's per-image results are not published, so no paired
    test). ``None`` for any other checkpoint: a shorter recipe's gap to the paper measures the budget."""
    top1, result, n = _top1(meta), paper_result(*variant(meta)), test_images(meta)
    if (_mapping(meta.get("recipe")).get("recipe") != "paper" or top1 is None or result is None or not n
            or result.dataset != "CIFAR-10" or not _is_cifar10(meta) or not _as_the_paper_built(meta)):
        return None
    gap = 100 * top1 - result.accuracy
    noise = unpaired_noise(top1, n, result.accuracy / 100, _CIFAR10_TEST)
    if abs(gap) < noise:
        return (f"{100 * top1:.2f}% against the paper's {result.accuracy:.2f}%: within test-set noise (|gap| "
                f"{abs(gap):.2f} < {noise:.2f} points, two standard errors), so it reproduces {result.table}")
    return (f"{abs(gap):.2f} points {'below' if gap < 0 else 'above'} the paper's {result.accuracy:.2f}% "
            f"({result.table}), beyond test-set noise (two standard errors of the gap: {noise:.2f} points)")


def summary_rows(checkpoints: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per trained CIFAR-10 checkpoint of a variant the paper reports a figure for: its final-epoch test
    error beside the paper's. Networks narrower or wider than the paper's, and fine-tuned ones, are not that
    variant and get no row."""
    rows = []
    for name, meta in checkpoints.items():
        top1, result = _top1(meta), paper_result(*variant(meta))
        if top1 is None or result is None or result.dataset != "CIFAR-10" or not _is_cifar10(meta):
            continue
        if not _as_the_paper_built(meta):
            continue
        rows.append({"checkpoint": name, "epochs": meta.get("epochs"), "test error (%)": 100 * (1 - top1),
                     "paper error (%)": result.error, "paper table": result.table})
    return rows


def _table_number(table: str) -> tuple[int, str]:
    """Sort key of a table's name: ``Table 3`` before ``Table 10``."""
    number = table.rsplit(" ", 1)[-1]
    return (int(number), table) if number.isdigit() else (10**6, table)


def tables_words(tables: Iterable[str]) -> str:
    """The tables named in a sentence, in their order in the paper: ``Table 1``, ``Tables 1 and 3``,
    ``Tables 1, 3 and 4`` (empty for none), so a heading names exactly the tables that have rows under it."""
    numbers = [t.removeprefix("Table ") for t in sorted(set(tables), key=_table_number)]
    if not numbers:
        return ""
    if len(numbers) == 1:
        return f"Table {numbers[0]}"
    return f"Tables {', '.join(numbers[:-1])} and {numbers[-1]}"


def paper_gaps(model: str) -> list[float]:
    """The paper's error gaps (points) in every comparison it makes for ``model``, smallest first."""
    return sorted(gap for c in CONTRASTS if c.model == model and (gap := c.paper_gap()) is not None)
