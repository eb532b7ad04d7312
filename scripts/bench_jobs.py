"""Time a background fine-tuning job and, while it runs, the Explore page's work on one thread.

The job goes through ``resattn.jobs`` (its own processes, as from the Train page): one epoch of the last stage
(``--train-only stage3``) of attention56_cifar from ``checkpoints/attention56_cifar_mixed_arl.safetensors`` on
5,000 CIFAR-10 training images (``--train-limit 5000``), evaluated on 1,000 test images, with the Train page's
defaults (batch 128, peak lr 0.05, 4 probe images). The dataset is decoded into the cache first (not timed), so
the job time is the fine-tune, not the one-time JPEG decode.

Meanwhile this process times the Explore path on one torch thread (the app's default), as
``scripts/bench_app.py`` does: a **new upload** (decode the photo, preprocess, ``resattn.inspect``, the M/T/H
panels with their colorbars as PNG) and a **stage switch** (the panels only), alternating, and prints p50 / p95
before and during the job.

Targets (issue 11, on the 2-core CPU): the job in under 3 minutes, while Explore keeps issue 4's targets
(new upload < 0.5 s, switch < 0.2 s for attention56_cifar).

Usage: ``python scripts/bench_jobs.py [--data ../shared/data/cifar10-jpeg.zip] [--cache-dir ~/.cache/resattn/data]``
"""

from __future__ import annotations

import argparse
import io
import itertools
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import resattn  # noqa: E402
from resattn import images, jobs, maps  # noqa: E402
from resattn.data import load_split  # noqa: E402
from resattn.preprocess import Preprocessing  # noqa: E402

DISPLAY_SIDE = 320  # the app draws panels at this longer side


def explore_once(model: torch.nn.Module, meta: dict, data: bytes | None, picture: np.ndarray | None, stage: int,
                 x: torch.Tensor | None = None, trace=None):  # noqa: ANN001 - a resattn.Trace
    """A new upload (``data`` given: decode, preprocess, inspect, panels) or a stage switch (panels only)."""
    prep = Preprocessing.from_meta(meta)
    if data is not None:
        image = images.load_image(data, "upload.png")
        images.image_hash(image)
        region = prep.view(image)
        scale = DISPLAY_SIDE / max(region.size)
        picture = np.asarray(region.resize((round(region.size[0] * scale), round(region.size[1] * scale))))
        trace = resattn.inspect(model, prep(image))
    record = trace.module(stage=stage, index=1)
    views = maps.module_views(record.mask[0], record.trunk[0], record.output[0], picture, how="mean",
                              contrast="stretch")
    for view in views.values():
        maps.to_png(view.picture(True))
    return picture, trace


def percentiles(samples: list[float]) -> str:
    if not samples:
        return "no samples"
    p50, p95 = np.percentile(samples, [50, 95])
    return f"p50 {p50:.3f} s, p95 {p95:.3f} s ({len(samples)} runs)"


def photos() -> Iterator[bytes]:
    """A different PNG per upload (the gallery photo, shifted), so nothing is cached; made outside the timings."""
    base = np.asarray(images.load_image(images.gallery(dataset=None)[0].read()))
    for i in itertools.count():
        buffer = io.BytesIO()
        Image.fromarray(np.roll(base, 7 * i, axis=1)).save(buffer, format="PNG")
        yield buffer.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10-jpeg.zip"),
                        help="CIFAR-10 as a zip of train/ and test/ class folders")
    parser.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "attention56_cifar_mixed_arl.safetensors"))
    parser.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "resattn" / "data"))
    parser.add_argument("--train-limit", type=int, default=5000)
    parser.add_argument("--test-limit", type=int, default=1000)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--baseline", type=int, default=10, help="Explore runs of each kind before the job starts")
    parser.add_argument("--jobs-dir", help="jobs folder (default: a temporary one, removed afterwards)")
    parser.add_argument("--timeout", type=float, default=1200, help="give up (and cancel the job) after this many s")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the app's default (RESATTN_THREADS=1)

    start = time.perf_counter()
    for split in ("train", "test"):  # what the trainer loads for a 32-px base: decoded once, then cached
        load_split(args.data, split, 32, cache_dir=args.cache_dir)
    print(f"dataset ready in the cache in {time.perf_counter() - start:.1f} s (not part of the job's time)")

    model, meta = resattn.load_checkpoint(args.checkpoint)
    uploads = photos()
    picture, trace = explore_once(model, meta, next(uploads), None, 1)  # warm-up
    timings: dict[str, dict[str, list[float]]] = {"before": {"upload": [], "switch": []},
                                                  "during": {"upload": [], "switch": []}}

    def explore_round(phase: str, stage: int) -> None:
        nonlocal picture, trace
        data = next(uploads)
        t0 = time.perf_counter()
        picture, trace = explore_once(model, meta, data, None, 1)
        timings[phase]["upload"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        explore_once(model, meta, None, picture, stage, trace=trace)
        timings[phase]["switch"].append(time.perf_counter() - t0)

    for i in range(args.baseline):
        explore_round("before", 2 + i % 2)

    root = Path(args.jobs_dir) if args.jobs_dir else Path(tempfile.mkdtemp(prefix="resattn-bench-jobs-"))
    manager = jobs.JobManager(root, max_running=1, cache_dir=args.cache_dir)
    options = jobs.fine_tune_options(args.checkpoint, args.data, train_only="stage3", epochs=args.epochs, lr=0.05,
                                     batch_size=128, train_limit=args.train_limit, test_limit=args.test_limit, probe=4)
    job = manager.submit(options, owner="bench")
    print(f"job {job.id} submitted on {job.device_label}: {job.label}")
    deadline = time.monotonic() + args.timeout
    try:
        i = 0
        while manager.get(job.id).active:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the job did not finish within {args.timeout:.0f} s")
            explore_round("during", 2 + i % 2)
            i += 1
    except BaseException:
        if manager.get(job.id).active:
            manager.cancel(job.id, wait=jobs.CANCEL_GRACE_S + 5)
        raise
    finally:
        done = manager.get(job.id)
        print(manager.log_tail(done, 6))
    metrics = manager.metrics(done)
    wall = (done.ended or time.time()) - (done.started or time.time())
    print(f"\njob {done.id}: {done.state} on {done.device_label}; wall time {wall:.1f} s (start of the trainer "
          "process to the checkpoint: imports, cached data, model, the epoch, evaluation, snapshots)")
    if metrics:
        last = metrics[-1]
        print(f"  training epoch {last['epoch_seconds']:.1f} s at {last['images_per_s']:.1f} images/s; "
              f"test top-1 {last['test_top1']:.4f} on {last['test_images']} images; "
              f"other work {wall - sum(m['epoch_seconds'] for m in metrics):.1f} s")
    if done.error:
        print(f"  error: {done.error}")
    print("\nExplore on attention56_cifar, 1 torch thread, in this process:")
    for phase in ("before", "during"):
        print(f"  {phase:<7} the job: new upload {percentiles(timings[phase]['upload'])}; "
              f"switch stage {percentiles(timings[phase]['switch'])}")
    print("  targets: job < 180 s; new upload < 0.5 s, switch < 0.2 s")
    if not args.jobs_dir:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if done.state == "succeeded" else 1


if __name__ == "__main__":
    raise SystemExit(main())
