"""Evaluate a checkpoint on a data split: ``python -m resattn.evaluate --checkpoint C --data D``.

Prints JSON: top-1, mean loss, per-class accuracy, the confusion matrix (rows: true class, columns: predicted)
and the number of images. Every image goes through :class:`resattn.preprocess.Preprocessing` built from the
checkpoint's metadata, the same path the explorer uses.
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from .checkpoint import load_checkpoint
from .data import DataError, Decoded, Normalizer, load_split
from .preprocess import Preprocessing
from .train import Runtime, evaluate_model

__all__ = ["evaluate_checkpoint", "evaluation_data", "main"]


def evaluation_data(meta: dict, data: str, split: str = "test", cache_dir: str | None = None) -> tuple[Decoded, Normalizer]:
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
) -> dict:
    """Load ``checkpoint`` safely and evaluate it on ``split`` of ``data``; returns the metrics dict."""
    model, meta = load_checkpoint(checkpoint)
    dev = torch.device("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu")
    model = model.to(dev).to(memory_format=torch.channels_last)
    decoded, normalizer = evaluation_data(meta, data, split, cache_dir)
    if limit is not None:
        decoded.images, decoded.labels = decoded.images[:limit], decoded.labels[:limit]
    normalizer = normalizer.to(dev)
    result = evaluate_model(model, decoded, normalizer, Runtime(dev), batch_size, num_classes=len(decoded.classes))
    names = meta.get("classes", decoded.classes)
    result["per_class"] = dict(zip(names, result["per_class"].values()))
    return {"checkpoint": os.path.basename(checkpoint), "data": os.path.basename(data), "split": split, **result}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m resattn.evaluate", description="Evaluate a resattn checkpoint.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a .safetensors checkpoint written by resattn")
    p.add_argument("--data", required=True, help="'cifar10', 'cifar10:<root>', a folder or a zip with test/ (or val/)")
    p.add_argument("--split", default="test", help="which split to evaluate")
    p.add_argument("--batch-size", type=int, default=256, help="evaluation batch size")
    p.add_argument("--cache-dir", help="cache decoded datasets here")
    p.add_argument("--limit", type=int, help="evaluate only the first N images")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="evaluation device")
    args = p.parse_args(argv)
    result = evaluate_checkpoint(args.checkpoint, args.data, args.split, args.batch_size,
                                 os.path.expanduser(args.cache_dir) if args.cache_dir else None, args.limit, args.device)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
