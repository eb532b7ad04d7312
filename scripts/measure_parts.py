"""How much of a learned mask its parts explain, and how concentrated the parts are, over a dataset split.

For N images spread evenly over a split (``resattn.masks.spread_indices``; the split is class-sorted) and preprocessed
exactly as evaluation does, it takes each stage's **last** attention module (``--modules all`` for every module; in
Attention-56 each stage has one, so the two agree) and per image and module measures

* the explained fraction (:func:`resattn.parts.mask_parts`) at each k of ``--ks`` (default 2, 4, 8), and the k
  that ``k=None`` chooses with its explained fraction;
* how concentrated the parts at that automatic k are: the top-20% share (:func:`resattn.parts.concentration`,
  0.2 for a flat map, 1 when all the mass sits in a fifth of the positions) of each part's map, averaged over the
  parts **weighted by their energy share** (the plain mean over parts is given too);
* the same top-20% share of the channel-mean mask: as ``python -m resattn.masks`` reports it (of the raw values,
  which all sit around a common level, so near 0.2), and **above its minimum**, which is how a part is measured
  (each channel's floor is subtracted before factorising): the like-for-like comparison.

It prints a Markdown table (mean ± standard deviation over images) and, with ``--json``, writes every summary
(with the 10th and 90th percentiles and, per image, every value). A mask with no spatial variation has no parts: it
counts in ``flat`` and is left out of the parts' concentration.

    python scripts/measure_parts.py --checkpoint checkpoints/attention56_cifar_mixed_arl.safetensors \\
        --data path/to/cifar10-jpeg.zip --limit 300 [--split test] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from resattn import inspect, load_checkpoint  # noqa: E402
from resattn.data import DataError, load_split  # noqa: E402
from resattn.masks import spread_indices  # noqa: E402
from resattn.parts import TOP_FRACTION, concentration, mask_parts  # noqa: E402
from resattn.preprocess import Preprocessing  # noqa: E402

KS: tuple[int, ...] = (2, 4, 8)


@dataclass
class ModuleMeasures:
    """Per-image measures of one module's mask (one list entry per image)."""

    name: str
    shape: tuple[int, int, int]  # C×H×W
    explained: dict[int, list[float]] = field(default_factory=dict)  # fixed k → explained fraction
    auto_k: list[int] = field(default_factory=list)
    auto_explained: list[float] = field(default_factory=list)
    parts_weighted: list[float] = field(default_factory=list)  # energy-weighted top-20% share of the parts (NaN: flat)
    parts_plain: list[float] = field(default_factory=list)  # plain mean over the parts (NaN: flat)
    mean_raw: list[float] = field(default_factory=list)  # channel mean's top-20% share, raw values
    mean_above_min: list[float] = field(default_factory=list)  # channel mean's top-20% share above its minimum

    def add(self, mask: np.ndarray, attention: str | None, ks: Sequence[int]) -> None:
        """Measure one image's mask (C×H×W)."""
        auto = mask_parts(mask, None, attention=attention)  # type: ignore[arg-type]
        for k in ks:  # a k the automatic choice already fitted is the same deterministic factorisation
            value = auto.explained_by_k.get(k)
            self.explained.setdefault(k, []).append(
                value if value is not None else mask_parts(mask, k, attention=attention).explained)  # type: ignore[arg-type]
        self.auto_k.append(auto.k)
        self.auto_explained.append(auto.explained)
        shares = np.array([concentration(m) for m in auto.maps])
        self.parts_weighted.append(float(shares @ auto.energy) if auto.k else float("nan"))
        self.parts_plain.append(float(shares.mean()) if auto.k else float("nan"))
        values = (mask + 1) / 2 if auto.transform == "(1 + M) / 2" else mask
        channel_mean = mask.mean(axis=0)
        above = values.mean(axis=0) - values.mean(axis=0).min()
        self.mean_raw.append(concentration(channel_mean))
        self.mean_above_min.append(concentration(above))

    def summary(self) -> dict[str, Any]:
        """Mean, standard deviation and 10th/90th percentiles over images of every measure."""
        weighted, above = np.array(self.parts_weighted), np.array(self.mean_above_min)
        paired = ~np.isnan(weighted)
        return {
            "module": self.name, "mask": "x".join(map(str, self.shape)), "images": len(self.auto_k),
            "flat": int((np.array(self.auto_k) == 0).sum()),
            **{f"explained_k{k}": _stats(v) for k, v in self.explained.items()},
            "auto_k": {**_stats(self.auto_k), "counts": {str(k): int(n) for k, n in
                                                         zip(*np.unique(self.auto_k, return_counts=True))}},
            "explained_auto": _stats(self.auto_explained),
            "parts_top20_energy_weighted": _stats(self.parts_weighted),
            "parts_top20_plain": _stats(self.parts_plain),
            "channel_mean_top20_raw": _stats(self.mean_raw),
            "channel_mean_top20_above_min": _stats(self.mean_above_min),
            "share_parts_more_concentrated": round(float((weighted[paired] > above[paired]).mean()), 4)
            if paired.any() else None,
        }


