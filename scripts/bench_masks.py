"""Time ``resattn.masks`` over a dataset split and print images/s.

Times three things on the same decoded images (decoding is done once before timing, from the cache when
``--cache-dir`` holds it): the plain forward pass (``model(x)``, channels_last, inference mode) as a reference,
:func:`resattn.masks.collect_masks` (the same pass through ``resattn.inspect`` plus the channel-mean reduction),
and the whole command (load, decode from cache, collect, write the ``.npz`` and the PNG).

Target (issue 12): the 10,000 CIFAR-10 test images with attention56_cifar in under a minute on a 2-core CPU.
When another process holds a core, pass ``--threads 1``: a second OpenMP thread that cannot get a core makes
every batch wait for it (measured here: 154 s with 2 threads against 45 s with 1 for the 10,000 images), and
expect run-to-run differences of tens of percent.
Usage::

    python scripts/bench_masks.py --checkpoint checkpoints/attention56_cifar_mixed_arl.safetensors \\
        --data ../shared/data/cifar10-jpeg.zip --cache-dir ~/.cache/resattn/data [--threads N] [--limit N]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from resattn import load_checkpoint  # noqa: E402
from resattn import masks as M  # noqa: E402
from resattn.data import load_split  # noqa: E402
from resattn.preprocess import Preprocessing  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "attention56_cifar_mixed_arl.safetensors"))
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--cache-dir", default="~/.cache/resattn/data")
    p.add_argument("--limit", type=int)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--skip-plain", action="store_true", help="do not time the plain forward pass")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cache = os.path.expanduser(args.cache_dir) if args.cache_dir else None

    model, meta = load_checkpoint(args.checkpoint)
    model = model.to(memory_format=torch.channels_last)
    prep = Preprocessing.from_meta(meta)
    decoded = load_split(args.data, args.split, prep.resize, cache, crop=prep.size)
    idx = M.spread_indices(len(decoded.labels), args.limit)
    n = len(idx)
    print(f"{meta['model']} ({os.path.basename(args.checkpoint)}), {n} images of {args.split}, batch {args.batch_size}, "
          f"{platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} threads, torch {torch.__version__}")
    try:
        load = os.getloadavg()[0]
        print(f"load average before timing: {load:.2f}")
    except OSError:
        pass

    with torch.inference_mode():  # warm-up: oneDNN picks and caches its kernels on the first batches
        for _ in range(2):
            x = prep.normalize(decoded.images[torch.from_numpy(idx[: args.batch_size])])
            model(x.contiguous(memory_format=torch.channels_last))

    rows = []
    if not args.skip_plain:
        start = time.perf_counter()
        with torch.inference_mode():
            for s in range(0, n, args.batch_size):
                x = prep.normalize(decoded.images[torch.from_numpy(idx[s : s + args.batch_size])])
                model(x.contiguous(memory_format=torch.channels_last))
        rows.append(("plain forward (reference)", time.perf_counter() - start))
    start = time.perf_counter()
    result = M.collect_masks(model, meta, decoded, args.batch_size, indices=idx)
    rows.append(("collect_masks (inspect + channel mean)", time.perf_counter() - start))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        M.main(["--checkpoint", args.checkpoint, "--data", args.data, "--split", args.split, "--out",
                os.path.join(tmp, "m.npz"), "--png", os.path.join(tmp, "m.png"), "--batch-size", str(args.batch_size),
                "--no-progress"] + (["--cache-dir", cache] if cache else []) + (["--limit", str(args.limit)] if args.limit else [])
               + (["--threads", str(args.threads)] if args.threads else []))
        rows.append(("python -m resattn.masks (whole command)", time.perf_counter() - start))
    print()
    print(f"{'path':42s} {'seconds':>8s} {'images/s':>9s}")
    for name, seconds in rows:
        print(f"{name:42s} {seconds:8.1f} {n / seconds:9.1f}")
    print(f"top-1 on these images: {100 * result.accuracy:.2f}%; target: {n} images in < 60 s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
