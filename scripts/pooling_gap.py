"""How much the max-pool definition changes a trained network's output: the same weights run with the official
pooling (3×3, stride 2, no padding, sizes rounded up: Caffe's) and with ``MaxPool2d(3, 2, padding=1)``, the form most
PyTorch ports use, on the same images.

    python scripts/pooling_gap.py --checkpoint checkpoints/attention56_imagenette_mixed_arl.safetensors \\
        --data path/to/imagenette-224.zip --split val --limit 500 --threads 2

Prints JSON: per image, the relative change of the logit vector ‖z_pad1 − z‖ / ‖z‖ (mean, median, 90th percentile),
the share of images whose top-1 class changes, and the top-1 accuracy under each pooling. The images are spread
evenly over the (class-sorted) split, as ``python -m resattn.evaluate --limit`` takes them. Only a checkpoint of
architecture revision 2 or later (trained with the official pooling) makes sense here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from resattn.checkpoint import build_overrides, load_checkpoint  # noqa: E402
from resattn.evaluate import evaluation_data  # noqa: E402
from resattn.masks import spread_indices  # noqa: E402
from resattn.registry import create_model  # noqa: E402


def pooling_gap(checkpoint: str, data: str, split: str = "test", limit: int | None = None,
                cache_dir: str | None = None, batch_size: int = 100) -> dict:
    """The checkpoint's logits under its own pooling and under ``pad1``, compared image by image."""
    model, meta = load_checkpoint(checkpoint)
    twin = create_model(meta["model"], **{**build_overrides(meta), "pooling": "pad1"})
    twin.load_state_dict(model.state_dict())
    twin.eval()
    decoded, normalizer = evaluation_data(meta, data, split, cache_dir)
    chosen = torch.from_numpy(spread_indices(len(decoded.labels), limit))
    images, labels = decoded.images[chosen], decoded.labels[chosen].numpy()
    own, padded = [], []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = normalizer(images[start : start + batch_size])
            own.append(model(x).double())
            padded.append(twin(x).double())
    a, b = torch.cat(own).numpy(), torch.cat(padded).numpy()
    relative = np.linalg.norm(b - a, axis=1) / np.linalg.norm(a, axis=1)
    return {
        "checkpoint": os.path.basename(checkpoint), "images": len(a), "split": split,
        "relative_logit_change_mean": float(relative.mean()), "relative_logit_change_median": float(np.median(relative)),
        "relative_logit_change_p90": float(np.percentile(relative, 90)),
        "top1_changed": float(np.mean(a.argmax(1) != b.argmax(1))),
        "top1_official_pooling": float(np.mean(a.argmax(1) == labels)),
        "top1_pad1_pooling": float(np.mean(b.argmax(1) == labels)),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="a folder or zip with the checkpoint's classes")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, help="N images spread evenly over the split (default: all)")
    p.add_argument("--cache-dir", help="cache decoded datasets here")
    p.add_argument("--threads", type=int, help="torch intra-op threads")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cache = os.path.expanduser(args.cache_dir) if args.cache_dir else None
    print(json.dumps(pooling_gap(args.checkpoint, args.data, args.split, args.limit, cache), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