def _stats(values: Sequence[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    a = a[~np.isnan(a)]
    if a.size == 0:
        return {"mean": None, "sd": None, "p10": None, "p90": None}  # type: ignore[dict-item]
    return {"mean": round(float(a.mean()), 4), "sd": round(float(a.std()), 4),
            "p10": round(float(np.percentile(a, 10)), 4), "p90": round(float(np.percentile(a, 90)), 4)}


def measure(checkpoint: str, data: str, split: str = "test", limit: int | None = 300, ks: Sequence[int] = KS,
            modules: str = "last", batch_size: int = 32, cache_dir: str | None = None) -> dict[str, Any]:
    """Measure every chosen module's mask over ``limit`` spread images of ``split``; returns a JSON-ready dict."""
    model, meta = load_checkpoint(checkpoint)
    prep = Preprocessing.from_meta(meta)
    decoded = load_split(data, split, prep.resize, cache_dir, crop=prep.size)
    folders = meta.get("class_folders", meta.get("classes", decoded.classes))
    if decoded.classes != folders:
        raise DataError(f"{data} has classes {decoded.classes}, the checkpoint was trained on {folders}")
    attention = (meta.get("overrides") or {}).get("attention")
    index = spread_indices(len(decoded.labels), limit)
    measures: dict[str, ModuleMeasures] = {}
    correct = 0
    start = time.perf_counter()
    for first in range(0, len(index), batch_size):
        chosen = torch.from_numpy(index[first:first + batch_size])
        with torch.inference_mode():
            trace = inspect(model, prep.normalize(decoded.images[chosen]))
        correct += int((trace.logits.argmax(dim=1) == decoded.labels[chosen]).sum())
        records = trace.modules if modules == "all" else [
            [r for r in trace.modules if r.stage == s][-1] for s in sorted({r.stage for r in trace.modules})]
        for record in records:
            masks = record.mask.float().numpy()
            entry = measures.setdefault(record.name, ModuleMeasures(record.name, tuple(masks.shape[1:])))
            for mask in masks:
                entry.add(mask, attention, ks)
    return {
        "checkpoint": os.path.basename(checkpoint), "data": os.path.basename(data), "split": split,
        "images": len(index), "total_in_split": len(decoded.labels), "top1": round(correct / len(index), 4),
        "modules": modules, "ks": list(ks), "top_fraction": TOP_FRACTION, "attention": attention,
        "seconds": round(time.perf_counter() - start, 1),
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads",
        "summaries": [m.summary() for m in measures.values()],
        "per_image": {name: {"index": index.tolist(), **{f"explained_k{k}": v for k, v in m.explained.items()},
                             "auto_k": m.auto_k, "explained_auto": m.auto_explained,
                             "parts_top20_energy_weighted": m.parts_weighted, "parts_top20_plain": m.parts_plain,
                             "channel_mean_top20_raw": m.mean_raw, "channel_mean_top20_above_min": m.mean_above_min}
                      for name, m in measures.items()},
    }


def _cell(stats: dict[str, float]) -> str:
    return "–" if stats["mean"] is None else f"{stats['mean']:.3f} ± {stats['sd']:.3f}"


def table(result: dict[str, Any]) -> str:
    """The Markdown table of :func:`measure`'s result (mean ± SD over images)."""
    ks = result["ks"]
    head = (f"{result['checkpoint']} on {result['data']}/{result['split']}: {result['images']} of "
            f"{result['total_in_split']} images spread over the split (top-1 on them {result['top1']:.1%}); "
            f"{'every module' if result['modules'] == 'all' else 'the last module of each stage'}; "
            "mean ± SD over images")
    cols = (["module", "mask C×H×W"] + [f"explained, k={k}" for k in ks]
            + ["auto k (mean, min–max)", "explained, auto k", "parts' top-20% share (energy-weighted)",
               "parts' top-20% share (plain)", "channel mean's top-20% share (raw)",
               "channel mean's top-20% share (above its min)", "images where parts > channel mean (above min)"])
    lines = [head, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for s in result["summaries"]:
        counts = [int(k) for k in s["auto_k"]["counts"]]
        share = s["share_parts_more_concentrated"]
        row = ([s["module"], s["mask"].replace("x", "×")] + [_cell(s[f"explained_k{k}"]) for k in ks]
               + [f"{s['auto_k']['mean']:.2f} ({min(counts)}–{max(counts)})", _cell(s["explained_auto"]),
                  _cell(s["parts_top20_energy_weighted"]), _cell(s["parts_top20_plain"]),
                  _cell(s["channel_mean_top20_raw"]), _cell(s["channel_mean_top20_above_min"]),
                  "–" if share is None else f"{share:.0%}"])
        lines.append("| " + " | ".join(row) + " |")
    flat = sum(s["flat"] for s in result["summaries"])
    lines.append("")
    lines.append(f"top-20% share: 0.2 for a flat map, 1 when all the mass is in a fifth of the positions; "
                 f"{flat} flat masks (no parts); {result['seconds']:.0f} s on {result['machine']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a .safetensors checkpoint written by resattn")
    p.add_argument("--data", required=True, help="a folder or zip with the split's class folders")
    p.add_argument("--split", default="test", help="which split ('test' falls back to 'val')")
    p.add_argument("--limit", type=int, default=300, help="images, spread evenly over the split")
    p.add_argument("--ks", type=int, nargs="+", default=list(KS), help="the fixed k whose explained fraction is given")
    p.add_argument("--modules", choices=["last", "all"], default="last", help="each stage's last module, or all")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    p.add_argument("--cache-dir", default="~/.cache/resattn/data", help="cache decoded datasets here ('' for none)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--json", help="also write the summaries and per-image values here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        result = measure(args.checkpoint, args.data, args.split, args.limit, args.ks, args.modules, args.batch_size,
                         os.path.expanduser(args.cache_dir) if args.cache_dir else None)
    except (DataError, OSError, ValueError) as error:  # CheckpointError is a ValueError
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
