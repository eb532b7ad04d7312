"""The command line, ``python -m resattn.faithfulness``: ``deletion`` (AUCs of every map over a dataset) and
``sanity`` (the randomisation cascade for one image). Kept apart from ``__main__`` so that importing the package
(which re-exports :func:`main`) does not import the module ``-m`` is about to run."""

from __future__ import annotations

import argparse
import os
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from .deletion import DEFAULT_STEPS, faithfulness_over_dataset
from .randomisation import SANITY_MAPS, sanity_check
from .saliency import DELETION_MAPS, MAP_NAMES

__all__ = ["build_parser", "main"]


def _load(checkpoint: str, device: str) -> tuple[nn.Module, dict[str, Any]]:
    from ..checkpoint import load_checkpoint

    model, meta = load_checkpoint(checkpoint)
    dev = torch.device("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu")
    return model.to(dev).to(memory_format=torch.channels_last), meta


def _deletion(args: argparse.Namespace) -> int:
    from ..data import DataError, load_split
    from ..masks import spread_indices
    from ..preprocess import Preprocessing

    model, meta = _load(args.checkpoint, args.device)
    prep = Preprocessing.from_meta(meta)
    decoded = load_split(args.data, args.split, prep.resize,
                         os.path.expanduser(args.cache_dir) if args.cache_dir else None, crop=prep.size)
    folders = meta.get("class_folders", meta.get("classes", decoded.classes))
    if decoded.classes != folders:
        raise DataError(f"{args.data} has classes {decoded.classes}, the checkpoint was trained on {folders}")
    chosen = torch.from_numpy(spread_indices(len(decoded.labels), args.limit))
    result = faithfulness_over_dataset(
        model, meta, decoded.images[chosen], decoded.labels[chosen], args.stage, args.index, args.maps,
        positions=chosen.numpy(), steps=args.steps, target=args.target, blur_sigma=args.blur_sigma, seed=args.seed,
        ig_steps=args.ig_steps, batch_size=args.batch_size, progress=not args.no_progress)
    print(result.table())
    if args.out:
        arrays = {"fractions": result.fractions, "index": result.index, "targets": result.targets}
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
    x = Preprocessing.from_meta(meta)(load_image(args.image)).to(device)
    result = sanity_check(model, x, args.target, args.stage, args.index, args.maps, seed=args.seed,
                          ig_steps=args.ig_steps)
    classes = meta.get("classes") or []
    name = classes[result.target] if result.target < len(classes) else str(result.target)
    print(f"{os.path.basename(args.image)}: target {result.target} ({name})")
    print(result.table())
    if args.out:
        np.savez_compressed(args.out, **{f"{s.block}/{n}": s.maps[n] for s in result.steps for n in result.names})
        print(f"wrote the maps of every step to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``deletion`` and ``sanity`` subcommands, with the options they share."""
    p = argparse.ArgumentParser(prog="python -m resattn.faithfulness",
                                description="Deletion / insertion AUCs and the randomisation sanity check.")
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--checkpoint", required=True, help="a .safetensors checkpoint written by resattn")
    common.add_argument("--stage", type=int, default=2, help="stage of the soft mask and of Grad-CAM")
    common.add_argument("--index", type=int, default=1, help="module within the stage (mask)")
    common.add_argument("--seed", type=int, default=0, help="seed of the random map / the re-initialisation")
    common.add_argument("--ig-steps", type=int, default=16, help="Integrated Gradients steps")
    common.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="device")
    common.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    common.add_argument("--out", help="also write the per-image curves (deletion) or the maps (sanity) as .npz")
    fmt = argparse.ArgumentDefaultsHelpFormatter
    d = sub.add_parser("deletion", parents=[common], formatter_class=fmt,
                       help="deletion and insertion AUCs of every map over a dataset")
    d.add_argument("--data", required=True, help="'cifar10', a folder or a zip with test/ (or val/)")
    d.add_argument("--split", default="test", help="which split")
    d.add_argument("--limit", type=int, default=100, help="N images evenly spaced through the split")
    d.add_argument("--cache-dir", help="cache decoded datasets here")
    d.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="deletion / insertion steps")
    d.add_argument("--blur-sigma", type=float, help="insertion start blur σ in pixels (default: side / 16)")
    d.add_argument("--target", choices=["prediction", "label"], default="prediction", help="the class scored")
    d.add_argument("--maps", nargs="+", default=list(DELETION_MAPS), choices=list(MAP_NAMES), help="maps")
    d.add_argument("--batch-size", type=int, default=128, help="perturbed images per forward pass")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")
    d.set_defaults(run=_deletion)
    s = sub.add_parser("sanity", parents=[common], formatter_class=fmt,
                       help="cascading randomisation of the weights (Adebayo et al. 2018) for one image")
    s.add_argument("--image", required=True, help="an image file")
    s.add_argument("--target", type=int, help="the class to explain (default: the trained model's prediction)")
    s.add_argument("--maps", nargs="+", default=list(SANITY_MAPS),
                   choices=["mask", "gradcam", "guided_gradcam", "integrated_gradients", "occlusion"], help="maps")
    s.set_defaults(run=_sanity)
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
