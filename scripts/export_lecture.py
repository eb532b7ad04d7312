"""Write a lecture as one self-contained HTML file, for when the projector or the network fails: every picture and
formula embedded, nothing fetched, one ``<section>`` per scene (→ / ← or space move between them).

    python scripts/export_lecture.py app/lectures/paper.toml --out lecture.html

Each scene is computed from the shipped checkpoints (``--checkpoints``, default ``checkpoints/``) exactly as the
explorer's Lecture page computes it (:mod:`resattn.scenes`), so the copy shows the same numbers as the room.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from resattn.html import lecture_html  # noqa: E402
from resattn.lecture import LectureError, load_lecture  # noqa: E402
from resattn.scenes import Resources, render_scene  # noqa: E402


def export(lecture_path: Path, out: Path, checkpoints: Path) -> tuple[int, float]:
    """Write the lecture at ``lecture_path`` to ``out``; returns (scenes, seconds)."""
    start = time.perf_counter()
    lecture = load_lecture(lecture_path)
    resources = Resources(checkpoints, lecture.folder)
    rendered = []
    for scene in lecture.scenes:
        rendered.append(render_scene(scene, resources))
        print(f"scene {scene.number:2d}/{len(lecture.scenes)}: {scene.title} ({rendered[-1].seconds:.2f} s)",
              flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(lecture_html(lecture, rendered), encoding="utf-8")
    return len(rendered), time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("lecture", type=Path, help="a lecture file, e.g. app/lectures/paper.toml")
    p.add_argument("--out", type=Path, default=Path("lecture.html"), help="the HTML file to write")
    p.add_argument("--checkpoints", type=Path, default=ROOT / "checkpoints", help="where the scenes' models are")
    args = p.parse_args(argv)
    try:
        count, seconds = export(args.lecture, args.out, args.checkpoints)
    except LectureError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    size = args.out.stat().st_size / 1e6
    print(f"wrote {args.out} ({count} scenes, {size:.1f} MB) in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
