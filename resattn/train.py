"""Train a Residual Attention Network: ``python -m resattn.train --help``.

A small loop library with two recipes, exact resume, label noise and DistributedDataParallel under ``torchrun``.

* ``paper`` — the paper's CIFAR recipe (§4.1) read plainly: Nesterov SGD, momentum 0.9, weight decay 1e-4 on
  every parameter, batch 64, lr 0.1 divided by 10 at 64k and 96k iterations, stop at 160k; per-pixel mean
  subtraction; pad-4 crop and flip.
* ``fast`` — for short budgets (not the paper's): Nesterov SGD, batch 128, weight decay 5e-4 on conv and FC
  weights only (batch-norm scale/shift and biases exempt), a one-cycle schedule (linear warm-up over the first 25%
  of iterations to the peak lr, then cosine to zero), label smoothing 0.1, per-channel normalisation.
  ``benchmarks/README.md`` records what it reached.

``--weight-decay-scope`` overrides either recipe's choice. Fine-tuning: ``--init-from CHECKPOINT`` starts from a
checkpoint's weights (its architecture and input pipeline; a new classifier when the class count differs),
``--train-only {all,stage3,head}`` freezes the rest (frozen batch-norm statistics stay frozen), ``--classes``
keeps a subset of classes, and ``--probe N`` writes every module's mask for N fixed test images after each epoch.

Resume state (weights, optimizer buffers, iteration, RNG states) lives in ``--state-dir``, by default under
``~/.cache/resattn/runs/<run>``, written atomically as safetensors + JSON, so a run can be stopped at any time and
continued with ``--resume``. On a CPU a resumed run ends with the same weights as an uninterrupted one (tested).
On CUDA the loop enables cuDNN benchmark mode and TF32 for speed, so kernels are chosen per run and results are
not bitwise reproducible: a resumed run continues the same schedule, data order and augmentation stream, and its
weights match an uninterrupted run only up to that numerical noise. Under ``torchrun`` the batch size is per
process; the data order and augmentation depend only on the global batch, so N processes with batch B follow
one process with batch N·B (batch-norm statistics are per process, as plain DDP computes them).
``--cuda-graphs`` (one process on CUDA) replays each iteration as a CUDA graph (:mod:`resattn.graphs`).
Outputs go to ``--out``: ``config.json``, ``metrics.jsonl`` (one line per epoch) and the final checkpoint,
whose metadata carries the *final-epoch* test accuracy (never a best-epoch pick) and every machine the run trained
on (``hardware``; ``hardware_log`` with the iteration each began at, for a run resumed elsewhere).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import signal
import sys
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .checkpoint import _unwrap, load_checkpoint, read_meta, save_checkpoint
from .graphs import GraphForward, GraphTrainStep
from .data import (BatchIterator, DataError, Decoded, Normalizer, augment_crop_flip, augment_resized_crop_flip, class_names,
                   label_noise, load_split, native_size)
from .preprocess import Preprocessing, resize_for_crop
from .registry import create_model

__all__ = [
    "TrainConfig", "RECIPES", "TRAIN_ONLY", "Run", "EpochCallback", "MaskSnapshots", "prepare", "epoch_steps", "end_epoch",
    "finish", "train", "run_steps", "main", "lr_at", "evaluate_model", "frozen_parts", "select_classes",
]

RECIPES: dict[str, dict[str, Any]] = {
    "paper": dict(
        batch_size=64, lr=0.1, weight_decay=1e-4, schedule="step", milestones=(64_000, 96_000),
        iterations=160_000, epochs=None, label_smoothing=0.0, per_pixel_mean=True, warmup=0.0,
        weight_decay_scope="all",
    ),
    "fast": dict(
        batch_size=128, lr=0.2, weight_decay=5e-4, schedule="onecycle", milestones=(),
        iterations=None, epochs=2, label_smoothing=0.1, per_pixel_mean=False, warmup=0.25,
        weight_decay_scope="weights",
    ),
}

_T = TypeVar("_T")

#: What ``--train-only`` may train: everything, stage 3 and after, or only the classifier.
TRAIN_ONLY: tuple[str, ...] = ("all", "stage3", "head")


@dataclass
class TrainConfig:
    """Everything that defines a run; stored in ``config.json`` and in the checkpoint's ``recipe``."""

    model: str = "attention56_cifar"
    data: str = "cifar10"
    recipe: str = "fast"
    attention: str = "mixed"
    learning: str = "arl"
    mask: str = "hourglass"
    width_mult: float = 1.0
    epochs: float | None = None
    iterations: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    weight_decay_scope: str | None = None  # "all" parameters, or conv/FC "weights" only; default from the recipe
    label_smoothing: float | None = None
    label_noise: float = 0.0
    input_size: int | None = None
    crop_scale: float = 0.08
    seed: int = 0
    out: str = "runs/run"
    state_dir: str | None = None
    cache_dir: str | None = None
    resume: bool = False
    device: str = "auto"
    channels_last: bool = True
    bf16: bool = True
    compile: bool = False
    cuda_graphs: bool = False
    threads: int | None = None
    train_limit: int | None = None
    test_limit: int | None = None
    eval_batch_size: int = 256
    save_every: int = 200
    stop_after: int | None = None
    progress: str = "auto"
    checkpoint: str | None = None
    init_from: str | None = None
    train_only: str = "all"
    classes: list[str] | None = None
    probe: int = 0
    # filled from the recipe
    schedule: str = field(default="", init=True)
    milestones: tuple[int, ...] = ()
    per_pixel_mean: bool = False
    warmup: float = 0.0

    def resolved(self) -> "TrainConfig":
        """The config with every unset option taken from the recipe."""
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {sorted(RECIPES)}, got {self.recipe!r}")
        base = RECIPES[self.recipe]
        values = dataclasses.asdict(self)
        for key in ("batch_size", "lr", "weight_decay", "label_smoothing", "weight_decay_scope"):
            if values[key] is None:
                values[key] = base[key]
        if values["epochs"] is None and values["iterations"] is None:
            values["epochs"], values["iterations"] = base["epochs"], base["iterations"]
        values["schedule"] = base["schedule"]
        values["milestones"] = tuple(base["milestones"])
        values["per_pixel_mean"] = base["per_pixel_mean"]
        values["warmup"] = base["warmup"]
        if values["weight_decay_scope"] not in ("all", "weights"):
            raise ValueError(f"weight_decay_scope must be 'all' or 'weights', got {values['weight_decay_scope']!r}")
        if values["train_only"] not in TRAIN_ONLY:
            raise ValueError(f"train_only must be one of {TRAIN_ONLY}, got {values['train_only']!r}")
        if values["init_from"]:  # the architecture comes from the checkpoint
            values["model"] = read_meta(values["init_from"])["model"]
        if values["state_dir"] is None:
            values["state_dir"] = os.path.join(
                os.path.expanduser("~"), ".cache", "resattn", "runs", Path(values["out"]).name or "run"
            )
        return TrainConfig(**values)


