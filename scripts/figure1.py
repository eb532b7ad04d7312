"""A figure like the paper's Figure 1: a photo and, per attention stage, the soft mask M, the trunk features T and
the output H = (1 + M)·T (ARL) or M·T (NAL) of one module, each with its colorbar.

    python scripts/figure1.py PHOTO [--checkpoint C] [--out figure1.png] [--module last] [--contrast stretch]
    python scripts/figure1.py --gallery china --out docs/figure1.png     # the README's figure
    python scripts/figure1.py --gallery china --parts --out docs/figure1-parts.png   # the mask's parts instead
    python scripts/figure1.py --gallery china --types --out docs/figure1-types.png   # attention types, row by row

``--gallery WORD`` takes the explorer's first gallery photo whose label starts with WORD (photos that ship inside
installed packages: scikit-learn's ``china.jpg`` for the README, scikit-image's samples, matplotlib's Grace Hopper).

The checkpoint defaults to the photo model in ``checkpoints/`` (a model trained on larger-than-CIFAR images). The
photo goes through the checkpoint's own preprocessing (``resattn.preprocess``: resize, centre crop, normalise), so
the maps are what the network computes for the input shown in the first column. Every map is the mean over
channels (written on the figure); T and H are drawn on a scale that follows their sign (centred on 0, with a
diverging colormap, only when they have both signs).

With ``--parts`` each stage's row shows instead the soft mask's largest parts (:func:`resattn.parts.mask_parts`:
a non-negative factorisation of the C×H×W mask into spatial parts, k chosen automatically unless ``--k``), each over
the photo with its share of the parts' energy and a colorbar, and the row states how much of the mask's spatial
variation the parts explain. The figure's titles and labels are also written into the PNG's ``Description``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import resattn  # noqa: E402
from resattn import images, maps  # noqa: E402
from resattn.confidence import calibration_for  # noqa: E402
from resattn.data import class_names  # noqa: E402
from resattn.preprocess import Preprocessing  # noqa: E402


def default_checkpoint(folder: Path = ROOT / "checkpoints") -> Path:
    """The shipped photo model (input larger than 64 px), the mixed ARL one where the family has several: the
    paper's own variant, which the README's figures show."""
    from resattn import paper

    found = []
    for path in sorted(folder.glob("*.safetensors")):
        try:
            meta = resattn.read_meta(path)
            if Preprocessing.from_meta(meta).size > 64:
                found.append((paper.variant_rank(meta), path))
        except (resattn.CheckpointError, KeyError, ValueError):
            continue
    if not found:
        raise SystemExit(f"no photo model in {folder}; pass --checkpoint")
    return min(found)[1]


def gallery_photo(word: str) -> tuple[bytes, str]:
    """The bytes and label of the first gallery photo whose label starts with ``word`` (case-insensitive)."""
    items = images.gallery()
    for item in items:
        if item.label.lower().startswith(word.lower()):
            return item.read(), f"{item.label} from {item.source}"
    offered = ", ".join(repr(item.label) for item in items) or "none (install scikit-image, scikit-learn or matplotlib)"
    raise SystemExit(f"no gallery photo starts with {word!r}; gallery photos: {offered}")


@dataclass
class Seen:
    """One photo through one checkpoint: the input picture, every module's record and the prediction."""

    meta: dict[str, Any]
    prep: Preprocessing
    picture: np.ndarray  # H×W×3 uint8, the input the network saw
    trace: Any  # resattn.inspect's trace
    stages: list[int]
    title: str  # model, checkpoint, photo and prediction
    predicted: str  # the top class and its probability, e.g. "church (p = 0.93)"
    knows: str  # what the model can name, e.g. "the model names only its 10 classes (tench, …)"
    unsure: bool  # below the checkpoint's calibrated threshold (False where it has none)

    @property
    def attention(self) -> str:
        return str(self.meta.get("overrides", {}).get("attention", "mixed"))

    @property
    def words(self) -> str:
        """Attention type and learning rule, e.g. "mixed ARL"."""
        return f"{self.attention} {str(self.meta.get('overrides', {}).get('learning', 'arl')).upper()}"

    @property
    def mask_quantity(self) -> str:
        return "channel_mask" if self.attention == "channel" else "mask"

    def record(self, stage: int, module: str) -> Any:
        """Stage ``stage``'s last module (``module="last"``) or its ``module``-th (1-based, clamped)."""
        records = [r for r in self.trace.modules if r.stage == stage]
        return records[-1] if module == "last" else records[min(int(module), len(records)) - 1]


