"""Setting a run up: its data (class subsets, limits, the input pipeline), model (fresh or ``--init-from``), frozen
parts, optimizer and resume state, gathered in a :class:`Run` that the loop advances."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..checkpoint import load_checkpoint, read_meta
from ..data import (
    BatchIterator,
    DataError,
    Decoded,
    Normalizer,
    class_names,
    label_noise,
    load_split,
    native_size,
    split_labels,
)
from ..graphs import GraphForward, GraphTrainStep
from ..preprocess import Preprocessing, resize_for_crop
from ..registry import create_model
from . import environment
from .environment import Runtime, respelled, setup_runtime
from .recipes import TRAIN_ONLY, TrainConfig
from .state import load_state, save_state

__all__ = ["Run", "prepare", "select_classes", "frozen_parts", "build_optimizer"]


def _class_index(classes: list[str], wanted: Sequence[str], source: str) -> list[int]:
    """Indices of ``wanted`` classes (folder or display names) among ``classes``; :class:`DataError` if one is
    missing."""
    names = class_names(classes)
    index = []
    for w in wanted:
        if w in classes:
            index.append(classes.index(w))
        elif w in names:
            index.append(names.index(w))
        else:
            raise DataError(f"class {w!r} is not in {source} (classes: {', '.join(names)})")
    return index


def chosen_images(labels: Tensor, classes: list[str], source: str, wanted: Sequence[str] | None, limit: int | None,
                  seed: int) -> tuple[Tensor, Tensor, list[str]]:
    """Which images of a split a run uses, known from its labels before any image is decoded: (indices into the
    split, their labels relabelled 0..k−1 in ``wanted`` order, the kept class folders). ``wanted`` keeps a subset
    of classes; ``limit`` then keeps a random subset of that many images (seeded; in the split's order)."""
    keep = torch.arange(len(labels))
    if wanted:
        index = _class_index(classes, wanted, source)
        keep = torch.nonzero(torch.isin(labels, torch.tensor(index))).flatten()
        remap = torch.full((len(classes),), -1, dtype=torch.int64)
        remap[torch.tensor(index)] = torch.arange(len(index))
        labels, classes = remap[labels[keep]], [classes[i] for i in index]
    if limit is not None and limit < len(keep):
        pick = torch.randperm(len(keep), generator=torch.Generator().manual_seed(seed))[:limit].sort().values
        keep, labels = keep[pick], labels[pick]
    return keep, labels, classes


def select_classes(data: Decoded, wanted: Sequence[str] | None) -> Decoded:
    """Keep only the images of ``wanted`` classes (folder or display names), relabelled 0..k−1 in that order."""
    if not wanted:
        return data
    keep, labels, classes = chosen_images(data.labels, data.classes, data.source, wanted, None, 0)
    return Decoded(data.images[keep], labels, classes, data.source)


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
    #: Whether the training step runs under bf16 autocast (:func:`environment.trains_in_bf16`)
    bf16: bool = False

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


def _load_used(config: TrainConfig, split: str, limit: int | None, **decode: Any) -> Decoded:
    """The images of a split the run uses (``--classes``, then ``--train-limit`` / ``--test-limit``), chosen from
    the split's labels and only then decoded: memory follows the run, not the size of the source."""
    labels, classes = split_labels(config.data, split)
    keep, kept_labels, kept_classes = chosen_images(labels, classes, config.data, config.classes, limit, config.seed)
    data = load_split(config.data, split, items=None if len(keep) == len(labels) else keep.tolist(), **decode)
    return Decoded(data.images, kept_labels, kept_classes, data.source)


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
    train_data = _load_used(config, "train", config.train_limit, size=size, **decode)
    test_data = _load_used(config, "test", config.test_limit, size=size, crop=None if small else crop_size, **decode)
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


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
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
    optimizer = build_optimizer(model, config)
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
        previous_hardware = [dict(e, hardware=respelled(str(e["hardware"]))) for e in info.get("hardware_log", [])
                             if e.get("from_iteration", 0) < iteration]
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
    bf16 = environment.trains_in_bf16(config, runtime)
    machine = (environment.hardware(runtime) + ("; CUDA graphs" if config.cuda_graphs else "")
               + (environment.BF16_MARK if bf16 and runtime.device.type == "cpu" else ""))
    run = Run(config, runtime, model, train_module, optimizer, normalizer, train_data, test_data, batches, aug, frozen,
              prep, class_names(train_data.classes), small, noisy_fraction, total, per_epoch, iteration, machine, out,
              state_dir, log, base_meta, iteration, epoch_totals, graph_step, graph_eval, previous_hardware, bf16)
    log(f"hardware: {run.hardware}; {len(train_data.labels)} train / {len(test_data.labels)} test images; "
        f"{total} iterations ({per_epoch} per epoch, {run.num_epochs} epochs)"
        + (f"; {noisy_fraction:.1%} of training labels replaced (label noise {config.label_noise})" if config.label_noise else "")
        + (f"; training only {config.train_only}" if config.train_only != "all" else ""))
    return run
