"""Time :func:`resattn.parts.mask_parts` on a real 256×32×32 soft mask for k = None (automatic), 2, 4 and 8.

Target (issue 25): under 0.3 s per mask on this CPU. Two real masks of that shape, both from shipped checkpoints:

* ``photo`` (the default): the photo model's stage-2 mask for one photo (scikit-learn's ``china.jpg``) fed at
  256×256 instead of its 128×128 training size. The network is fully convolutional, so stage 2 (256 channels at
  1/8 of the input) is then 32×32: one image's learned mask with 256 channels, at a resolution the model was not
  trained at.
* ``cifar`` (with ``--data``): the stage-1 masks (64×32×32) of four spread CIFAR-10 test images under
  attention56_cifar_mixed_arl, stacked into 256 channels. Each image's mask is one the model computes in
  evaluation, but four images share no spatial structure, so it takes more parts to explain than one image's mask.

Each setting is timed ``--repeat`` times after one warm-up call (the first call imports scikit-learn); the table
gives the median and the fastest wall-clock time, the median CPU time of this process (on a shared machine the wall
time includes waiting for a core), the k chosen and the explained fraction. The load average is printed before and
after: this machine is shared, so say what it was doing.

    python scripts/bench_parts.py [--source photo|cifar|both] [--data path/to/cifar10-jpeg.zip] [--repeat 7]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from resattn import images, inspect, load_checkpoint  # noqa: E402
from resattn.parts import mask_parts  # noqa: E402
from resattn.preprocess import Preprocessing  # noqa: E402

PHOTO_MODEL = ROOT / "checkpoints" / "attention56_imagenette_mixed_arl.safetensors"
CIFAR_MODEL = ROOT / "checkpoints" / "attention56_cifar_mixed_arl.safetensors"
KS: tuple[int | None, ...] = (None, 2, 4, 8)
TARGET_S = 0.3


def photo_mask(side: int = 256) -> tuple[np.ndarray, str]:
    """The photo model's stage-2 mask (C×H×W) for scikit-learn's china.jpg fed at ``side``×``side``."""
    model, meta = load_checkpoint(PHOTO_MODEL)
    prep = Preprocessing.from_meta(meta)
    prep = dataclasses.replace(prep, size=side, resize=round(side / prep.crop_fraction))
    item = next(i for i in images.gallery() if i.label.lower().startswith("china"))
    with torch.inference_mode():
        trace = inspect(model, prep(images.load_image(item.read(), "china.jpg")))
    record = [r for r in trace.modules if r.stage == 2][-1]
    mask = record.mask[0].float().numpy()
    return mask, f"{PHOTO_MODEL.stem}, {record.label}, china.jpg at {side}x{side}"


def cifar_mask(data: str, count: int = 4) -> tuple[np.ndarray, str]:
    """The stage-1 masks of ``count`` spread CIFAR-10 test images, stacked along channels (count·64×32×32)."""
    from resattn.data import load_split
    from resattn.masks import spread_indices

    model, meta = load_checkpoint(CIFAR_MODEL)
    prep = Preprocessing.from_meta(meta)
    decoded = load_split(data, "test", prep.resize, os.path.expanduser("~/.cache/resattn/data"), crop=prep.size)
    index = spread_indices(len(decoded.labels), count)
    with torch.inference_mode():
        trace = inspect(model, prep.normalize(decoded.images[torch.from_numpy(index)]))
    record = [r for r in trace.modules if r.stage == 1][-1]
    mask = record.mask.float().numpy()
    return mask.reshape(-1, *mask.shape[2:]), (f"{CIFAR_MODEL.stem}, {record.label} of test images "
                                               f"{', '.join(map(str, index))}, stacked")


def time_parts(mask: np.ndarray, k: int | None, repeat: int) -> dict[str, Any]:
    """Median and fastest wall time, median CPU time, k and explained fraction of ``mask_parts(mask, k)``."""
    mask_parts(mask, k)  # warm-up
    wall, cpu = [], []
    parts = None
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        parts = mask_parts(mask, k)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    assert parts is not None
    return {"k_asked": "None" if k is None else k, "k": parts.k, "explained": round(parts.explained, 4),
            "median_s": round(statistics.median(wall), 4), "fastest_s": round(min(wall), 4),
            "cpu_median_s": round(statistics.median(cpu), 4)}


def blas_threads() -> str:
    """The BLAS libraries numpy uses and their thread counts (threadpoolctl ships with scikit-learn)."""
    from threadpoolctl import threadpool_info

    return ", ".join(f"{Path(i['filepath']).name}: {i['num_threads']} threads" for i in threadpool_info()
                     if i.get("user_api") == "blas") or "unknown"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", choices=["photo", "cifar", "both"], default="photo", help="which real mask to time")
    p.add_argument("--data", help="the CIFAR-10 JPEG zip (needed for --source cifar or both)")
    p.add_argument("--repeat", type=int, default=7, help="timed calls per setting")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    if args.source != "photo" and not args.data:
        p.error("--source cifar or both needs --data")
    torch.set_num_threads(1)
    import sklearn

    masks = ([photo_mask()] if args.source in ("photo", "both") else []) + \
            ([cifar_mask(args.data)] if args.source in ("cifar", "both") else [])
    machine = (f"{platform.machine()} CPU, {os.cpu_count()} cores; numpy {np.__version__} ({blas_threads()}), "
               f"scikit-learn {sklearn.__version__}, torch {torch.__version__}")
    load_before = os.getloadavg()
    print(machine)
    print(f"load average before: {' '.join(f'{v:.2f}' for v in load_before)}")
    results = []
    for mask, label in masks:
        rows = [time_parts(mask, k, args.repeat) for k in KS]
        results.append({"mask": label, "shape": list(mask.shape), "rows": rows})
        print(f"\n{label}: {mask.shape[0]}x{mask.shape[1]}x{mask.shape[2]}, {args.repeat} timed calls each\n")
        print("| k asked | k | explained | median s | fastest s | CPU s (median) | under 0.3 s |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['k_asked']} | {r['k']} | {r['explained']:.4f} | {r['median_s']:.3f} | {r['fastest_s']:.3f} | "
                  f"{r['cpu_median_s']:.3f} | {'yes' if r['median_s'] < TARGET_S else 'no'} |")
    load_after = os.getloadavg()
    print(f"\nload average after: {' '.join(f'{v:.2f}' for v in load_after)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "load_before": load_before,
                                               "load_after": load_after, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