def lr_at(config: TrainConfig, iteration: int, total: int) -> float:
    """The learning rate at ``iteration`` (0-based) of ``total``: a pure function, so resume needs no state."""
    if config.schedule == "step":
        # the paper's milestones are for batch 64 and 160k iterations; scale them to the run's length
        scale = total / 160_000 if config.iterations != 160_000 else 1.0
        drops = sum(iteration >= round(m * scale) for m in config.milestones)
        return config.lr * (0.1**drops)
    warm = max(1, int(config.warmup * total))
    if iteration < warm:
        return config.lr * (0.1 + 0.9 * iteration / warm)
    progress = (iteration - warm) / max(1, total - warm)
    return config.lr * 0.5 * (1 + math.cos(math.pi * progress))


# ---------------------------------------------------------------------------------------------- environment


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_runtime(config: TrainConfig) -> Runtime:
    """Pick the device, threads and (under torchrun) the process group."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    want_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    device = torch.device(f"cuda:{local_rank}" if want_cuda else "cpu")
    if want_cuda:
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
        torch.set_num_threads(config.threads or max(1, (os.cpu_count() or 1) // local_world))
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if want_cuda else "gloo")
    return Runtime(device, rank, world_size, local_rank)


def hardware(runtime: Runtime) -> str:
    """A one-line description of the machine, stored with every run."""
    if runtime.device.type == "cuda":
        desc = f"{runtime.world_size}x {torch.cuda.get_device_name(runtime.device)}"
    else:
        desc = f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    return f"{desc}; torch {torch.__version__}" + (f"; {runtime.world_size} processes" if runtime.world_size > 1 else "")


def hardware_spans(history: Sequence[dict[str, Any]], total: int) -> list[tuple[str, int, int]]:
    """A ``hardware_log`` as (machine, first iteration, end iteration) spans of a run of ``total`` iterations."""
    starts = [int(e["from_iteration"]) for e in history]
    return [(str(e["hardware"]), start, end) for e, start, end in zip(history, starts, starts[1:] + [total])]


def hardware_summary(history: Sequence[dict[str, Any]], total: int) -> str:
    """One line for a run's machines: the one machine, or each with the iterations it trained."""
    spans = hardware_spans(history, total)
    if len(spans) == 1:
        return spans[0][0]
    return "; then ".join(f"{machine} (iterations {start}–{end})" for machine, start, end in spans)


# ---------------------------------------------------------------------------------------------- resume state


def _state_tensors(model: nn.Module, optimizer: torch.optim.Optimizer, aug: torch.Generator) -> dict[str, Tensor]:
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in _unwrap(model).state_dict().items()}
    for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"]):
        buf = optimizer.state.get(p, {}).get("momentum_buffer")
        if buf is not None:
            tensors[f"opt.{i}"] = buf.detach().cpu().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.aug"] = aug.get_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    return tensors


def save_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, aug: torch.Generator, info: dict) -> None:
    """Write resume state atomically: ``state.safetensors`` (tensors) with ``info`` as JSON metadata."""
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / "state.safetensors.tmp"
    save_file(_state_tensors(model, optimizer, aug), str(tmp), metadata={"info": json.dumps(info)})
    os.replace(tmp, path / "state.safetensors")


