"""Evaluate a checkpoint on a data split: ``python -m resattn.evaluate --checkpoint C --data D``.

Prints JSON: top-1, mean loss, per-class accuracy, the confusion matrix (rows: true class, columns: predicted)
and the number of images. Every image goes through :class:`resattn.preprocess.Preprocessing` built from the
checkpoint's metadata, the same path the explorer uses.

``--limit N`` evaluates N images evenly spaced through the split (:func:`resattn.masks.spread_indices`): splits are
sorted by class, so the first N would all be of the first class. Per-class accuracy lists only the classes that
have images among those evaluated.

``--compare OTHER`` also evaluates a second checkpoint on the same images and adds a paired comparison
(:func:`paired_comparison`): how many images only one of the two gets right, the accuracy gap with its paired
standard error, and McNemar's exact test. Two models tested on the same images make correlated mistakes, so this
resolves smaller gaps than two independent accuracies would; it still says nothing about seed-to-seed spread.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch

from .checkpoint import load_checkpoint
from .data import DataError, Decoded, Normalizer, load_split
from .masks import spread_indices
from .paper import paired_comparison
from .preprocess import Preprocessing
from .train import Runtime, evaluate_model

__all__ = ["compare_checkpoints", "evaluate_checkpoint", "evaluation_data", "paired_comparison", "main"]


def evaluation_data(meta: dict, data: str, split: str = "test",
                    cache_dir: str | None = None) -> tuple[Decoded, Normalizer]:
    """A split decoded as the checkpoint's :class:`Preprocessing` prescribes (resize, centre crop) and the
    normaliser to apply to it; refuses data whose classes are not the checkpoint's."""
    prep = Preprocessing.from_meta(meta)
    decoded = load_split(data, split, prep.resize, cache_dir, crop=prep.size)
    folders = meta.get("class_folders", meta.get("classes", decoded.classes))
    if decoded.classes != folders:
        raise DataError(f"{data} has classes {decoded.classes}, the checkpoint was trained on {folders}")
    return decoded, Normalizer(prep.mean_tensor(), prep.std_tensor().flatten())


def evaluate_checkpoint(
    checkpoint: str,
    data: str,
    split: str = "test",
    batch_size: int = 256,
    cache_dir: str | None = None,
    limit: int | None = None,
    device: str = "auto",
    keep_predictions: bool = False,
) -> dict:
    """Load ``checkpoint`` safely and evaluate it on ``split`` of ``data`` (``limit``: that many images evenly
    spaced through the split, so over every class); returns the metrics dict (with ``keep_predictions``, also
    every image's ``predictions`` and ``labels``, in split order). ``per_class`` leaves out classes with no image."""
    model, meta = load_checkpoint(checkpoint)
    dev = torch.device("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu")
    model = model.to(dev).to(memory_format=torch.channels_last)
    decoded, normalizer = evaluation_data(meta, data, split, cache_dir)
    if limit is not None:
        chosen = torch.from_numpy(spread_indices(len(decoded.labels), limit))
        decoded.images, decoded.labels = decoded.images[chosen], decoded.labels[chosen]
    normalizer = normalizer.to(dev)
    result = evaluate_model(model, decoded, normalizer, Runtime(dev), batch_size, num_classes=len(decoded.classes),
                            keep_predictions=keep_predictions)
    names = meta.get("classes", decoded.classes)
    counts = torch.bincount(decoded.labels, minlength=len(names)).tolist()
    result["per_class"] = {name: accuracy for name, accuracy, count in zip(names, result["per_class"].values(), counts)
                           if count}
    if keep_predictions:
        result["labels"] = decoded.labels.tolist()
    return {"checkpoint": os.path.basename(checkpoint), "data": os.path.basename(data), "split": split, **result}


def compare_checkpoints(
    checkpoint: str,
    other: str,
    data: str,
    split: str = "test",
    batch_size: int = 256,
    cache_dir: str | None = None,
    limit: int | None = None,
    device: str = "auto",
) -> dict:
    """Evaluate two checkpoints on the same images (each with its own preprocessing) and compare them per image:
    both evaluations (without confusion matrices) and :func:`paired_comparison` (``a`` is ``checkpoint``).

    Both see the split in one order with one labelling: :func:`evaluation_data` refuses a checkpoint whose classes
    are not the data's folders, and the split's order depends on the data alone."""
    results, correct = [], []
    for path in (checkpoint, other):
        result = evaluate_checkpoint(path, data, split, batch_size, cache_dir, limit, device, keep_predictions=True)
        predictions, truth = np.asarray(result.pop("predictions")), np.asarray(result.pop("labels"))
        result.pop("confusion")
        results.append(result)
        correct.append(predictions == truth)
    return {"a": results[0], "b": results[1], "paired": paired_comparison(correct[0], correct[1])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m resattn.evaluate", description="Evaluate a resattn checkpoint.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a .safetensors checkpoint written by resattn")
    p.add_argument("--data", required=True, help="'cifar10', 'cifar10:<root>', a folder or a zip with test/ (or val/)")
    p.add_argument("--split", default="test", help="which split to evaluate")
    p.add_argument("--batch-size", type=int, default=256, help="evaluation batch size")
    p.add_argument("--cache-dir", help="cache decoded datasets here")
    p.add_argument("--limit", type=int, help="evaluate N images evenly spaced through the split (so over every class)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="evaluation device")
    p.add_argument("--compare", metavar="OTHER", help="a second checkpoint: evaluate it on the same images and "
                                                       "compare the two per image (McNemar's exact test)")
    args = p.parse_args(argv)
    cache_dir = os.path.expanduser(args.cache_dir) if args.cache_dir else None
    if args.compare:
        result = compare_checkpoints(args.checkpoint, args.compare, args.data, args.split, args.batch_size, cache_dir,
                                     args.limit, args.device)
    else:
        result = evaluate_checkpoint(args.checkpoint, args.data, args.split, args.batch_size, cache_dir, args.limit,
                                     args.device)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