def see(photo: bytes, photo_name: str, checkpoint: Path) -> Seen:
    """Run ``photo`` through ``checkpoint`` with the checkpoint's own preprocessing."""
    model, meta = resattn.load_checkpoint(checkpoint)
    prep = Preprocessing.from_meta(meta)
    x = prep(images.load_image(photo, photo_name))
    trace = resattn.inspect(model, x)
    probs = torch.softmax(trace.logits, dim=1)[0]
    top = int(probs.argmax())
    classes = meta.get("classes") or []
    stages = sorted({r.stage for r in trace.modules})
    if not stages:
        raise SystemExit(f"{checkpoint.name} has no attention modules")
    picture = (prep.denormalize(x)[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    name = classes[top] if top < len(classes) else f"class {top}"
    predicted = f"{name} (p = {float(probs[top]):.2f})"
    names, below = knows(checkpoint, meta, float(probs[top]))
    title = f"{meta.get('model')} ({Path(checkpoint).stem}): {photo_name}, predicted {predicted}\n{names}"
    if below is not None:
        title += f"; unsure: p below {below:.2f}, this photo may show none of them"
    return Seen(meta, prep, picture, trace, stages, title, predicted, names, below is not None)


def knows(checkpoint: Path, meta: dict, top: float) -> tuple[str, float | None]:
    """What the model can name, and the threshold this prediction fell below when it is unsure (the explorer's
    rule, :mod:`resattn.confidence`; None otherwise): a figure of a photo of something else must not look like a
    recognition."""
    names = class_names(list(meta.get("classes") or []))
    line = f"the model names only its {len(names)} classes" + (f" ({', '.join(names)})" if len(names) <= 12 else "")
    found = calibration_for(checkpoint, resattn.file_hash(checkpoint))
    return line, found.threshold if found is not None and found.unsure(top) else None


def _pyplot():  # noqa: ANN202 - matplotlib.pyplot on the Agg backend
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out: Path, dpi: int) -> None:
    """Save ``fig`` as a PNG whose ``Description`` holds the figure's titles and labels, then close it."""
    texts = [fig.get_suptitle()] if fig.get_suptitle() else []
    for ax in fig.axes:
        texts += [t for t in (ax.get_title(), ax.get_ylabel()) if t and t not in texts]
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, metadata={"Description": "\n".join(texts)})
    _pyplot().close(fig)


