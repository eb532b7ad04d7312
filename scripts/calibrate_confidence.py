"""Measure a checkpoint's unsure-prediction threshold on its own test split and record it in
``checkpoints/confidence.json``: ``python scripts/calibrate_confidence.py --checkpoint C --data D``.

The threshold is the top-1 probability under which at most 5% of the test images fall (``resattn.confidence``);
the entry keeps the checkpoint's file hash, so a retrained file never uses an old threshold. The same pass records
which test images the checkpoint gets right (with a digest of the split's labels in order), from which the
explorer's Compare page runs McNemar's test between two checkpoints without the data.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import resattn  # noqa: E402
from resattn.confidence import (  # noqa: E402
    FILE_NAME, FLAGGED, Calibration, labels_digest, pack_correct, save_calibration, threshold_for)
from resattn.evaluate import evaluation_data  # noqa: E402


def measure(checkpoint: Path, data: str, cache_dir: str | None,
            batch: int = 128) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every test image's top-1 probability, whether its top-1 class is right, and the labels in the split's
    order, preprocessed exactly as ``python -m resattn.evaluate`` does."""
    model, meta = resattn.load_checkpoint(checkpoint)
    decoded, normalizer = evaluation_data(meta, data, "test", cache_dir)
    top, correct = [], []
    with torch.inference_mode():
        for start in range(0, len(decoded.labels), batch):
            logits = model(normalizer(decoded.images[start:start + batch]))
            probability, predicted = torch.softmax(logits.float(), dim=1).max(dim=1)
            top.append(probability)
            correct.append(predicted == decoded.labels[start:start + batch])
    return torch.cat(top).numpy(), torch.cat(correct).numpy(), decoded.labels.numpy()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a .safetensors checkpoint")
    p.add_argument("--data", required=True, help="its dataset (folder or zip with a test/ or val/ split)")
    p.add_argument("--cache-dir", help="decoded-data cache (e.g. ~/.cache/resattn/data)")
    p.add_argument("--out", help=f"the JSON to update (default: {FILE_NAME} beside the checkpoint)")
    p.add_argument("--threads", type=int, help="CPU threads")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    checkpoint = Path(args.checkpoint)
    cache = str(Path(args.cache_dir).expanduser()) if args.cache_dir else None
    top, correct, labels = measure(checkpoint, args.data, cache)
    threshold, flagged = threshold_for(top, FLAGGED)
    from resattn.data import open_split

    split = open_split(args.data, "test").split  # "val" where the dataset has no test/ (Imagenette)
    dataset = f"{Path(args.data.rstrip('/')).name.removesuffix('.zip')} {split} split, {len(top):,} images"
    command = (f"python scripts/calibrate_confidence.py --checkpoint checkpoints/{checkpoint.name} "
               f"--data path/to/{Path(args.data.rstrip('/')).name}")
    calibration = Calibration(checkpoint.name, resattn.file_hash(checkpoint), round(threshold, 6), round(flagged, 6),
                              int(len(top)), dataset, command, labels_digest(labels), pack_correct(correct))
    save_calibration(Path(args.out) if args.out else checkpoint.parent / FILE_NAME, calibration)
    print(f"{checkpoint.name}: unsure below p = {threshold:.3f} (flags {flagged:.2%} of {len(top):,} {split} images; "
          f"median top-1 probability {np.median(top):.3f}; top-1 {correct.mean():.2%} of this file)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
