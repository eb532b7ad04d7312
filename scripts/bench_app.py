"""Time the explorer's Explore paths outside the browser and print a table.

Paths (warm: model loaded and caches of other images filled, as in a running app):

* **new upload**: decode the file, hash, crop, preprocess, ``resattn.inspect``, top-5, then every Explore panel
  (M, T, H reduced, upsampled, coloured, overlaid, with their colorbars, as PNG; the .npz export is built only
  when its button is clicked);
* **switch stage** / **switch reduction**: the trace is cached, so only the panels are rebuilt.

Targets (issue 4): new upload < 0.5 s for attention56_cifar and < 1.5 s for attention56_imagenet at 160×160;
switches < 0.2 s. Usage: ``python scripts/bench_app.py [--threads N] [--repeats N]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "app")]

import resattn  # noqa: E402
from resattn import images, maps  # noqa: E402

MODELS = [("attention56_cifar", 32, 0.5), ("attention56_imagenet@160", 160, 1.5)]


def panels(record: dict, picture: np.ndarray, how: str, manifest: dict) -> None:  # noqa: ARG001 - kept for the call sites
    """What the Explore page draws when the panels' cache misses, once the trace is known."""
    views = maps.module_views(record["mask"], record["trunk"], record["output"], picture, how=how, k=8,
                              contrast="stretch")
    for view in views.values():
        maps.to_png(view.picture(True))  # the panel as shown: overlay plus colorbar



def new_upload(model: torch.nn.Module, meta: dict, data: bytes, stage: int) -> tuple[object, np.ndarray]:
    from ui import components, state

    image = images.load_image(data, "upload.png")
    images.image_hash(image)
    picture = components.picture_of(image, meta)
    start = time.perf_counter()
    trace = state._trace_to_numpy(resattn.inspect(model, state.model_input(image, meta)), 0.0, False, "bench")
    trace.seconds = time.perf_counter() - start
    np.argsort(-trace.probs)[:5]
    panels(trace.module(stage, 1), picture, "mean", {"stage": stage})
    return trace, picture


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the app's default is 1)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from ui import state  # sets the app's thread count; the command line overrides it

    torch.set_num_threads(args.threads)

    photo = images.gallery(dataset=None)[0]
    base = np.asarray(images.load_image(photo.read()))
    uploads = [images.Image.fromarray(np.roll(base, 7 * i, axis=1)) for i in range(args.repeats + 2)]
    encoded = []
    for image in uploads:  # a different file each time, so nothing is cached
        import io

        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); image {photo.label} "
          f"{base.shape[1]}×{base.shape[0]} PNG; median of {args.repeats}")
    print(f"{'model':<26}{'input':>7}{'new upload (s)':>16}{'  of it inspect':>16}{'switch stage (s)':>18}"
          f"{'switch reduction (s)':>22}   target upload/switch")
    for spec, size, target in MODELS:
        model, meta = state.load_model.__wrapped__(f"random:{spec}", None, spec)
        trace, picture = new_upload(model, meta, encoded[-1], 1)  # warm-up
        trace, picture = new_upload(model, meta, encoded[-2], 1)
        files = iter(encoded)
        inspect_times = []

        def upload() -> None:
            t, _ = new_upload(model, meta, next(files), 1)
            inspect_times.append(t.seconds)

        up = timed(upload, args.repeats)
        stages = iter([2, 3, 1] * args.repeats)
        switch_stage = timed(lambda: panels(trace.module(next(stages), 1), picture, "mean", {}), args.repeats)
        reductions = iter(["max", "topk", "channel", "mean"] * args.repeats)
        switch_reduction = timed(lambda: panels(trace.module(1, 1), picture, next(reductions), {}), args.repeats)
        print(f"{spec.split('@')[0]:<26}{size:>7}{up:>16.3f}{statistics.median(inspect_times):>16.3f}"
              f"{switch_stage:>18.3f}{switch_reduction:>22.3f}   < {target} / < 0.2")


if __name__ == "__main__":
    main()