def figure(photo: bytes, photo_name: str, checkpoint: Path, out: Path, size: tuple[int, int] = (1600, 1300),
           module: str = "last", contrast: str = "stretch") -> Path:
    """Write the figure to ``out`` (PNG of exactly ``size`` pixels) and return the path."""
    plt = _pyplot()
    seen = see(photo, photo_name, checkpoint)
    meta, prep, picture, stages = seen.meta, seen.prep, seen.picture, seen.stages
    learning = meta.get("overrides", {}).get("learning", "arl")
    mask_quantity = "channel_mask" if meta.get("overrides", {}).get("attention") == "channel" else "mask"

    dpi = 100
    fig, axes = plt.subplots(len(stages), 4, figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi, squeeze=False)
    output_name = "(1 + M)·T" if learning == "arl" else "M·T"
    for row, stage in enumerate(stages):
        record = seen.record(stage, module)
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
            cmap = maps.cmap_for(scale, maps.DEFAULT_CMAPS[kind], quantity)  # type: ignore[arg-type]
            shown = ax.imshow(reduced, cmap=cmap, vmin=scale.low, vmax=scale.high,
                              interpolation="bilinear")
            ax.set_title(f"{title} (channel mean)", fontsize=10)
            ax.set_xticks([])
            ax.set_yticks([])
            bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.03)
            bar.ax.tick_params(labelsize=8)
            bar.set_label("stretched: 1st–99th pct." if scale.stretched else "fixed scale", fontsize=8)
    fig.suptitle(seen.title, fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    _save(fig, out, dpi)
    return out


def _parts_row(fig: Any, axes: Any, picture: np.ndarray, parts: Any, top: int) -> None:
    """Draw the ``top`` largest of ``parts`` over ``picture`` in ``axes[1:]``, each with its energy share and a
    colorbar (0 to the part's maximum); leave the unused axes blank."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    from resattn.parts import PART_CMAP

    bar = ScalarMappable(Normalize(0, 1), colormaps[PART_CMAP])
    side = picture.shape[0]
    for j, ax in enumerate(axes[1:]):
        ax.set_xticks([])
        ax.set_yticks([])
        if j >= min(top, parts.k):
            ax.axis("off")
            continue
        heat = maps.colorize(maps.upsample(parts.maps[j], (side, side)), 0.0, 1.0, PART_CMAP)
        ax.imshow(maps.overlay(picture, heat, alpha=0.65))
        ax.set_title(f"part {j + 1}: {parts.energy[j]:.0%} of the parts' energy", fontsize=10)
        colorbar = fig.colorbar(bar, ax=ax, fraction=0.046, pad=0.03)
        colorbar.ax.tick_params(labelsize=8)
        colorbar.set_label("part weight (0 to its max)", fontsize=8)


def _explains(parts: Any, top: int) -> str:
    """The parts in a few words for a row's label: "3 parts explain 78%" (and how many are drawn, when fewer)."""
    if parts.flat:
        return "no spatial variation: no parts"
    return f"{parts.k} parts explain {parts.explained:.0%}" + (f"; top {top} shown" if top < parts.k else "")


def _explained(record: Any, parts: Any, top: int) -> str:
    """What the parts of ``record``'s mask explain, as one line: "stage 1, module 1 (64×32×32): 3 parts explain…"."""
    c, h, w = record.mask.shape[1:]
    shown = min(top, parts.k)
    if parts.flat:
        return f"stage {record.stage}, module {record.index} ({c}×{h}×{w}): no spatial variation: no parts"
    return (f"stage {record.stage}, module {record.index} ({c}×{h}×{w}): {parts.k} parts explain "
            f"{parts.explained:.0%} of the mask's spatial variation"
            + (f" (factorised as {parts.transform})" if parts.transform != "none" else "")
            + (f"; the largest {shown} drawn" if shown < parts.k else ""))


def _input_panel(ax: Any, seen: Seen, title: str, label: str) -> None:
    ax.imshow(seen.picture)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(label, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def parts_figure(photo: bytes, photo_name: str, checkpoint: Path, out: Path, size: tuple[int, int] = (1600, 1300),
                 module: str = "last", k: int | None = None, top: int = 4) -> tuple[Path, list[str]]:
    """Per stage, the photo and the soft mask's ``top`` largest parts over it (``k`` parts, None: automatic),
    each with its energy share and a colorbar; write a PNG of exactly ``size`` pixels to ``out``. Returns the
    path and one line per stage saying how much of the mask's spatial variation the parts explain."""
    from resattn.parts import mask_parts

    plt = _pyplot()
    seen = see(photo, photo_name, checkpoint)
    records = [seen.record(stage, module) for stage in seen.stages]
    found = [mask_parts(r.mask[0], k, attention=seen.attention) for r in records]
    columns = 1 + max(1, min(top, max(p.k for p in found)))
    dpi = 100
    fig, axes = plt.subplots(len(records), columns, figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi, squeeze=False)
    lines = []
    for row, (record, parts) in enumerate(zip(records, found)):
        lines.append(_explained(record, parts, top))
        c, h, w = record.mask.shape[1:]
        stated = _explains(parts, top)
        _input_panel(axes[row, 0], seen, f"input {seen.prep.size}×{seen.prep.size}" if row == 0 else "",
                     f"stage {record.stage}, module {record.index}, mask {c}×{h}×{w}\n{stated}\nof its spatial "
                     "variation")
        _parts_row(fig, axes[row], seen.picture, parts, top)
    fig.suptitle(f"{seen.title}\nthe soft mask's parts: non-negative factorisation of M (C×H×W) above each "
                 "channel's minimum; each part over the input", fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    _save(fig, out, dpi)
    return out, lines




def attention_family(like: Path) -> list[Path]:
    """The checkpoints beside ``like`` (in its folder) of ``like``'s model trained to ``like``'s budget
    (:func:`resattn.paper.budget_key`: same data, recipe, epochs and seed), ``like`` included, in Table 1 order
    (mixed, channel, spatial; ARL first): the models whose only difference is the attention type or learning rule."""
    from resattn import paper

    meta = resattn.read_meta(like)
    family = []
    for path in sorted(like.parent.glob("*.safetensors")):
        try:
            found = resattn.read_meta(path)
        except resattn.CheckpointError:
            continue  # not a checkpoint: not one of the family
        if found.get("model") == meta.get("model") and paper.budget_key(found) == paper.budget_key(meta):
            family.append((paper.variant_rank(found), path))

    return [path for _, path in sorted(family)]


#: The --types figures' default height: the title's pixels, and each model row's.
TYPES_TITLE_PX, TYPES_ROW_PX = 160, 380


def _row_label(seen: Seen, checkpoint: Path) -> str:
    return (f"{checkpoint.stem}\n{seen.words}\npredicted {seen.predicted}"
            + ("\nunsure: may show none of its classes" if seen.unsure else ""))


def _types_title(seen: list[Seen], photo_name: str, what: str) -> str:
    """One title for a figure of several models: the photo, what the rows show, and what the models can name."""
    lines = {s.knows for s in seen}
    return f"{photo_name}: {what}, one model per row\n" + (lines.pop() if len(lines) == 1 else
                                                           "the models name different classes")


def types_figure(photo: bytes, photo_name: str, checkpoints: list[Path], out: Path,
                 size: tuple[int, int] = (1600, 1300), module: str = "last",
                 contrast: str = "stretch") -> tuple[Path, list[str]]:
    """One row per checkpoint: the photo, then each stage's channel-mean soft mask. Per stage, the sigmoid masks
    share one colour scale (``contrast``: fixed 0–1, or stretched to their pooled 1st–99th percentile) and channel
    attention's masks another. Returns the path and one line per model and stage with the mask's range."""
    plt = _pyplot()
    seen = [see(photo, photo_name, c) for c in checkpoints]
    stages = seen[0].stages
    if any(s.stages != stages for s in seen):
        raise ValueError("the checkpoints have different attention stages: " + "; ".join(
            f"{c.name}: {s.stages}" for c, s in zip(checkpoints, seen)))
    reduced = [[maps.reduce_channels(s.record(stage, module).mask[0], "mean") for stage in stages] for s in seen]
    scales: dict[tuple[int, str], maps.Scale] = {}
    for column in range(len(stages)):
        for quantity in ("mask", "channel_mask"):
            pooled = [reduced[row][column].ravel() for row, s in enumerate(seen) if s.mask_quantity == quantity]
            if pooled:
                scales[column, quantity] = maps.scale_for(np.concatenate(pooled), quantity, contrast)  # type: ignore[arg-type]
    dpi = 100
    fig, axes = plt.subplots(len(seen), 1 + len(stages), figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi,
                             squeeze=False)
    lines = []
    for row, (s, checkpoint) in enumerate(zip(seen, checkpoints)):
        _input_panel(axes[row, 0], s, f"input {s.prep.size}×{s.prep.size}" if row == 0 else "",
                     _row_label(s, checkpoint))
        for column, stage in enumerate(stages):
            record, values = s.record(stage, module), reduced[row][column]
            scale = scales[column, s.mask_quantity]
            sharing = sum(1 for other in seen if other.mask_quantity == s.mask_quantity)
            ax = axes[row, column + 1]
            cmap = maps.cmap_for(scale, maps.DEFAULT_CMAPS["mask"], s.mask_quantity)  # type: ignore[arg-type]
            shown = ax.imshow(values, cmap=cmap, vmin=scale.low, vmax=scale.high, interpolation="bilinear")
            c, h, w = record.mask.shape[1:]
            kind = "channel attention" if s.mask_quantity == "channel_mask" else "sigmoid mask"
            ax.set_title(f"stage {stage}, module {record.index}: M {c}×{h}×{w}\n{kind}, channel mean", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.03)
            bar.ax.tick_params(labelsize=8)
            how = "stretched: 1st–99th pct." if scale.stretched else "fixed scale"
            bar.set_label(how + (f", shared by {sharing} rows" if sharing > 1 else ", this row's own"), fontsize=8)
            lines.append(f"{checkpoint.stem} ({s.words}), stage {stage}: channel-mean mask {values.min():.3f}–"
                         f"{values.max():.3f}, mean {values.mean():.3f}")
    fig.suptitle(_types_title(seen, photo_name, "each stage's soft mask M (channel mean)"), fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    _save(fig, out, dpi)
    return out, lines


def types_parts_figure(photo: bytes, photo_name: str, checkpoints: list[Path], out: Path,
                       size: tuple[int, int] = (1600, 1300), module: str = "last", stage: int = 1,
                       k: int | None = None, top: int = 4) -> tuple[Path, list[str]]:
    """One row per checkpoint: the photo, then the ``top`` largest parts of stage ``stage``'s soft mask. Returns
    the path and one line per model saying what its parts explain."""
    from resattn.parts import mask_parts

    plt = _pyplot()
    seen = [see(photo, photo_name, c) for c in checkpoints]
    for s, checkpoint in zip(seen, checkpoints):
        if stage not in s.stages:
            raise ValueError(f"{checkpoint.name} has no stage {stage} (its stages: {s.stages})")
    records = [s.record(stage, module) for s in seen]
    found = [mask_parts(r.mask[0], k, attention=s.attention) for r, s in zip(records, seen)]
    columns = 1 + max(1, min(top, max(p.k for p in found)))
    dpi = 100
    fig, axes = plt.subplots(len(seen), columns, figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi, squeeze=False)
    lines = []
    for row, (s, checkpoint, record, parts) in enumerate(zip(seen, checkpoints, records, found)):
        lines.append(f"{checkpoint.stem} ({s.words}), {_explained(record, parts, top)}")
        stated = _explains(parts, top)
        _input_panel(axes[row, 0], s, f"input {s.prep.size}×{s.prep.size}" if row == 0 else "",
                     f"{_row_label(s, checkpoint)}\n{stated}")
        _parts_row(fig, axes[row], s.picture, parts, top)
    fig.suptitle(_types_title(seen, photo_name, f"the largest parts of stage {stage}'s soft mask") +
                 "\nparts: non-negative factorisation of M (C×H×W) above each channel's minimum", fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    _save(fig, out, dpi)
    return out, lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("photo", type=Path, nargs="?", help="an image file (PNG, JPEG, …)")
    p.add_argument("--gallery", metavar="WORD",
                   help="instead of PHOTO: the first gallery photo whose label starts with WORD")
    p.add_argument("--checkpoint", type=Path, action="append",
                   help="a resattn checkpoint (default: the photo model in checkpoints/); with --types, give it "
                        "several times to choose the rows")
    p.add_argument("--out", type=Path, default=Path("figure1.png"), help="output PNG")
    p.add_argument("--size", help="output size in pixels, WIDTHxHEIGHT (default 1600x1300, with --parts 1600x1150, "
                                  "with --types 1600 wide and 160 + 380 per row high)")
    p.add_argument("--module", default="last", help="which module of each stage: 'last' or a 1-based index")
    p.add_argument("--contrast", choices=maps.CONTRASTS, default="stretch",
                   help="each map on its natural fixed scale, or stretched to its 1st–99th percentile")
    p.add_argument("--parts", action="store_true",
                   help="per stage, the soft mask's largest parts over the photo instead of the channel means")
    p.add_argument("--k", type=int, help="with --parts: the number of parts (default: chosen per stage)")
    p.add_argument("--top", type=int, default=4, help="with --parts: how many parts to draw per stage")
    p.add_argument("--types", action="store_true",
                   help="one row per attention type (the checkpoint's family: same recipe and budget, beside it)")
    p.add_argument("--stage", type=int, default=1, help="with --types --parts: the stage whose parts are drawn")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    width, _, height = (args.size or ("1600x1150" if args.parts else "1600x1300")).partition("x")
    if (args.photo is None) == (args.gallery is None):
        p.error("give either PHOTO or --gallery WORD")
    try:
        if args.gallery is not None:
            data, name = gallery_photo(args.gallery)
        elif not args.photo.is_file():
            raise SystemExit(f"{args.photo}: no such image file")
        else:
            data, name = args.photo.read_bytes(), args.photo.name
        given, size = args.checkpoint or [default_checkpoint()], (int(width), int(height))
        if len(given) > 1 and not args.types:
            p.error("--checkpoint more than once needs --types (one row per checkpoint)")
        checkpoint = given[0]
        if args.types:
            rows = given if len(given) > 1 else attention_family(checkpoint)
            if len(rows) < 2:
                raise SystemExit(f"no other attention type of {checkpoint.name}'s family (same model, recipe and "
                                 f"budget) is in {checkpoint.parent}; train one (scripts/train_zoo.py) or give "
                                 "--checkpoint once per row")
            if args.size is None:  # as tall as its rows need, so that two rows are not spread over a page
                size = (size[0], TYPES_TITLE_PX + TYPES_ROW_PX * len(rows))
            if args.parts:
                out, lines = types_parts_figure(data, name, rows, args.out, size, args.module, args.stage, args.k,
                                                args.top)
            else:
                out, lines = types_figure(data, name, rows, args.out, size, args.module, args.contrast)
            print("\n".join(lines))
        elif args.parts:
            out, lines = parts_figure(data, name, checkpoint, args.out, size, args.module, args.k, args.top)
            print("\n".join(lines))
        else:
            out = figure(data, name, checkpoint, args.out, size, args.module, args.contrast)
    except (images.ImageError, ValueError) as exc:  # CheckpointError is a ValueError, as is metadata without stats
        raise SystemExit(f"cannot make the figure: {exc}") from None
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