def load_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, aug: torch.Generator) -> dict:
    """Restore what :func:`save_state` wrote; returns its ``info``."""
    from safetensors import safe_open

    file = path / "state.safetensors"
    with safe_open(str(file), "pt") as fh:
        info = json.loads(fh.metadata()["info"])
    tensors = load_file(str(file))
    _unwrap(model).load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        if f"opt.{i}" in tensors:
            optimizer.state[p]["momentum_buffer"] = tensors[f"opt.{i}"].to(p.device)
    torch.set_rng_state(tensors["rng.torch"])
    aug.set_state(tensors["rng.aug"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return info


# ---------------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    data: Decoded,
    normalizer: nn.Module,
    runtime: Runtime,
    batch_size: int = 256,
    channels_last: bool = True,
    bf16: bool = True,
    num_classes: int | None = None,
    keep_predictions: bool = False,
    forward: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, Any]:
    """Top-1, mean loss, per-class accuracy and confusion matrix of ``model`` on a decoded split (all ranks);
    with ``keep_predictions`` (single process only) also every image's predicted class, in split order.
    ``forward`` replaces ``model``'s call (a :class:`GraphForward` of it under ``--cuda-graphs``)."""
    model.eval()
    k = num_classes or len(data.classes)
    confusion = torch.zeros(k, k, dtype=torch.int64, device=runtime.device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=runtime.device)
    if keep_predictions and runtime.world_size > 1:
        raise ValueError("keep_predictions needs a single process (each rank sees only its share of the split)")
    predictions: list[Tensor] = []
    batches = BatchIterator(data, batch_size, shuffle=False, rank=runtime.rank, world_size=runtime.world_size)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16 and runtime.device.type == "cuda")
    for images, labels in batches.epoch(0):
        x = normalizer(images.to(runtime.device, non_blocking=True))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        labels = labels.to(runtime.device, non_blocking=True)
        if forward is not None:
            logits = forward(x)
        else:
            with autocast:
                logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum").double()
        confusion += torch.bincount(labels * k + logits.argmax(1), minlength=k * k).view(k, k)
        if keep_predictions:
            predictions.append(logits.argmax(1).cpu())
    if runtime.world_size > 1:
        dist.all_reduce(confusion)
        dist.all_reduce(loss_sum)
    total = int(confusion.sum())
    correct = int(confusion.diag().sum())
    per_class = (confusion.diag().double() / confusion.sum(1).clamp(min=1).double()).tolist()
    return {
        "top1": correct / max(total, 1),
        "loss": float(loss_sum) / max(total, 1),
        "per_class": {name: round(acc, 6) for name, acc in zip(data.classes, per_class)},
        "confusion": confusion.cpu().tolist(),
        "images": total,
        **({"predictions": torch.cat(predictions).tolist() if predictions else []} if keep_predictions else {}),
    }


# ---------------------------------------------------------------------------------------------- training


class _Stop(Exception):
    pass


def _subset(data: Decoded, limit: int | None, seed: int) -> Decoded:
    if limit is None or limit >= len(data.labels):
        return data
    idx = torch.randperm(len(data.labels), generator=torch.Generator().manual_seed(seed))[:limit].sort().values
    return Decoded(data.images[idx], data.labels[idx], data.classes, data.source)


def select_classes(data: Decoded, wanted: Sequence[str] | None) -> Decoded:
    """Keep only the images of ``wanted`` classes (folder or display names), relabelled 0..k−1 in that order."""
    if not wanted:
        return data
    names = class_names(data.classes)
    index = []
    for w in wanted:
        if w in data.classes:
            index.append(data.classes.index(w))
        elif w in names:
            index.append(names.index(w))
        else:
            raise DataError(f"class {w!r} is not in {data.source} (classes: {', '.join(names)})")
    keep = torch.isin(data.labels, torch.tensor(index))
    remap = torch.full((len(data.classes),), -1, dtype=torch.int64)
    remap[torch.tensor(index)] = torch.arange(len(index))
    return Decoded(data.images[keep], remap[data.labels[keep]], [data.classes[i] for i in index], data.source)


def frozen_parts(model: nn.Module, train_only: str) -> list[nn.Module]:
    """The sub-modules that ``--train-only`` freezes: ``head`` trains only the classifier, ``stage3`` trains stage
    3 and everything after it, ``all`` freezes nothing. Frozen parts get no gradient and stay in eval mode, so
    their batch-norm statistics stay what they were."""
    if train_only not in TRAIN_ONLY:
        raise ValueError(f"train_only must be one of {TRAIN_ONLY}, got {train_only!r}")
    if train_only == "all":
        return []
    keep = {"fc"} if train_only == "head" else {"stage3", "tail", "norm", "relu", "pool", "fc"}
    return [module for name, module in model.named_children() if name not in keep]


