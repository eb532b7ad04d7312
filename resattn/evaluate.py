"""Evaluate a checkpoint on a data split: ``python -m resattn.evaluate --checkpoint C --data D``.

Prints JSON: top-1, mean loss, per-class accuracy, the confusion matrix (rows: true class, columns: predicted)
and the number of images. Preprocessing comes from the checkpoint's metadata (input size, normalisation).
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from .checkpoint import load_checkpoint
from .data import DataError, Normalizer, load_split
from .train import Runtime, evaluate_model

__all__ = ["evaluate_checkpoint", "main"]


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
    size = int(meta.get("input_size", 0)) or None
    decoded = load_split(data, split, size if size and size > 64 else None, cache_dir)
    if decoded.classes != meta.get("classes", decoded.classes):
        raise DataError(f"{data} has classes {decoded.classes}, the checkpoint was trained on {meta['classes']}")
    if limit is not None:
        decoded.images, decoded.labels = decoded.images[:limit], decoded.labels[:limit]
    if "mean_image" in meta:  # the paper recipe subtracts a per-pixel mean image
        c, h, w = decoded.images.shape[1:]
        mean = torch.tensor(meta["mean_image"]).view(c, h, w)
    else:
        mean = torch.tensor(meta["mean"])
    normalizer = Normalizer(mean, torch.tensor(meta["std"])).to(dev)
    result = evaluate_model(model, decoded, normalizer, Runtime(dev), batch_size, num_classes=len(decoded.classes))
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
