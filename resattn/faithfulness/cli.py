"""The command line, ``python -m resattn.faithfulness``: ``deletion`` (AUCs of every map and control over a dataset,
and paired tests between maps), ``sanity`` (the randomisation cascade for one image, or over images and seeds) and
``knockout`` (each module's mask replaced, over a dataset). Kept apart from ``__main__`` so that importing the
package (which re-exports :func:`main`) does not import the module ``-m`` is about to run."""

from __future__ import annotations

import argparse
import os
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from .deletion import DEFAULT_STEPS, faithfulness_over_dataset
from .knockout import KNOCKOUT_MODES, knockout_over_dataset
from .randomisation import SANITY_MAPS, sanity_check
from .saliency import CONTROLS, DELETION_MAPS, MAP_NAMES
from .sanity_summary import sanity_over_images

__all__ = ["build_parser", "main"]


def _load(checkpoint: str, device: str) -> tuple[nn.Module, dict[str, Any]]:
    from ..checkpoint import load_checkpoint

    model, meta = load_checkpoint(checkpoint)
    dev = torch.device("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu")
    return model.to(dev).to(memory_format=torch.channels_last), meta


def _dataset(args: argparse.Namespace, meta: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """``--limit`` images of ``--data`` spread evenly over the (class-sorted) split, as the checkpoint crops them:
    uint8 images, labels and their positions in the split."""
    from ..data import DataError, load_split
    from ..masks import spread_indices
    from ..preprocess import Preprocessing

    prep = Preprocessing.from_meta(meta)
    decoded = load_split(args.data, args.split, prep.resize,
                         os.path.expanduser(args.cache_dir) if args.cache_dir else None, crop=prep.size)
    folders = meta.get("class_folders", meta.get("classes", decoded.classes))
    if decoded.classes != folders:
        raise DataError(f"{args.data} has classes {decoded.classes}, the checkpoint was trained on {folders}")
    chosen = spread_indices(len(decoded.labels), args.limit)
    index = torch.from_numpy(chosen)
    return decoded.images[index], decoded.labels[index], chosen


def _pair(text: str) -> tuple[str, str]:
    a, sep, b = text.partition(":")
    if not sep or a not in MAP_NAMES or b not in MAP_NAMES:
        raise argparse.ArgumentTypeError(f"a pair is MAP:MAP with maps among {', '.join(MAP_NAMES)}, got {text!r}")
    return a, b


def _deletion(args: argparse.Namespace) -> int:
    model, meta = _load(args.checkpoint, args.device)
    images, labels, chosen = _dataset(args, meta)
    missing = [n for pair in args.pairs or [] for n in pair if n not in args.maps]
    if missing:
        raise SystemExit(f"--pairs names maps that --maps does not compute: {', '.join(sorted(set(missing)))}")
    result = faithfulness_over_dataset(
        model, meta, images, labels, args.stage, args.index, args.maps, positions=chosen, steps=args.steps,
        target=args.target, blur_sigma=args.blur_sigma, seed=args.seed, ig_steps=args.ig_steps,
        batch_size=args.batch_size, progress=not args.no_progress, reference=args.reference)
    print(result.table())
    print()
    print(result.paired_table(args.pairs))
    if args.out:
        arrays = {"fractions": result.fractions, "index": result.index, "targets": result.targets}
        if result.other_index is not None:
            arrays["other_index"] = result.other_index
        for n in result.names:
            arrays[f"deletion/{n}"] = result.deletion[n]
            arrays[f"insertion/{n}"] = result.insertion[n]
        np.savez_compressed(args.out, **arrays)
        print(f"wrote per-image curves to {args.out}")
    return 0


def _sanity(args: argparse.Namespace) -> int:
    from ..images import load_image
    from ..preprocess import Preprocessing

    model, meta = _load(args.checkpoint, args.device)
    device = next(model.parameters()).device
    prep = Preprocessing.from_meta(meta)
    if args.target not in (None, "label") and not args.target.isdigit():
        raise SystemExit(f"--target is a class index or 'label', got {args.target!r}")
    if args.image:
        if args.target == "label":
            raise SystemExit("--target label needs --data (an image file has no label)")
        inputs, positions = prep(load_image(args.image)).to(device), np.zeros(1, np.int64)
        targets: list[int | None] = [None if args.target is None else int(args.target)]
    else:
        images, labels, positions = _dataset(args, meta)
        inputs = prep.normalize(images.to(device))
        targets = (labels.tolist() if args.target == "label" else
                   [None if args.target is None else int(args.target)] * len(labels))
    seeds = args.seeds if args.seeds is not None else [args.seed]
    if args.image and len(seeds) == 1:
        result = sanity_check(model, inputs, targets[0], args.stage, args.index, args.maps, seed=seeds[0],
                              ig_steps=args.ig_steps)
        classes = meta.get("classes") or []
        name = classes[result.target] if result.target < len(classes) else str(result.target)
        print(f"{os.path.basename(args.image)}: target {result.target} ({name})")
        print(result.table())
        if args.out:
            np.savez_compressed(args.out, **{f"{s.block}/{n}": s.maps[n] for s in result.steps for n in result.names})
            print(f"wrote the maps of every step to {args.out}")
        return 0
    summary = sanity_over_images(model, inputs, targets, args.stage, args.index, args.maps, seeds,
                                 positions=positions, ig_steps=args.ig_steps)
    print(summary.table())
    if args.out:
        arrays: dict[str, np.ndarray] = {"index": summary.index, "targets": summary.targets,
                                         "seeds": np.array(summary.seeds), "blocks": np.array(summary.blocks),
                                         "probability": summary.probability}
        for n in summary.names:
            for measure in ("signed", "absolute", "ssim"):
                arrays[f"{measure}/{n}"] = summary.values(measure, n)  # type: ignore[arg-type]
        np.savez_compressed(args.out, **arrays)
        print(f"wrote images × seeds × steps measures to {args.out}")
    return 0


def _module(text: str) -> tuple[int, int]:
    stage, sep, index = text.partition(".")
    if not (stage.isdigit() and (not sep or index.isdigit())):
        raise argparse.ArgumentTypeError(f"a module is STAGE.INDEX, e.g. 2.1, got {text!r}")
    return int(stage), int(index or 1)


def _knockout(args: argparse.Namespace) -> int:
    model, meta = _load(args.checkpoint, args.device)
    images, labels, chosen = _dataset(args, meta)
    result = knockout_over_dataset(model, meta, images, labels, args.modules, args.modes, positions=chosen,
                                   seed=args.seed, batch_size=args.batch_size, progress=not args.no_progress)
    print(result.table())
    if args.out:
        arrays = {"index": result.index, "labels": result.labels, "intact": result.intact_logits}
        arrays.update({f"stage{s}_module{i}/{mode}": v for (s, i, mode), v in result.logits.items()})
        np.savez_compressed(args.out, **arrays)
        print(f"wrote per-image logits to {args.out}")
    return 0


def _data_options(parser: argparse.ArgumentParser, limit: int) -> None:
    parser.add_argument("--split", default="test", help="which split")
    parser.add_argument("--limit", type=int, default=limit, help="N images evenly spaced through the split")
    parser.add_argument("--cache-dir", help="cache decoded datasets here")


def build_parser() -> argparse.ArgumentParser:
    """The ``deletion``, ``sanity`` and ``knockout`` subcommands, with the options they share."""
    p = argparse.ArgumentParser(prog="python -m resattn.faithfulness",
                                description="Deletion / insertion AUCs with controls, the randomisation sanity "
                                            "check, and mask knock-outs over a dataset.")
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--checkpoint", required=True, help="a .safetensors checkpoint written by resattn")
    common.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="device")
    common.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    common.add_argument("--seed", type=int, default=0, help="seed of the random maps and of the choice of another "
                        "image / of the re-initialisation")
    maps = argparse.ArgumentParser(add_help=False)
    maps.add_argument("--stage", type=int, default=2, help="stage of the soft mask and of Grad-CAM")
    maps.add_argument("--index", type=int, default=1, help="module within the stage (mask)")
    maps.add_argument("--ig-steps", type=int, default=16, help="Integrated Gradients steps")
    fmt = argparse.ArgumentDefaultsHelpFormatter
    d = sub.add_parser("deletion", parents=[common, maps], formatter_class=fmt,
                       help="deletion and insertion AUCs of every map and control over a dataset, paired tests")
    d.add_argument("--data", required=True, help="'cifar10', a folder or a zip with test/ (or val/)")
    _data_options(d, 100)
    d.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="deletion / insertion steps")
    d.add_argument("--blur-sigma", type=float, help="insertion start blur σ in pixels (default: side / 16)")
    d.add_argument("--target", choices=["prediction", "label"], default="prediction", help="the class scored")
    d.add_argument("--maps", nargs="+", default=list(DELETION_MAPS), choices=list(MAP_NAMES), help="maps and controls")
    d.add_argument("--reference", default="mask", choices=[n for n in MAP_NAMES if n not in CONTROLS],
                   help="the map the controls other / inverted / smooth_random are made from")
    d.add_argument("--pairs", nargs="+", type=_pair, metavar="A:B",
                   help="paired tests of AUC(A) − AUC(B) (default: the reference against every other map, and the "
                        "smooth random map against pixel noise)")
    d.add_argument("--batch-size", type=int, default=128, help="perturbed images per forward pass")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")
    d.add_argument("--out", help="also write the per-image curves as .npz")
    d.set_defaults(run=_deletion)
    s = sub.add_parser("sanity", parents=[common, maps], formatter_class=fmt,
                       help="cascading randomisation of the weights (Adebayo et al. 2018), for one image or over "
                            "images and seeds")
    where = s.add_mutually_exclusive_group(required=True)
    where.add_argument("--image", help="an image file")
    where.add_argument("--data", help="a dataset ('cifar10', a folder or a zip): --limit images spread over it")
    _data_options(s, 10)
    s.add_argument("--seeds", type=int, nargs="+", help="re-initialisation seeds (default: --seed alone); several "
                   "seeds or --data print mean and spread over the runs")
    s.add_argument("--target", help="the class to explain: an index, or 'label' (--data) for the true class "
                   "(default: the trained model's prediction)")
    s.add_argument("--maps", nargs="+", default=list(SANITY_MAPS),
                   choices=["mask", "gradcam", "guided_gradcam", "integrated_gradients", "occlusion"], help="maps")
    s.add_argument("--out", help="also write the maps of every step (one image, one seed) or the measures as .npz")
    s.set_defaults(run=_sanity)
    k = sub.add_parser("knockout", parents=[common], formatter_class=fmt,
                       help="each module's mask replaced (0, 1, spatial mean, another image's) over a dataset: "
                            "change in accuracy and in the true class's logit")
    k.add_argument("--data", required=True, help="'cifar10', a folder or a zip with test/ (or val/)")
    _data_options(k, 500)
    k.add_argument("--modes", nargs="+", default=list(KNOCKOUT_MODES), choices=list(KNOCKOUT_MODES),
                   help="replacements")
    k.add_argument("--modules", nargs="+", type=_module, metavar="STAGE.INDEX",
                   help="modules to knock out (default: every attention module)")
    k.add_argument("--batch-size", type=int, default=100, help="images per forward pass")
    k.add_argument("--no-progress", action="store_true", help="no progress bar")
    k.add_argument("--out", help="also write the per-image logits as .npz")
    k.set_defaults(run=_knockout)
    return p
def main(argv: list[str] | None = None) -> int:
    """Run one subcommand (``argv`` defaults to the process's arguments); returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")  # Captum's notices
        warnings.filterwarnings("ignore", message=".*required_grads has been set automatically")
        return args.run(args)