@dataclass
class Run:
    """A training run in progress: what :func:`prepare` builds and the epoch functions advance."""

    config: TrainConfig
    runtime: Runtime
    model: nn.Module
    train_module: nn.Module
    optimizer: torch.optim.Optimizer
    normalizer: nn.Module
    train_data: Decoded
    test_data: Decoded
    batches: BatchIterator
    aug: torch.Generator
    frozen: list[nn.Module]
    preprocessing: Preprocessing
    classes: list[str]
    small: bool
    noisy_fraction: float
    total: int
    per_epoch: int
    iteration: int
    hardware: str
    out: Path
    state_dir: Path
    log: Callable[..., None]
    base_meta: dict[str, Any] | None = None
    session_start: int = 0
    #: The current epoch's running totals (seen, loss_sum, correct_sum, elapsed) up to ``iteration``, kept in the
    #: resume state so an epoch that spans a stop reports all of its images and seconds, not only the resumed part.
    epoch_totals: dict[str, float] | None = None
    #: ``--cuda-graphs``: the captured training step and evaluation forward pass (None: eager)
    graph_step: GraphTrainStep | None = None
    graph_eval: GraphForward | None = None
    #: Where the iterations before this session ran (from the resume state): ``[{"hardware", "from_iteration"}]``
    previous_hardware: list[dict[str, Any]] = field(default_factory=list)

    @property
    def num_epochs(self) -> int:
        return math.ceil(self.total / self.per_epoch)

    def hardware_history(self) -> list[dict[str, Any]]:
        """Every machine the run has trained on, each with the iteration it started at: a run resumed elsewhere
        (begun on a GPU, finished on a CPU) says so in its checkpoint instead of naming only the last machine."""
        entries = [dict(e) for e in self.previous_hardware]
        if not entries or entries[-1]["hardware"] != self.hardware:
            entries.append({"hardware": self.hardware, "from_iteration": self.session_start})
        return entries

    def model_input(self, images: Tensor) -> Tensor:
        """uint8 images → the normalised input (no augmentation), in the run's memory format."""
        x = self.normalizer(images.to(self.runtime.device))
        return x.contiguous(memory_format=torch.channels_last) if self.config.channels_last else x

    def save_state(self) -> None:
        info: dict[str, Any] = {"iteration": self.iteration, "config": dataclasses.asdict(self.config),
                                "hardware_log": self.hardware_history()}
        if self.epoch_totals is not None:
            info["epoch_totals"] = self.epoch_totals
        save_state(self.state_dir, self.model, self.optimizer, self.aug, info)


#: Called on rank 0 after every epoch with the run and that epoch's metrics line.
EpochCallback = Callable[[Run, dict[str, Any]], None]


def _load_data(config: TrainConfig, runtime: Runtime, base: Preprocessing | None) -> tuple[Decoded, Decoded, bool, int, int]:
    # CIFAR-style data (≤ 64 px) is used as it is; photos are decoded once with their shorter side at
    # resize = input_size / 0.875, trained on random-resized crops of input_size and tested on the centre crop
    small = min(native_size(config.data)) <= 64
    if base is not None:  # fine-tuning: the base checkpoint's input pipeline
        crop_size = base.size
    else:
        crop_size = config.input_size if small else (config.input_size or min(native_size(config.data)))
    resize = None if small else resize_for_crop(crop_size)  # type: ignore[arg-type]
    size = (crop_size if base is not None else config.input_size) if small else resize
    decode = dict(cache_dir=config.cache_dir, progress=runtime.main and sys.stderr.isatty())
    train_data = load_split(config.data, "train", size, **decode)
    test_data = load_split(config.data, "test", size, crop=None if small else crop_size, **decode)
    train_data = _subset(select_classes(train_data, config.classes), config.train_limit, config.seed)
    test_data = _subset(select_classes(test_data, config.classes), config.test_limit, config.seed)
    if small:
        crop_size = resize = train_data.images.shape[-1]
    return train_data, test_data, small, crop_size, resize  # type: ignore[return-value]


def _build_model(config: TrainConfig, num_classes: int, log: Callable[..., None]) -> tuple[nn.Module, dict[str, Any] | None]:
    if config.init_from:
        base, meta = load_checkpoint(config.init_from)
        overrides = dict(base.resattn_spec["overrides"])
        old = int(base.fc.out_features)
        if old != num_classes:
            overrides["num_classes"] = num_classes
        model = create_model(base.resattn_spec["name"], **overrides)
        state = {k: v for k, v in base.state_dict().items() if old == num_classes or not k.startswith("fc.")}
        model.load_state_dict(state, strict=old == num_classes)
        log(f"initialised from {Path(config.init_from).name} ({base.resattn_spec['name']}); "
            + (f"new {num_classes}-class classifier (the checkpoint has {old} classes)" if old != num_classes
               else "classifier kept"))
        return model, meta
    overrides: dict[str, Any] = dict(attention=config.attention, learning=config.learning, mask=config.mask,
                                     num_classes=num_classes)
    if config.width_mult != 1.0:
        overrides["width_mult"] = config.width_mult
    if config.model.startswith("resnet"):
        overrides = {"num_classes": num_classes} | ({"width_mult": config.width_mult} if config.width_mult != 1.0 else {})
    return create_model(config.model, **overrides), None


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.dim() == 1 and config.weight_decay_scope == "weights" else decay).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay}]
    if no_decay:  # "weights": BN scale/shift and biases are not decayed
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return torch.optim.SGD(groups, lr=config.lr, momentum=0.9, nesterov=True)  # type: ignore[arg-type]


