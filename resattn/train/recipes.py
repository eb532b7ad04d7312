"""The two training recipes, the run's configuration and the learning-rate schedule (a pure function of the
iteration, so resuming a run needs no scheduler state)."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..checkpoint import read_meta

__all__ = ["RECIPES", "TRAIN_ONLY", "CPU_BF16", "RANGES", "PAPER_ITERATIONS", "TrainConfig", "check_value", "lr_at",
           "step_milestones"]

#: The length of the paper's CIFAR schedule (iterations of batch 64), for which its milestones are stated.
PAPER_ITERATIONS = 160_000


RECIPES: dict[str, dict[str, Any]] = {
    "paper": dict(
        batch_size=64, lr=0.1, weight_decay=1e-4, schedule="step", milestones=(64_000, 96_000),
        iterations=PAPER_ITERATIONS, epochs=None, label_smoothing=0.0, per_pixel_mean=True, warmup=0.0,
        weight_decay_scope="all",
    ),
    "fast": dict(
        batch_size=128, lr=0.2, weight_decay=5e-4, schedule="onecycle", milestones=(),
        iterations=None, epochs=2, label_smoothing=0.1, per_pixel_mean=False, warmup=0.25,
        weight_decay_scope="weights",
    ),
}

#: What ``--train-only`` may train: everything, stage 3 and after, or only the classifier.
TRAIN_ONLY: tuple[str, ...] = ("all", "stage3", "head")


#: What ``--cpu-bf16`` accepts: float32 on the CPU (the default, repeatable on one kind of processor), bf16 autocast
#: where the processor has bf16 instructions, or bf16 autocast always.
CPU_BF16: tuple[str, ...] = ("off", "auto", "on")


#: The range of every numeric option as (lowest, highest, lowest allowed, highest allowed); NaN and infinities are
#: never allowed. The command line refuses a value outside it, naming the option, and so does
#: :meth:`TrainConfig.resolved`. ``threads`` is bounded by the machine's cores instead (:func:`check_value`).
RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "width_mult": (0, 4, False, True),
    "epochs": (0, 1000, False, True),
    "iterations": (1, 10**8, True, True),
    "batch_size": (1, 4096, True, True),
    "lr": (0, 10, False, True),
    "weight_decay": (0, 1, True, True),
    "label_smoothing": (0, 1, True, False),
    "label_noise": (0, 1, True, False),
    "input_size": (16, 512, True, True),
    "crop_scale": (0, 1, False, True),
    "seed": (0, 2**32 - 1, True, True),
    "threads": (1, 1, True, True),  # the high end is the machine's core count
    "train_limit": (1, 10**8, True, True),
    "test_limit": (1, 10**8, True, True),
    "eval_batch_size": (1, 4096, True, True),
    "save_every": (1, 10**9, True, True),
    "stop_after": (1, 10**9, True, True),
    "probe": (0, 64, True, True),
}


def check_value(name: str, value: float) -> float:
    """``value`` of option ``name`` (a key of :data:`RANGES`) if it is a finite number in its range, else
    :class:`ValueError` naming the option (``--name``) and its range."""
    low, high, low_ok, high_ok = RANGES[name]
    if name == "threads":
        high = os.cpu_count() or 1
    inside = math.isfinite(value) and (low <= value if low_ok else low < value) and (
        value <= high if high_ok else value < high)
    if not inside:
        bounds = f"{'[' if low_ok else '('}{_number(low)}, {_number(high)}{']' if high_ok else ')'}"
        raise ValueError(f"--{name.replace('_', '-')} must be a finite number in {bounds}, got {_number(value)}")
    return value


def _number(value: float) -> str:
    return f"{int(value):,}" if math.isfinite(value) and float(value).is_integer() else f"{value:g}"


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
    cpu_bf16: str = "off"  # "off" (float32), "auto" (where the CPU has bf16 instructions) or "on": see environment
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
        for name in RANGES:
            if values[name] is not None:
                check_value(name, values[name])
        if values["weight_decay_scope"] not in ("all", "weights"):
            raise ValueError(f"weight_decay_scope must be 'all' or 'weights', got {values['weight_decay_scope']!r}")
        if values["cpu_bf16"] not in CPU_BF16:
            raise ValueError(f"cpu_bf16 must be one of {CPU_BF16}, got {values['cpu_bf16']!r}")
        if values["train_only"] not in TRAIN_ONLY:
            raise ValueError(f"train_only must be one of {TRAIN_ONLY}, got {values['train_only']!r}")
        if values["init_from"]:  # the architecture comes from the checkpoint
            values["model"] = read_meta(values["init_from"])["model"]
        if values["state_dir"] is None:
            values["state_dir"] = os.path.join(
                os.path.expanduser("~"), ".cache", "resattn", "runs", Path(values["out"]).name or "run"
            )
        return TrainConfig(**values)


def step_milestones(milestones: tuple[int, ...] | list[int], total: int) -> list[int]:
    """The iterations at which the step schedule divides the learning rate by 10 in a run of ``total``
    iterations: the paper's milestones (64k and 96k of 160k) scaled to the run's length, so a short run keeps
    the schedule's shape."""
    return [round(m * total / PAPER_ITERATIONS) for m in milestones]


def lr_at(config: TrainConfig, iteration: int, total: int) -> float:
    """The learning rate at ``iteration`` (0-based) of ``total``: a pure function, so resume needs no state."""
    if config.schedule == "step":
        drops = sum(iteration >= m for m in step_milestones(config.milestones, total))
        return config.lr * (0.1**drops)
    warm = max(1, int(config.warmup * total))
    if iteration < warm:
        return config.lr * (0.1 + 0.9 * iteration / warm)
    progress = (iteration - warm) / max(1, total - warm)
    return config.lr * 0.5 * (1 + math.cos(math.pi * progress))
