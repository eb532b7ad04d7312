"""A figure like the paper's Figure 1: a photo and, per attention stage, the soft mask M, the trunk features T and
the output H = (1 + M)·T (ARL) or M·T (NAL) of one module, each with its colorbar.

    python scripts/figure1.py PHOTO [--checkpoint C] [--out figure1.png] [--module last] [--contrast stretch]
    python scripts/figure1.py --gallery china --out docs/figure1.png     # the README's figure

``--gallery WORD`` takes the explorer's first gallery photo whose label starts with WORD (photos that ship inside
installed packages: scikit-learn's ``china.jpg`` for the README, scikit-image's samples, matplotlib's Grace Hopper).

The checkpoint defaults to the photo model in ``checkpoints/`` (a model trained on larger-than-CIFAR images). The
photo goes through the checkpoint's own preprocessing (``resattn.preprocess``: resize, centre crop, normalise), so
the maps are what the network computes for the input shown in the first column. Every map is the mean over
channels (written on the figure); T and H are signed and drawn symmetric around 0.
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
from resattn import images, maps  # noqa: E402
from resattn.preprocess import Preprocessing  # noqa: E402


def default_checkpoint(folder: Path = ROOT / "checkpoints") -> Path:
    """The first photo model (input larger than 64 px) among the shipped checkpoints."""
    for path in sorted(folder.glob("*.safetensors")):
        try:
            if Preprocessing.from_meta(resattn.read_meta(path)).size > 64:
                return path
        except (resattn.CheckpointError, KeyError, ValueError):
            continue
    raise SystemExit(f"no photo model in {folder}; pass --checkpoint")


def gallery_photo(word: str) -> tuple[bytes, str]:
    """The bytes and label of the first gallery photo whose label starts with ``word`` (case-insensitive)."""
    items = images.gallery()
    for item in items:
        if item.label.lower().startswith(word.lower()):
            return item.read(), f"{item.label} from {item.source}"
    offered = ", ".join(repr(item.label) for item in items) or "none (install scikit-image, scikit-learn or matplotlib)"
    raise SystemExit(f"no gallery photo starts with {word!r}; gallery photos: {offered}")


def figure(photo: bytes, photo_name: str, checkpoint: Path, out: Path, size: tuple[int, int] = (1600, 1300),
           module: str = "last", contrast: str = "stretch") -> Path:
    """Write the figure to ``out`` (PNG of exactly ``size`` pixels) and return the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model, meta = resattn.load_checkpoint(checkpoint)
    prep = Preprocessing.from_meta(meta)
    image = images.load_image(photo, photo_name)
    x = prep(image)
    trace = resattn.inspect(model, x)
    probs = torch.softmax(trace.logits, dim=1)[0]
    top = int(probs.argmax())
    classes = meta.get("classes") or []
    learning = meta.get("overrides", {}).get("learning", "arl")
    mask_quantity = "channel_mask" if meta.get("overrides", {}).get("attention") == "channel" else "mask"
    stages = sorted({r.stage for r in trace.modules})
    if not stages:
        raise SystemExit(f"{checkpoint.name} has no attention modules")
    picture = (prep.denormalize(x)[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)

    dpi = 100
    fig, axes = plt.subplots(len(stages), 4, figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi, squeeze=False)
    output_name = "(1 + M)·T" if learning == "arl" else "M·T"
    for row, stage in enumerate(stages):
        records = [r for r in trace.modules if r.stage == stage]
        record = records[-1] if module == "last" else records[min(int(module), len(records)) - 1]
        ax = axes[row, 0]
        ax.imshow(picture)
        ax.set_title(f"input {prep.size}×{prep.size}" if row == 0 else "", fontsize=10)
        ax.set_ylabel(f"stage {stage}, module {record.index}\n{record.mask.shape[-1]}×{record.mask.shape[-2]}",
                      fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        panels = [("soft mask M", record.mask, mask_quantity, "mask"),
                  ("trunk features T", record.trunk, "feature", "feature"),
                  (f"output H = {output_name}", record.output, "feature", "feature")]
        for column, (title, tensor, quantity, kind) in enumerate(panels, start=1):
            reduced = maps.reduce_channels(tensor[0], "mean")
            scale = maps.scale_for(reduced, quantity, contrast)  # type: ignore[arg-type]
            ax = axes[row, column]
            shown = ax.imshow(reduced, cmap=maps.DEFAULT_CMAPS[kind], vmin=scale.low, vmax=scale.high,
                              interpolation="bilinear")
            ax.set_title(f"{title} (channel mean)", fontsize=10)
            ax.set_xticks([])
            ax.set_yticks([])
            bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.03)
            bar.ax.tick_params(labelsize=8)
            bar.set_label("stretched: 1st–99th pct." if scale.stretched else "fixed scale", fontsize=8)
    name = classes[top] if top < len(classes) else f"class {top}"
    fig.suptitle(f"{meta.get('model')} ({Path(checkpoint).stem}): {photo_name}, "
                 f"predicted {name} (p = {float(probs[top]):.2f})",
                 fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("photo", type=Path, nargs="?", help="an image file (PNG, JPEG, …)")
    p.add_argument("--gallery", metavar="WORD",
                   help="instead of PHOTO: the first gallery photo whose label starts with WORD")
    p.add_argument("--checkpoint", type=Path, help="a resattn checkpoint (default: the photo model in checkpoints/)")
    p.add_argument("--out", type=Path, default=Path("figure1.png"), help="output PNG")
    p.add_argument("--size", default="1600x1300", help="output size in pixels, WIDTHxHEIGHT")
    p.add_argument("--module", default="last", help="which module of each stage: 'last' or a 1-based index")
    p.add_argument("--contrast", choices=maps.CONTRASTS, default="stretch",
                   help="each map on its natural fixed scale, or stretched to its 1st–99th percentile")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    width, _, height = args.size.partition("x")
    if (args.photo is None) == (args.gallery is None):
        p.error("give either PHOTO or --gallery WORD")
    try:
        if args.gallery is not None:
            data, name = gallery_photo(args.gallery)
        elif not args.photo.is_file():
            raise SystemExit(f"{args.photo}: no such image file")
        else:
            data, name = args.photo.read_bytes(), args.photo.name
        out = figure(data, name, args.checkpoint or default_checkpoint(), args.out, (int(width), int(height)),
                     args.module, args.contrast)
    except (images.ImageError, ValueError) as exc:  # CheckpointError is a ValueError, as is metadata without stats
        raise SystemExit(f"cannot make the figure: {exc}") from None
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