def prepare(config: TrainConfig) -> Run:
    """Set up a run: device, data, model (fresh or ``--init-from``), optimizer, and the resume state if asked."""
    config = config.resolved()
    runtime = setup_runtime(config)
    log = (lambda *a: print(*a, flush=True)) if runtime.main else (lambda *a: None)
    log("resattn.train configuration:\n" + json.dumps(dataclasses.asdict(config), indent=2))
    torch.manual_seed(config.seed)
    base_prep = None
    if config.init_from:
        base_prep = Preprocessing.from_meta(read_meta(config.init_from))
    train_data, test_data, small, crop_size, resize = _load_data(config, runtime, base_prep)
    num_classes = len(train_data.classes)
    clean_labels = train_data.labels
    train_data = Decoded(train_data.images, label_noise(clean_labels, config.label_noise, num_classes, config.seed),
                         train_data.classes, train_data.source)
    noisy_fraction = float((train_data.labels != clean_labels).float().mean())

    model, base_meta = _build_model(config, num_classes, log)
    if base_meta is not None:  # fine-tuning keeps the input statistics the base was trained with
        prep = dataclasses.replace(base_prep, size=crop_size, resize=resize)  # type: ignore[arg-type]
        normalizer: nn.Module = Normalizer(prep.mean_tensor(), prep.std_tensor().flatten())
    else:
        normalizer = Normalizer.from_images(train_data.images, per_pixel=config.per_pixel_mean)
        mean, std = normalizer.channel_stats()
        mean_image = ([round(float(v), 5) for v in normalizer.mean.flatten()] if config.per_pixel_mean else None)
        prep = Preprocessing(crop_size, resize, tuple(mean), tuple(std), tuple(mean_image) if mean_image else None)
    normalizer = normalizer.to(runtime.device)
    frozen = frozen_parts(model, config.train_only)
    for part in frozen:
        part.requires_grad_(False)
    model = model.to(runtime.device).to(memory_format=torch.channels_last if config.channels_last else torch.contiguous_format)
    optimizer = _optimizer(model, config)
    aug = torch.Generator().manual_seed(config.seed + 1)
    batches = BatchIterator(train_data, config.batch_size, shuffle=True, seed=config.seed, drop_last=True,  # type: ignore[arg-type]
                            rank=runtime.rank, world_size=runtime.world_size)
    per_epoch = batches.batches_per_epoch()
    if per_epoch == 0:
        raise DataError(f"{len(train_data.labels)} training images make no full batch of {config.batch_size}"
                        + (f" per process × {runtime.world_size}" if runtime.world_size > 1 else ""))
    total = config.iterations or int(round(config.epochs * per_epoch))  # type: ignore[operator]
    state_dir = Path(config.state_dir)  # type: ignore[arg-type]
    iteration, epoch_totals, previous_hardware = 0, None, []
    if config.resume and (state_dir / "state.safetensors").exists():
        info = load_state(state_dir, model, optimizer, aug)
        iteration = info["iteration"]
        previous_hardware = [e for e in info.get("hardware_log", []) if e.get("from_iteration", 0) < iteration]
        totals = info.get("epoch_totals")  # absent in state written before it was kept, and in multi-process runs
        if isinstance(totals, dict) and totals.get("world_size") == runtime.world_size == 1:
            epoch_totals = {k: float(v) for k, v in totals.items()}
        log(f"resumed from {state_dir} at iteration {iteration}")
    elif config.resume:
        log(f"--resume: no state in {state_dir}; starting from scratch")
    train_module: nn.Module = model
    if runtime.world_size > 1:
        train_module = nn.parallel.DistributedDataParallel(
            model, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None
        )
    if config.compile:
        train_module = torch.compile(train_module)
    graph_step = graph_eval = None
    if config.cuda_graphs:
        if runtime.device.type != "cuda" or runtime.world_size > 1 or config.compile:
            raise ValueError("--cuda-graphs needs a single process on a CUDA device, without --compile")
        graph_step = GraphTrainStep(train_module, optimizer, config.label_smoothing, config.bf16)  # type: ignore[arg-type]
        graph_eval = GraphForward(model, config.eval_batch_size, config.bf16)
    out = Path(config.out)
    if runtime.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")
    run = Run(config, runtime, model, train_module, optimizer, normalizer, train_data, test_data, batches, aug, frozen,
              prep, class_names(train_data.classes), small, noisy_fraction, total, per_epoch, iteration,
              hardware(runtime) + ("; CUDA graphs" if config.cuda_graphs else ""), out, state_dir, log, base_meta,
              iteration, epoch_totals, graph_step, graph_eval, previous_hardware)
    log(f"hardware: {run.hardware}; {len(train_data.labels)} train / {len(test_data.labels)} test images; "
        f"{total} iterations ({per_epoch} per epoch, {run.num_epochs} epochs)"
        + (f"; {noisy_fraction:.1%} of training labels replaced (label noise {config.label_noise})" if config.label_noise else "")
        + (f"; training only {config.train_only}" if config.train_only != "all" else ""))
    return run


