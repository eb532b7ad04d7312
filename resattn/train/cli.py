"""``python -m resattn.train``: the command line over :class:`TrainConfig` and :func:`train`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import torch.distributed as dist

from ..checkpoint import CheckpointError
from ..data import DataError
from .loop import Diverged, train
from .recipes import CPU_BF16, RECIPES, TRAIN_ONLY, TrainConfig, check_value

__all__ = ["build_parser", "main"]


def _ranged(name: str, cast: type) -> Callable[[str], Any]:
    """An argparse type: ``cast`` the text, then check it against :data:`RANGES` (the message names the range)."""

    def parse(text: str) -> Any:
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if cast is int else ' number'}") from None
        try:
            return cast(check_value(name, value))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc).split(" ", 1)[1]) from None  # argparse names the option

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m resattn.train", description="Train a Residual Attention Network.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="attention56_cifar", help="registered model name (resattn.list_models())")
    p.add_argument("--data", default="cifar10", help="'cifar10' (torchvision download), 'cifar10:<root>', a folder or a zip with train/ and test/ (or val/)")
    p.add_argument("--recipe", choices=sorted(RECIPES), default="fast", help="training recipe preset")
    p.add_argument("--attention", choices=["mixed", "channel", "spatial"], default="mixed", help="mask activation")
    p.add_argument("--learning", choices=["arl", "nal"], default="arl", help="attention residual or naive attention learning")
    p.add_argument("--mask", choices=["hourglass", "local"], default="hourglass", help="soft mask structure")
    p.add_argument("--width-mult", type=_ranged("width_mult", float), default=1.0, help="channel width multiplier")
    p.add_argument("--epochs", type=_ranged("epochs", float), help="epochs to train (overrides the recipe)")
    p.add_argument("--iterations", type=_ranged("iterations", int), help="iterations to train (overrides the recipe and --epochs)")
    p.add_argument("--batch-size", type=_ranged("batch_size", int), help="mini-batch size per process")
    p.add_argument("--lr", type=_ranged("lr", float), help="initial (paper) or peak (fast) learning rate")
    p.add_argument("--weight-decay", type=_ranged("weight_decay", float), help="weight decay (paper: 1e-4; fast: 5e-4)")
    p.add_argument("--weight-decay-scope", choices=["all", "weights"],
                   help="decay every parameter (paper's default) or conv/FC weights only, exempting BN and biases (fast's default)")
    p.add_argument("--label-smoothing", type=_ranged("label_smoothing", float), help="label smoothing of the loss")
    p.add_argument("--label-noise", type=_ranged("label_noise", float), default=0.0, help="fraction of training labels replaced by another class (paper Table 5)")
    p.add_argument("--input-size", type=_ranged("input_size", int), help="model input side: CIFAR-size data is resized to it; photos are resized to "
                   "input-size/0.875 (shorter side), then random-resized crops (train) or the centre crop (test) of this size")
    p.add_argument("--crop-scale", type=_ranged("crop_scale", float), default=0.08, help="smallest area fraction of a random-resized crop (photos only)")
    p.add_argument("--seed", type=_ranged("seed", int), default=0, help="seed for init, data order, augmentation and label noise")
    p.add_argument("--out", default="runs/run", help="output folder: config.json, metrics.jsonl, model.safetensors")
    p.add_argument("--checkpoint", help="where to write the final checkpoint (default OUT/model.safetensors)")
    p.add_argument("--state-dir", help="resume state folder (default ~/.cache/resattn/runs/<name of OUT>)")
    p.add_argument("--cache-dir", help="cache decoded datasets here as .npy (e.g. ~/.cache/resattn/data)")
    p.add_argument("--resume", action="store_true", help="continue from the state in --state-dir")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="training device")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false", help="use NCHW tensors")
    p.add_argument("--no-bf16", dest="bf16", action="store_false", help="disable bf16 autocast on CUDA")
    p.add_argument("--cpu-bf16", choices=CPU_BF16, default="off",
                   help="bf16 autocast for training on the CPU: off (float32), auto (only where the processor has bf16 "
                        "instructions, AVX512_BF16 or AMX, which trains about 1.9x faster) or on; evaluation stays float32")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="capture each training and evaluation step as a CUDA graph (one process on CUDA): for small, "
                        "launch-bound models such as the CIFAR networks")
    p.add_argument("--threads", type=_ranged("threads", int), help="CPU threads per process (default: cores / local processes)")
    p.add_argument("--train-limit", type=_ranged("train_limit", int), help="use a random subset of this many training images")
    p.add_argument("--test-limit", type=_ranged("test_limit", int), help="use a random subset of this many test images")
    p.add_argument("--eval-batch-size", type=_ranged("eval_batch_size", int), default=256, help="batch size for evaluation")
    p.add_argument("--save-every", type=_ranged("save_every", int), default=200, help="write resume state every N iterations")
    p.add_argument("--stop-after", type=_ranged("stop_after", int), help="stop (resumably) after N iterations in this session")
    p.add_argument("--progress", choices=["auto", "bar", "none"], default="auto", help="tqdm progress bar")
    p.add_argument("--init-from", help="start from this checkpoint's weights and architecture (new classifier if the class count differs)")
    p.add_argument("--train-only", choices=list(TRAIN_ONLY), default="all",
                   help="train everything, only stage 3 and after, or only the classifier; frozen BN statistics stay frozen")
    p.add_argument("--classes", type=lambda v: [c.strip() for c in v.split(",") if c.strip()],
                   help="comma-separated subset of classes (folder or display names) to train and test on")
    p.add_argument("--probe", type=_ranged("probe", int), default=0, help="after every epoch, save every module's mask for this many fixed test images")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k in {f.name for f in dataclasses.fields(TrainConfig)}})
    for key in ("cache_dir", "state_dir"):
        if getattr(config, key):
            setattr(config, key, os.path.expanduser(getattr(config, key)))
    try:
        result = train(config)
    except (DataError, CheckpointError, Diverged) as exc:  # a user's mistake or a diverged run: say why, no trace
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        distributed = dist.is_initialized()
        if distributed:
            dist.destroy_process_group()
    print(json.dumps(result), flush=True)
    if distributed:
        # Every output is written and closed. Leave without interpreter teardown: gloo's worker threads
        # can still be joinable when static destructors run, which aborts a finished rank with SIGABRT
        # ("terminate called without an active exception"; seen once in CI after a successful run).
        sys.stderr.flush()
        os._exit(0)
    return 0
