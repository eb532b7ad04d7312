"""What a lecture follower receives per scene: the HTML fragment's size, what gzip costs at the server's level (9)
and at the level the scene route uses once per server (6), and how far the fragment's JPEG pictures are from the
exact PNG ones.

    python scripts/bench_lecture_payload.py app/lectures/paper.toml

Prints one line per scene and the JPEG error over every picture (mean, 99th percentile and largest absolute error,
in levels of 255 per channel). The figures in ``benchmarks/README.md`` and ``resattn.html.jpeg_uri`` come from it.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import io
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from resattn.html import jpeg_uri, scene_fragment  # noqa: E402
from resattn.lecture import load_lecture  # noqa: E402
from resattn.scenes import Resources, render_scene  # noqa: E402


def _ms(run) -> tuple[bytes, float]:  # noqa: ANN001
    start = time.perf_counter()
    out = run()
    return out, 1000 * (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("lecture", type=Path)
    p.add_argument("--checkpoints", type=Path, default=ROOT / "checkpoints")
    args = p.parse_args()
    lecture = load_lecture(args.lecture)
    errors = []
    print("scene  fragment KB  gzip-6 KB  gzip-6 ms  gzip-9 ms")
    for scene in lecture.scenes:
        shown = render_scene(scene, Resources(args.checkpoints, lecture.folder))
        body = scene_fragment(shown, len(lecture.scenes)).encode()
        six, six_ms = _ms(lambda: gzip.compress(body, compresslevel=6))
        _, nine_ms = _ms(lambda: gzip.compress(body, compresslevel=9))
        print(f"{scene.number:5d}  {len(body) / 1024:11.0f}  {len(six) / 1024:9.0f}  {six_ms:9.1f}  {nine_ms:9.1f}")
        for panel in shown.panels:
            data = base64.b64decode(jpeg_uri(panel.picture).split(",", 1)[1])
            back = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
            errors.append(np.abs(back - panel.picture.astype(int)).ravel())
    every = np.concatenate(errors)
    print(f"JPEG pictures ({len(errors)}): error mean {every.mean():.2f}, 99th percentile "
          f"{np.percentile(every, 99):.0f}, largest {every.max()} (levels of 255 per channel)")


if __name__ == "__main__":
    main()