def _drain(steps: Generator[None, None, _T]) -> _T:
    """Run a step generator to its end and return its value."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def epoch_steps(run: Run, stop_requested: Callable[[], bool]) -> Generator[None, None, tuple[dict[str, Any], bool]]:
    """Train from ``run.iteration`` to the end of its epoch (or a stop), one iteration per ``next``; returns the
    epoch's training statistics and whether the run was asked to stop. Raises ``_Stop`` for a stop in the middle
    of an epoch. :func:`run_steps` chains the epochs."""
    config, runtime = run.config, run.runtime
    epoch, start_batch = divmod(run.iteration, run.per_epoch)
    run.model.train()
    for part in run.frozen:
        part.eval()
    seen, t0, before = 0, time.perf_counter(), 0.0
    correct_sum = torch.zeros((), device=runtime.device)
    loss_sum = torch.zeros((), device=runtime.device)
    carried = run.epoch_totals if start_batch and run.epoch_totals else None
    if carried is not None and int(carried["iteration"]) == run.iteration:  # the part of this epoch before a stop
        seen, before = int(carried["seen"]), carried["elapsed"]
        loss_sum += carried["loss_sum"]
        correct_sum += carried["correct_sum"]
    else:
        carried = None
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=config.bf16 and runtime.device.type == "cuda")
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    show_bar = runtime.main and (config.progress == "bar" or (config.progress == "auto" and sys.stderr.isatty()))
    bar = None
    if show_bar:
        from tqdm import tqdm

        steps = min(run.per_epoch, run.total - epoch * run.per_epoch) - start_batch
        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{run.num_epochs}", unit="it", leave=False)
    stopping = False
    for images, labels in run.batches.epoch(epoch, start_batch):
        if run.iteration >= run.total:
            break
        lr = lr_at(config, run.iteration, run.total)
        if run.graph_step is None:  # a graph step takes the rate as an argument (its groups hold a device tensor)
            for group in run.optimizer.param_groups:
                group["lr"] = lr
        x = run.normalizer(images.to(runtime.device, non_blocking=True))
        # every rank draws the whole global batch's augmentation and keeps its own samples, so the stream (and
        # the result) does not depend on the number of processes
        shard = dict(rank=runtime.rank, world_size=runtime.world_size)
        x = (augment_crop_flip(x, generator=run.aug, **shard) if run.small
             else augment_resized_crop_flip(x, run.preprocessing.size, scale=(config.crop_scale, 1.0), generator=run.aug, **shard))
        x = x.contiguous(memory_format=memory_format)
        labels = labels.to(runtime.device, non_blocking=True)
        if run.graph_step is not None:
            loss, logits = run.graph_step(x, labels, lr)
        else:
            with autocast:
                logits = run.train_module(x)
                loss = F.cross_entropy(logits.float(), labels, label_smoothing=config.label_smoothing)
            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            run.optimizer.step()
        run.iteration += 1
        seen += len(labels)
        loss_sum += loss.detach() * len(labels)
        correct_sum += (logits.detach().argmax(1) == labels).sum()
        if bar is not None:
            bar.update(1)
            if run.iteration % 10 == 0:
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}", lr=f"{lr:.3g}")
        yield
        stop_now = stop_requested() or (config.stop_after is not None and run.iteration - run.session_start >= config.stop_after)
        if runtime.main and (run.iteration % config.save_every == 0 or stop_now):
            # only a single process's totals are whole; a multi-process resume marks the epoch partial instead
            run.epoch_totals = {"iteration": run.iteration, "world_size": runtime.world_size, "seen": seen,
                                "loss_sum": float(loss_sum), "correct_sum": float(correct_sum),
                                "elapsed": before + time.perf_counter() - t0}
            run.save_state()
        if stop_now:
            stopping = True
            if run.iteration % run.per_epoch:  # mid-epoch: stop now; at an epoch's end, evaluate it first
                if bar is not None:
                    bar.close()
                raise _Stop
            break
    if bar is not None:
        bar.close()
    elapsed = before + time.perf_counter() - t0
    run.epoch_totals = None  # the epoch ends here (or the run stops mid-epoch above, with its totals saved)
    if runtime.world_size > 1:
        for t in (loss_sum, correct_sum):
            dist.all_reduce(t)
        seen *= runtime.world_size
    stats = {"epoch": epoch + 1, "seen": seen, "loss_sum": float(loss_sum), "correct_sum": float(correct_sum),
             "elapsed": elapsed, "partial": start_batch > 0 and carried is None}
    return stats, stopping


def end_epoch(run: Run, stats: dict[str, Any], callbacks: Sequence[EpochCallback] = ()) -> dict[str, Any]:
    """Evaluate the epoch on the test split, append its metrics line, save the resume state, run the callbacks."""
    config, runtime = run.config, run.runtime
    test = evaluate_model(run.model, run.test_data, run.normalizer, runtime, config.eval_batch_size,
                          config.channels_last, config.bf16, len(run.train_data.classes), forward=run.graph_eval)
    seen, elapsed = stats["seen"], stats["elapsed"]
    metrics = {
        "epoch": stats["epoch"],
        "iteration": run.iteration,
        "train_loss": stats["loss_sum"] / max(seen, 1),
        "train_top1": stats["correct_sum"] / max(seen, 1),
        "test_loss": test["loss"],
        "test_top1": test["top1"],
        "test_images": test["images"],
        "lr": lr_at(config, run.iteration - 1, run.total),
        "images_per_s": seen / elapsed if elapsed > 0 else 0.0,
        "epoch_seconds": elapsed,
        "partial_epoch": stats["partial"],
        "noisy_label_fraction": run.noisy_fraction,
        "progress": run.iteration / run.total,
    }
    if runtime.main:
        with (run.out / "metrics.jsonl").open("a") as fh:
            fh.write(json.dumps(metrics) + "\n")
        run.save_state()
        for callback in callbacks:
            callback(run, metrics)
    run.log(f"epoch {metrics['epoch']}/{run.num_epochs}: train loss {metrics['train_loss']:.4f} acc {metrics['train_top1']:.4f} | "
            f"test loss {test['loss']:.4f} acc {test['top1']:.4f} | {metrics['images_per_s']:.1f} img/s, {elapsed:.0f} s")
    return metrics


def finish(run: Run, metrics: dict[str, Any]) -> dict[str, Any]:
    """Write the final checkpoint (rank 0); its metadata carries the final epoch's test accuracy."""
    config = run.config
    final = {"test_top1": metrics["test_top1"], "test_loss": metrics["test_loss"],
             "test_images": metrics.get("test_images"), "train_top1": metrics["train_top1"],
             "epochs": run.total / run.per_epoch, "iterations": run.total, "label_noise": config.label_noise,
             "noisy_label_fraction": run.noisy_fraction, "final_epoch_reported": True}
    if run.runtime.main:
        history = run.hardware_history()
        meta = {
            **run.preprocessing.to_meta(),
            "classes": run.classes,
            **({"class_folders": run.train_data.classes} if run.classes != run.train_data.classes else {}),
            "dataset": _dataset_name(config.data),
            "metrics": final,
            "recipe": public_recipe(config),
            "seed": config.seed,
            "epochs": run.total / run.per_epoch,
            "label_noise": config.label_noise,
            "hardware": hardware_summary(history, run.total),
            "hardware_log": history,
        }
        if run.base_meta is not None:
            meta["init_from"] = {"checkpoint": Path(config.init_from).name, "model": run.base_meta.get("model"),  # type: ignore[arg-type]
                                 "dataset": run.base_meta.get("dataset"), "train_only": config.train_only}
        target = Path(config.checkpoint) if config.checkpoint else run.out / "model.safetensors"
        target.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(target, run.model, meta)
        run.log(f"final-epoch test accuracy {final['test_top1']:.4f}; checkpoint {target}")
    if run.runtime.world_size > 1:
        dist.barrier()
    return final


