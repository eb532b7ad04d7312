"""Soft masks over a whole dataset: ``python -m resattn.masks --checkpoint C --data D --out masks.npz``.

One batched pass (inference mode, channels_last) over a split of a dataset, preprocessed exactly as
``python -m resattn.evaluate`` does (:class:`resattn.preprocess.Preprocessing` from the checkpoint's metadata,
:func:`resattn.data.load_split`), collects for every image its label, the prediction, the confidence (softmax
probability of the predicted class) and every attention module's soft mask M **reduced over channels by the
mean**, each at the module's own resolution. Masks come from :func:`resattn.inspect` (no hooks).

From those per-image maps it derives

* per-class mean masks per module (grouped by the *true* label; NaN for a class without images);
* per-image and per-module statistics of the channel-mean map:

  - ``mean``: the mean mask value;
  - ``fraction_above_half``: the fraction of *positions* whose channel-mean value exceeds 0.5 (note:
    :func:`resattn.maps.mask_statistics` counts entries of the full C×H×W mask instead);
  - ``top20_share``: spatial concentration, the share of the map's mass Σ|m| held by its 20 % highest-|m|
    positions (0.2 for a flat map, 1 when everything sits in a fifth of the positions). |m| because channel
    attention (f2) gives values in [−1, 1]; for the sigmoid masks (mixed, spatial) |m| = m.
  - ``centre_minus_border``: the mean over the middle half of each side (a quarter of the area) minus the mean
    over the rest. Positive where the mask gives the centre, where photographers put the subject, more gain than
    the border; NaN for maps smaller than 4×4, which have no such split.

It also keeps, per image, the mean absolute output of each stage (``stage_response``): the quantity of the paper's
Fig. 4, where the response under naive attention learning collapses after stage 2 while attention residual
learning keeps it. Its mean over a dataset is a measurement of that claim; the explorer's Compare page shows it
for one image.

Module statistics are means over images of the per-image statistics (for ``mean`` that equals the mean over all
positions of all images). ``--limit N`` takes N images *evenly spaced* through the split (folder and zip splits
are sorted by class, so the first N would be one or two classes); the positions used are stored as ``index``.
The output is deterministic: the same command gives byte-identical ``.npz`` files (fixed zip timestamps).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from .data import DataError, Decoded, load_split
from .inspect import inspect
from .preprocess import Preprocessing

__all__ = [
    "REDUCTION",
    "STATISTICS",
    "TOP_FRACTION",
    "MaskSet",
    "spread_indices",
    "concentration",
    "image_statistics",
    "class_means",
    "collect_masks",
    "collect_checkpoint_masks",
    "save_npz",
    "load_npz",
    "summary_table",
    "mask_range",
    "class_mean_grid",
    "main",
]

#: How every mask is reduced over channels before it is stored.
REDUCTION = "channel mean"
#: The per-image / per-module statistics, in table order.
STATISTICS: tuple[str, ...] = ("mean", "fraction_above_half", "top20_share", "centre_minus_border")
#: The share of positions whose mass ``top20_share`` measures.
TOP_FRACTION = 0.2
_STAT_LABELS = {"mean": "mean", "fraction_above_half": "frac > 0.5", "top20_share": "top-20% share",
                "centre_minus_border": "centre - border"}
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: the same data gives the same file bytes


@dataclass
class MaskSet:
    """Channel-mean soft masks of every attention module over a set of images, and what is derived from them.

    ``masks[name]`` is N×h×w float32 at module ``name``'s resolution (names as :attr:`ModuleRecord.name`,
    e.g. ``"stage2.module1"``, in forward order in ``modules``). ``class_means[name]`` is K×h×w (by true label),
    ``image_stats[name][stat]`` N values and ``module_stats[name][stat]`` one value per :data:`STATISTICS`.
    """

    classes: list[str]
    modules: list[str]
    masks: dict[str, np.ndarray]
    labels: np.ndarray  # N int64, the true class
    predictions: np.ndarray  # N int64
    confidence: np.ndarray  # N float32, softmax probability of the predicted class
    index: np.ndarray  # N int64, each image's position in the split
    class_means: dict[str, np.ndarray] = field(default_factory=dict)
    class_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    image_stats: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    module_stats: dict[str, dict[str, float]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)  # provenance: checkpoint, data, split, attention, ...
    stage_response: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))  # N×S mean |output|

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def correct(self) -> np.ndarray:
        """N booleans: prediction equals label."""
        return self.predictions == self.labels

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean()) if len(self) else float("nan")

    def derive(self) -> "MaskSet":
        """(Re)compute class means and statistics from ``masks`` and ``labels``; returns ``self``."""
        k = len(self.classes)
        self.class_counts = np.bincount(self.labels, minlength=k).astype(np.int64)
        self.class_means = {n: class_means(self.masks[n], self.labels, k) for n in self.modules}
        self.image_stats = {n: image_statistics(self.masks[n]) for n in self.modules}
        self.module_stats = {
            n: {s: float(np.mean(v)) if len(v) else float("nan") for s, v in self.image_stats[n].items()}
            for n in self.modules
        }
        return self


def spread_indices(total: int, limit: int | None) -> np.ndarray:
    """``limit`` positions evenly spaced over ``range(total)`` (all of them when ``limit`` is None or larger)."""
    if limit is None or limit >= total:
        return np.arange(total, dtype=np.int64)
    if limit <= 0:
        raise ValueError(f"limit must be positive, got {limit}")
    return np.floor(np.arange(limit) * (total / limit)).astype(np.int64)


def concentration(maps: np.ndarray, fraction: float = TOP_FRACTION) -> np.ndarray:
    """Share of Σ|m| in the ``fraction`` highest-|m| positions of each N×h×w map (NaN for an all-zero map)."""
    a = np.abs(maps.reshape(len(maps), -1).astype(np.float64))
    count = max(1, int(round(fraction * a.shape[1])))
    top = -np.partition(-a, count - 1, axis=1)[:, :count]  # the `count` largest, unordered
    total = a.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, top.sum(axis=1) / total, np.nan)


def centre_minus_border(maps: np.ndarray) -> np.ndarray:
    """Mean of the central region (the middle half of each side) minus the mean of the rest, per N×h×w map."""
    n, h, w = maps.shape
    top, left = h // 4, w // 4
    if top == 0 or left == 0:
        return np.full(n, np.nan)
    a = maps.astype(np.float64)
    centre = a[:, top:h - top, left:w - left]
    border_sum = a.sum(axis=(1, 2)) - centre.sum(axis=(1, 2))
    return centre.mean(axis=(1, 2)) - border_sum / (h * w - centre.shape[1] * centre.shape[2])


def image_statistics(maps: np.ndarray) -> dict[str, np.ndarray]:
    """The :data:`STATISTICS` of each N×h×w channel-mean map (float64, N each)."""
    flat = maps.reshape(len(maps), -1).astype(np.float64)
    return {
        "mean": flat.mean(axis=1),
        "fraction_above_half": (flat > 0.5).mean(axis=1),
        "top20_share": concentration(maps),
        "centre_minus_border": centre_minus_border(maps),
    }


def class_means(maps: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """K×h×w mean map per class (float32); NaN where a class has no images."""
    sums = np.zeros((num_classes, *maps.shape[1:]), np.float64)
    np.add.at(sums, labels, maps.astype(np.float64))
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sums / counts.reshape(-1, *([1] * (maps.ndim - 1)))).astype(np.float32)


def _device(model: nn.Module) -> torch.device:
    return next(iter(model.parameters()), torch.empty(0)).device


def collect_masks(
    model: nn.Module,
    meta: Mapping[str, Any],
    decoded: Decoded,
    batch_size: int = 256,
    *,
    indices: Sequence[int] | np.ndarray | None = None,
    channels_last: bool = True,
    progress: bool = False,
) -> MaskSet:
    """One batched pass of ``model`` over ``decoded`` (uint8 images already resized and cropped as the checkpoint
    expects): predictions, confidences and every module's channel-mean mask, with class means and statistics.

    ``meta`` is the checkpoint's metadata (mean, std, classes). ``indices`` picks images (default: all).
    For speed convert the model first with ``model.to(memory_format=torch.channels_last)``; this function only
    converts its inputs and never changes the model.
    """
    prep = Preprocessing.from_meta(meta)
    device = _device(model)
    idx = np.arange(len(decoded.labels), dtype=np.int64) if indices is None else np.asarray(indices, np.int64)
    n = len(idx)
    masks: dict[str, np.ndarray] = {}
    modules: list[str] = []
    predictions = np.zeros(n, np.int64)
    confidence = np.zeros(n, np.float32)
    response: np.ndarray | None = None
    starts = range(0, n, batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, total=-(-n // batch_size), desc="masks", unit="batch")
    with torch.inference_mode():
        for start in starts:
            chosen = torch.from_numpy(idx[start : start + batch_size])
            x = prep.normalize(decoded.images[chosen].to(device))
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            trace = inspect(model, x)
            probs = torch.softmax(trace.logits.float(), dim=1)
            conf, pred = probs.max(dim=1)
            stop = start + len(chosen)
            predictions[start:stop] = pred.cpu().numpy()
            confidence[start:stop] = conf.cpu().numpy()
            if response is None:
                response = np.zeros((n, len(trace.stage_outputs)), np.float32)
            for s, output in enumerate(trace.stage_outputs):  # Fig. 4: mean |output| of each stage, per image
                response[start:stop, s] = output.float().abs().mean(dim=(1, 2, 3)).cpu().numpy()
            for record in trace.modules:
                reduced = record.mask.float().mean(dim=1).cpu().numpy()
                if record.name not in masks:
                    modules.append(record.name)
                    masks[record.name] = np.zeros((n, *reduced.shape[1:]), np.float32)
                masks[record.name][start:stop] = reduced
    classes = list(meta.get("classes") or decoded.classes)
    attention = (meta.get("overrides") or {}).get("attention") or _attention_of(model)
    info = {"reduction": REDUCTION, "attention": attention, "model": meta.get("model"), "images": n,
            "statistics": list(STATISTICS), "top_fraction": TOP_FRACTION}
    return MaskSet(classes, modules, masks, decoded.labels[torch.from_numpy(idx)].numpy().astype(np.int64),
                   predictions, confidence, idx, meta=info,
                   stage_response=np.zeros((n, 0), np.float32) if response is None else response).derive()


def _attention_of(model: nn.Module) -> str | None:
    config = getattr(model, "config", None)
    return getattr(config, "attention", None)


def collect_checkpoint_masks(
    checkpoint: str | os.PathLike[str],
    data: str,
    split: str = "test",
    limit: int | None = None,
    batch_size: int = 256,
    cache_dir: str | os.PathLike[str] | None = None,
    device: str = "auto",
    progress: bool = False,
) -> MaskSet:
    """Load ``checkpoint`` safely, decode ``split`` of ``data`` as evaluation does, and :func:`collect_masks`."""
    from .checkpoint import file_hash, load_checkpoint

    model, meta = load_checkpoint(checkpoint)
    dev = torch.device("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu")
    model = model.to(dev).to(memory_format=torch.channels_last)
    prep = Preprocessing.from_meta(meta)
    decoded = load_split(data, split, prep.resize, cache_dir, crop=prep.size)
    folders = meta.get("class_folders", meta.get("classes", decoded.classes))
    if decoded.classes != folders:
        raise DataError(f"{data} has classes {decoded.classes}, the checkpoint was trained on {folders}")
    result = collect_masks(model, meta, decoded, batch_size,
                           indices=spread_indices(len(decoded.labels), limit), progress=progress)
    result.meta.update(checkpoint=os.path.basename(os.fspath(checkpoint)), checkpoint_sha256=file_hash(checkpoint),
                       data=os.path.basename(os.fspath(data)), split=split, total_in_split=len(decoded.labels))
    return result


# ------------------------------------------------------------------------------------------------------ files


def _arrays(masks: MaskSet) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {
        "meta": np.array(json.dumps({**masks.meta, "classes": masks.classes, "modules": masks.modules},
                                    sort_keys=True)),
        "labels": masks.labels, "predictions": masks.predictions, "confidence": masks.confidence,
        "index": masks.index, "class_counts": masks.class_counts, "stage_response": masks.stage_response,
    }
    for name in masks.modules:
        out[f"mask/{name}"] = masks.masks[name]
        out[f"class_mean/{name}"] = masks.class_means[name]
        for stat, values in masks.image_stats[name].items():
            out[f"stat/{name}/{stat}"] = values
    return out


def save_npz(path: str | os.PathLike[str], masks: MaskSet) -> None:
    """Write ``masks`` as a compressed ``.npz`` (readable with ``np.load(path)``, no pickles), atomically and
    byte-for-byte reproducibly. Keys: ``meta`` (JSON), ``labels``, ``predictions``, ``confidence``, ``index``,
    ``class_counts``, ``stage_response`` (N×stages), ``mask/<module>``, ``class_mean/<module>``,
    ``stat/<module>/<statistic>``."""
    path = os.fspath(path)
    tmp = path + ".tmp"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
        for key, value in _arrays(masks).items():
            info = zipfile.ZipInfo(key + ".npy", date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            buffer = io.BytesIO()
            value = np.asarray(value)
            np.lib.format.write_array(buffer, value if value.flags.c_contiguous else value.copy(order="C"),
                                      allow_pickle=False)
            zf.writestr(info, buffer.getvalue())
    os.replace(tmp, path)


def load_npz(path: str | os.PathLike[str] | io.BytesIO) -> MaskSet:
    """Read a file written by :func:`save_npz` (never unpickles); module statistics are recomputed. Files written
    before the stage responses were kept load with an N×0 ``stage_response``."""
    with np.load(path, allow_pickle=False) as z:
        info = json.loads(str(z["meta"].reshape(-1)[0]))
        modules = list(info.pop("modules"))
        classes = list(info.pop("classes"))
        response = (z["stage_response"] if "stage_response" in z.files
                    else np.zeros((len(z["labels"]), 0), np.float32))
        result = MaskSet(classes, modules, {n: z[f"mask/{n}"] for n in modules}, z["labels"], z["predictions"],
                         z["confidence"], z["index"], meta=info, stage_response=response)
    return result.derive()


# --------------------------------------------------------------------------------------------- presentation


def summary_table(masks: MaskSet) -> str:
    """A plain-text table: one row per module with its resolution and the :data:`STATISTICS`."""
    m = masks.meta
    head = (f"{m.get('checkpoint', m.get('model', 'model'))} on {m.get('data', 'data')}"
            f"{'/' + m['split'] if m.get('split') else ''}: {len(masks)} images, top-1 {100 * masks.accuracy:.2f}%, "
            f"mask = {REDUCTION} of M ({m.get('attention') or 'unknown'} attention)")
    cols = ["module", "size"] + [_STAT_LABELS[s] for s in STATISTICS]
    rows = []
    for name in masks.modules:
        h, w = masks.masks[name].shape[1:]
        rows.append([name, f"{h}x{w}"] + [f"{masks.module_stats[name][s]:.4f}" for s in STATISTICS])
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
    lines = [head, "  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
    lines.append(f"statistics: means over images; top-20% share of a flat map = {TOP_FRACTION:g}; centre = the middle "
                 "half of each side")
    if masks.stage_response.size:
        means = masks.stage_response.mean(axis=0)
        lines.append("mean |stage output| (the paper's Fig. 4), mean over images: "
                     + ", ".join(f"stage {s} {v:.4f}" for s, v in enumerate(means, start=1)))
    return "\n".join(lines)


Scale = Literal["fixed", "module"]


def mask_range(masks: MaskSet, name: str, scale: Scale = "fixed") -> tuple[float, float]:
    """Colour range of module ``name``'s class means: ``fixed`` is the activation's range ([0, 1] for sigmoid
    masks, [−1, 1] for channel attention); ``module`` the min and max over that module's class means."""
    if scale == "fixed":
        return (-1.0, 1.0) if masks.meta.get("attention") == "channel" else (0.0, 1.0)
    values = masks.class_means[name]
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    return (lo, hi) if hi > lo else (lo - 0.5, hi + 0.5)