def train(config: TrainConfig, callbacks: Sequence[EpochCallback] = ()) -> dict[str, Any]:
    """Run (or resume) a training run; returns the final metrics. Rank 0 writes every output.

    ``callbacks`` run on rank 0 after every epoch (``config.probe`` adds :class:`MaskSnapshots`).
    """
    run = prepare(config)
    callbacks = list(callbacks)
    if run.runtime.main and run.config.probe:
        snapshots = MaskSnapshots.from_test_split(run, run.config.probe)
        if run.iteration == 0:
            snapshots.write(run, epoch=0)  # the masks before any training: the base checkpoint's, or the init's
        callbacks.append(snapshots)
    stop_flag = {"stop": False}

    def request_stop(signum: int, frame: Any) -> None:  # noqa: ARG001 - signal handler signature
        stop_flag["stop"] = True

    old_handler = signal.signal(signal.SIGTERM, request_stop) if run.runtime.main and _main_thread() else None
    try:
        return _drain(run_steps(run, lambda: stop_flag["stop"], callbacks))
    finally:
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)


def run_steps(run: Run, stop_requested: Callable[[], bool],
              callbacks: Sequence[EpochCallback] = ()) -> Generator[None, None, dict[str, Any]]:
    """The rest of a run one iteration at a time: train each epoch, evaluate it, write the final checkpoint.

    Yields after every iteration and returns :func:`finish`'s metrics, or ``{"stopped_at": iteration}`` after a
    stop (the state is saved; ``--resume`` continues). :func:`train` drains it; ``scripts/train_gpu_set.py``
    interleaves several runs' generators on one GPU.
    """
    metrics: dict[str, Any] = {}
    try:
        while run.iteration < run.total:
            stats, stopping = yield from epoch_steps(run, stop_requested)
            metrics = end_epoch(run, stats, callbacks)
            if stopping and run.iteration < run.total:
                raise _Stop
    except _Stop:
        run.log(f"stopped at iteration {run.iteration}; continue with --resume (state in {run.state_dir})")
        return {"stopped_at": run.iteration}
    if not metrics:  # resumed a run whose last epoch had already been evaluated
        metrics = json.loads((run.out / "metrics.jsonl").read_text().splitlines()[-1])
    return finish(run, metrics)


class MaskSnapshots:
    """After every epoch, every attention module's mask (mean over channels) for a fixed probe set of test images,
    written to ``OUT/snapshots/epoch_NNN.npz`` so a page can scrub through how the masks change while training.

    Each file holds ``images`` (uint8 N×H×W×3, the probe inputs as the model sees them), ``labels``,
    ``predictions``, ``probabilities`` and one array ``stage{s}_module{i}`` (N×h×w) per module.
    """

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        self.images, self.labels = images, labels

    @classmethod
    def from_test_split(cls, run: Run, count: int) -> "MaskSnapshots":
        """The first test image of each class in turn, until ``count`` images (deterministic)."""
        labels = run.test_data.labels
        order: list[int] = []
        firsts = [torch.nonzero(labels == c).flatten().tolist() for c in range(len(run.test_data.classes))]
        depth = 0
        while len(order) < min(count, len(labels)):
            for idx in firsts:
                if depth < len(idx) and len(order) < count:
                    order.append(idx[depth])
            depth += 1
        index = torch.tensor(order, dtype=torch.int64)
        return cls(run.test_data.images[index], labels[index])

    def write(self, run: Run, epoch: int) -> Path:
        from .inspect import inspect

        x = run.model_input(self.images)
        trace = inspect(run.model, x)
        probs = torch.softmax(trace.logits.float(), dim=1)
        arrays: dict[str, np.ndarray] = {
            "images": self.images.permute(0, 2, 3, 1).numpy(),
            "labels": self.labels.numpy(),
            "predictions": probs.argmax(1).cpu().numpy(),
            "probabilities": probs.max(1).values.cpu().numpy(),
        }
        for record in trace.modules:
            arrays[f"stage{record.stage}_module{record.index}"] = record.mask.float().mean(dim=1).cpu().numpy()
        folder = run.out / "snapshots"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"epoch_{epoch:03d}.npz"
        tmp = folder / f".epoch_{epoch:03d}.tmp.npz"
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, path)
        return path

    def __call__(self, run: Run, metrics: dict[str, Any]) -> None:
        self.write(run, metrics["epoch"])