def class_mean_grid(masks: MaskSet, path: str | os.PathLike[str] | io.BytesIO, scale: Scale = "module",
                    cmap: str = "viridis") -> None:
    """A PNG grid of per-class mean masks: rows = classes, columns = modules, one colour bar per column.

    The title states the reduction (channel mean) and each column its colour range (see :func:`mask_range`).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows, cols = len(masks.classes), len(masks.modules)
    fig = Figure(figsize=(1.7 * cols + 1.6, 1.3 * rows + 1.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for c, name in enumerate(masks.modules):
        lo, hi = mask_range(masks, name, scale)
        image = None
        for r, cls in enumerate(masks.classes):
            ax = axes[r, c]
            image = ax.imshow(masks.class_means[name][r], vmin=lo, vmax=hi, cmap=cmap, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                h, w = masks.masks[name].shape[1:]
                ax.set_title(f"{name}\n{h}x{w}, [{lo:.3g}, {hi:.3g}]", fontsize=8)
            if c == 0:
                ax.set_ylabel(f"{cls} ({masks.class_counts[r]})", fontsize=8)
        if image is not None:
            fig.colorbar(image, ax=axes[:, c].tolist(), location="bottom", shrink=0.9, aspect=12)
    scale_text = "the activation's range" if scale == "fixed" else "min..max of the module's class means"
    fig.suptitle(f"Per-class mean soft mask M\nreduced over channels: {REDUCTION}; {len(masks)} images by true label"
                 f"\ncolour range per column: {scale_text}", fontsize=8)
    fig.savefig(path, format="png", metadata={"Software": None})


# ------------------------------------------------------------------------------------------------------ CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m resattn.masks", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a .safetensors checkpoint written by resattn")
    p.add_argument("--data", required=True, help="'cifar10', 'cifar10:<root>', a folder or a zip with test/ (or val/)")
    p.add_argument("--split", default="test", help="which split")
    p.add_argument("--limit", type=int, help="use N images evenly spaced through the split")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    p.add_argument("--cache-dir", help="cache decoded datasets here")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="device")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--out", required=True, help="write the masks here (.npz)")
    p.add_argument("--png", help="write a grid of per-class mean masks here (.png)")
    p.add_argument("--png-scale", choices=["module", "fixed"], default="module",
                   help="colour range per column: min..max of the module's class means, or the activation's range")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    result = collect_checkpoint_masks(args.checkpoint, args.data, args.split, args.limit, args.batch_size,
                                      os.path.expanduser(args.cache_dir) if args.cache_dir else None, args.device,
                                      progress=not args.no_progress)
    seconds = time.perf_counter() - start
    save_npz(args.out, result)
    if args.png:
        class_mean_grid(result, args.png, args.png_scale)
    print(summary_table(result))
    print(f"{len(result)} images in {seconds:.1f} s ({len(result) / max(seconds, 1e-9):.0f} images/s, "
          f"{torch.get_num_threads()} threads, decoding included); wrote {args.out}"
          + (f" and {args.png}" if args.png else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