def public_recipe(config: TrainConfig) -> dict[str, Any]:
    """The run's configuration as stored in a checkpoint: local paths (output, state and cache folders) are
    dropped and the data source is reduced to its name, so a shipped checkpoint names no machine's paths."""
    recipe = dataclasses.asdict(config)
    for key in ("out", "state_dir", "cache_dir", "checkpoint", "progress"):
        recipe.pop(key, None)
    recipe["data"] = _dataset_name(config.data)
    if config.init_from:
        recipe["init_from"] = Path(config.init_from).name
    recipe["milestones"] = list(config.milestones)
    return recipe


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _dataset_name(source: str) -> str:
    name = Path(source.partition(":")[0] if source.startswith("cifar10") else source).name
    return name.removesuffix(".zip") or source


# ---------------------------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m resattn.train", description="Train a Residual Attention Network.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="attention56_cifar", help="registered model name (resattn.list_models())")
    p.add_argument("--data", default="cifar10", help="'cifar10' (torchvision download), 'cifar10:<root>', a folder or a zip with train/ and test/ (or val/)")
    p.add_argument("--recipe", choices=sorted(RECIPES), default="fast", help="training recipe preset")
    p.add_argument("--attention", choices=["mixed", "channel", "spatial"], default="mixed", help="mask activation")
    p.add_argument("--learning", choices=["arl", "nal"], default="arl", help="attention residual or naive attention learning")
    p.add_argument("--mask", choices=["hourglass", "local"], default="hourglass", help="soft mask structure")
    p.add_argument("--width-mult", type=float, default=1.0, help="channel width multiplier")
    p.add_argument("--epochs", type=float, help="epochs to train (overrides the recipe)")
    p.add_argument("--iterations", type=int, help="iterations to train (overrides the recipe and --epochs)")
    p.add_argument("--batch-size", type=int, help="mini-batch size per process")
    p.add_argument("--lr", type=float, help="initial (paper) or peak (fast) learning rate")
    p.add_argument("--weight-decay", type=float, help="weight decay (paper: 1e-4; fast: 5e-4)")
    p.add_argument("--weight-decay-scope", choices=["all", "weights"],
                   help="decay every parameter (paper's default) or conv/FC weights only, exempting BN and biases (fast's default)")
    p.add_argument("--label-smoothing", type=float, help="label smoothing of the loss")
    p.add_argument("--label-noise", type=float, default=0.0, help="fraction of training labels replaced by another class (paper Table 5)")
    p.add_argument("--input-size", type=int, help="model input side: CIFAR-size data is resized to it; photos are resized to "
                   "input-size/0.875 (shorter side), then random-resized crops (train) or the centre crop (test) of this size")
    p.add_argument("--crop-scale", type=float, default=0.08, help="smallest area fraction of a random-resized crop (photos only)")
    p.add_argument("--seed", type=int, default=0, help="seed for init, data order, augmentation and label noise")
    p.add_argument("--out", default="runs/run", help="output folder: config.json, metrics.jsonl, model.safetensors")
    p.add_argument("--checkpoint", help="where to write the final checkpoint (default OUT/model.safetensors)")
    p.add_argument("--state-dir", help="resume state folder (default ~/.cache/resattn/runs/<name of OUT>)")
    p.add_argument("--cache-dir", help="cache decoded datasets here as .npy (e.g. ~/.cache/resattn/data)")
    p.add_argument("--resume", action="store_true", help="continue from the state in --state-dir")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="training device")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false", help="use NCHW tensors")
    p.add_argument("--no-bf16", dest="bf16", action="store_false", help="disable bf16 autocast on CUDA")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="capture each training and evaluation step as a CUDA graph (one process on CUDA): for small, "
                        "launch-bound models such as the CIFAR networks")
    p.add_argument("--threads", type=int, help="CPU threads per process (default: cores / local processes)")
    p.add_argument("--train-limit", type=int, help="use a random subset of this many training images")
    p.add_argument("--test-limit", type=int, help="use a random subset of this many test images")
    p.add_argument("--eval-batch-size", type=int, default=256, help="batch size for evaluation")
    p.add_argument("--save-every", type=int, default=200, help="write resume state every N iterations")
    p.add_argument("--stop-after", type=int, help="stop (resumably) after N iterations in this session")
    p.add_argument("--progress", choices=["auto", "bar", "none"], default="auto", help="tqdm progress bar")
    p.add_argument("--init-from", help="start from this checkpoint's weights and architecture (new classifier if the class count differs)")
    p.add_argument("--train-only", choices=list(TRAIN_ONLY), default="all",
                   help="train everything, only stage 3 and after, or only the classifier; frozen BN statistics stay frozen")
    p.add_argument("--classes", type=lambda v: [c.strip() for c in v.split(",") if c.strip()],
                   help="comma-separated subset of classes (folder or display names) to train and test on")
    p.add_argument("--probe", type=int, default=0, help="after every epoch, save every module's mask for this many fixed test images")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k in {f.name for f in dataclasses.fields(TrainConfig)}})
    for key in ("cache_dir", "state_dir"):
        if getattr(config, key):
            setattr(config, key, os.path.expanduser(getattr(config, key)))
    try:
        result = train(config)
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


if __name__ == "__main__":
    raise SystemExit(main())
