"""Cached resources of the explorer: the model catalogue, models (once per process) and derived maps.

* Models are ``st.cache_resource``: loaded once per process, keyed by the checkpoint's content hash (or the
  random model's spec), behind a lock, and shared by every browser session (``resattn.inspect`` is safe to
  call concurrently on one model; Captum calls are serialised per model in ``resattn.attribution``).
* Traces and attributions are ``st.cache_data``, keyed by model key, image hash, stage and method. The image
  and model objects are passed as ``_``-prefixed arguments, which Streamlit does not hash.

Configuration (environment variables):

* ``RESATTN_CHECKPOINT_DIR``: where ``*.safetensors`` checkpoints are found (default: ``checkpoints/`` in the
  repository).
* ``RESATTN_THREADS``: torch intra-op threads (default 1).
* ``RESATTN_APP_MODELS``: the randomly initialised models to offer, comma-separated, each
  ``name[@input_size][:key=value;key=value]``, e.g. ``attention56_cifar:width_mult=0.25``. ``none`` offers none.
  When trained checkpoints are present, random models are listed only when the sidebar's switch asks for them.

Memory is bounded by the caches' ``max_entries`` (models 16, traces 48, attributions 96, panels 256, decoded
uploads 64 in ``components``); ``scripts/bench_classroom.py`` measures the server's resident memory under load.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st
import torch
from PIL import Image

import resattn
from resattn import attribution, maps
from resattn.preprocess import Preprocessing, resize_for_crop

REPO = Path(__file__).resolve().parents[2]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DEFAULT_RANDOM = ",".join(
    [f"attention56_cifar:attention={a};learning={l}" for l in ("arl", "nal") for a in ("mixed", "channel", "spatial")]
    + ["attention56_imagenet@160"]
)
_LOAD_LOCK = threading.Lock()
# One intra-op thread by default: one image per pass is small, sessions run in parallel threads, and on a small
# machine that also trains, a starved second OpenMP thread makes each pass ~15x slower (scripts/bench_app.py).
torch.set_num_threads(int(os.environ.get("RESATTN_THREADS") or 1))


@dataclass
class ModelEntry:
    """One choice in the model picker: a checkpoint file or a randomly initialised model."""

    key: str  # cache key: "sha256:<content hash>" or "random:<spec>"
    label: str
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    spec: str | None = None
    error: str | None = None  # why the checkpoint cannot be read (shown; the app falls back)

    @property
    def random(self) -> bool:
        return self.path is None

    @property
    def short_hash(self) -> str:
        return self.key.split(":", 1)[1][:12] if self.key.startswith("sha256:") else "random"


def checkpoint_dir() -> Path:
    return Path(os.environ.get("RESATTN_CHECKPOINT_DIR") or REPO / "checkpoints")


def _parse_value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_spec(spec: str) -> tuple[str, int | None, dict[str, Any]]:
    """``name[@size][:k=v;k=v]`` → (name, input size or None, overrides)."""
    head, _, tail = spec.strip().partition(":")
    name, _, size = head.partition("@")
    overrides = {}
    for pair in filter(None, tail.split(";")):
        key, _, value = pair.partition("=")
        overrides[key.strip()] = _parse_value(value.strip())
    return name.strip(), int(size) if size else None, overrides


def random_meta(spec: str) -> dict[str, Any]:
    """Meta for a randomly initialised model, in the same shape as a checkpoint's."""
    name, size, overrides = parse_spec(spec)
    imagenet = name.endswith("_imagenet")
    num_classes = int(overrides.get("num_classes", 1000 if imagenet else 10))
    if imagenet and num_classes == 1000:
        from torchvision.models import ResNet18_Weights

        classes = list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])
    elif not imagenet and num_classes == 10:
        classes = list(CIFAR10_CLASSES)
    else:
        classes = [f"class {i}" for i in range(num_classes)]
    side = size or (224 if imagenet else 32)
    return {
        "model": name,
        "overrides": overrides,
        "classes": classes,
        "input_size": side,
        "resize": resize_for_crop(side) if imagenet else side,
        "mean": list(IMAGENET_MEAN if imagenet else CIFAR_MEAN),
        "std": list(IMAGENET_STD if imagenet else CIFAR_STD),
        "dataset": "none (random weights)",
        "metrics": {},
        "arch_revision": resattn.networks.ARCH_REVISION,
    }


def short_label(entry: "ModelEntry") -> str:
    """A few words for the sidebar picker: file name (or RANDOM + model), the full description is shown below."""
    if entry.error:
        return entry.label
    if entry.random:
        o = entry.meta.get("overrides", {})
        return f"RANDOM {entry.meta.get('model', '?')} {o.get('attention', 'mixed')} {str(o.get('learning', 'arl')).upper()}"
    return entry.path.stem if entry.path else entry.label


def is_photo_model(meta: dict[str, Any]) -> bool:
    """A model for photos: trained on larger-than-CIFAR images (e.g. Imagenette at 128 px)."""
    try:
        return Preprocessing.from_meta(meta).size > 64
    except (KeyError, TypeError, ValueError):
        return False


#: Data names as the checkpoints record them -> (what to call the data, the split "test top-1" is measured on).
#: "imagenette-224" names the zip (photos stored at 224 px), not the input size: the banner says that separately.
DATASETS: dict[str, tuple[str, str]] = {
    "imagenette-224": ("Imagenette", "Imagenette's validation split, 3,925 photos"),
    "imagenette": ("Imagenette", "Imagenette's validation split, 3,925 photos"),
    "cifar10-jpeg": ("CIFAR-10", "the CIFAR-10 test set, 10,000 images"),
    "cifar10": ("CIFAR-10", "the CIFAR-10 test set, 10,000 images"),
}


def describe_meta(meta: dict[str, Any]) -> str:
    """Model, width, input size, data, attention, ARL/NAL and the test accuracy with the set it was measured on."""
    o = meta.get("overrides", {})
    data = str(meta.get("dataset", "?"))
    name, split = DATASETS.get(data, (data, "its test split"))
    parts = [meta.get("model", "?")]
    width = o.get("width_mult", 1)
    if isinstance(width, (int, float)) and width != 1:
        parts.append(f"width ×{width:g}")
    if isinstance(meta.get("input_size"), int):
        parts.append(f"{meta['input_size']} px input")
    parts += [name if name == data else f"{name} ({data})", o.get("attention", "mixed"), str(o.get("learning", "arl")).upper()]
    if o.get("mask") == "local":
        parts.append("local mask")
    metrics = meta.get("metrics") or {}
    top1 = metrics.get("test_top1")
    if isinstance(metrics.get("test_images"), int) and split == "its test split":
        split = f"its test split, {metrics['test_images']:,} images"
    parts.append(f"top-1 {top1:.2%} on {split}" if isinstance(top1, (int, float)) and top1 <= 1 else
                 f"top-1 {top1} on {split}" if top1 is not None else "no test accuracy")
    return " · ".join(parts)


@st.cache_data(show_spinner=False, max_entries=64)
def _hash_file(path: str, mtime: float, size: int) -> str:
    return resattn.file_hash(path)


def checkpoint_entry(path: Path, name: str, broken_name: str) -> ModelEntry:
    """A picker entry for a checkpoint file, keyed by its content hash; a file that cannot be read is listed
    with its reason (the app reports it and falls back)."""
    stat = path.stat()
    key = f"sha256:{_hash_file(str(path), stat.st_mtime, stat.st_size)}"
    try:
        meta = resattn.read_meta(path)
        return ModelEntry(key, f"{name} — {describe_meta(meta)}", meta, path=path)
    except resattn.CheckpointError as exc:
        return ModelEntry(key, f"⚠ {broken_name} (cannot be read)", path=path, error=str(exc))


def catalogue(include_random: bool | None = None) -> list[ModelEntry]:
    """Every checkpoint in the checkpoint directory (read from its header only), then the random models.

    ``include_random=None``: random models only when no trained checkpoint can be read (so the app always has
    something to show); ``True`` / ``False`` force them in or out.
    """
    entries: list[ModelEntry] = []
    folder = checkpoint_dir()
    for path in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
        entries.append(checkpoint_entry(path, path.stem, path.name))
    entries += job_entries()
    if include_random is None:
        include_random = not any(e.error is None for e in entries)
    specs = os.environ.get("RESATTN_APP_MODELS", DEFAULT_RANDOM) if include_random else "none"
    for spec in [] if specs.strip().lower() == "none" else [s for s in specs.split(",") if s.strip()]:
        try:
            meta = random_meta(spec)
        except ValueError as exc:
            entries.append(ModelEntry(f"random:{spec}", f"⚠ RANDOM {spec}", error=str(exc), spec=spec))
            continue
        entries.append(ModelEntry(f"random:{spec}", f"RANDOM — {describe_meta(meta)}", meta, spec=spec))
    return entries


@st.cache_resource(show_spinner="Loading the model (first use on this server; other sessions wait for it too)…",
                   max_entries=16)
def load_model(key: str, path: str | None, spec: str | None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Load one model per process, keyed by content hash; raises ``resattn.CheckpointError`` for a bad file."""
    with _LOAD_LOCK:
        if path is not None:
            return resattn.load_checkpoint(path)
        meta = random_meta(spec or "")
        torch.manual_seed(0)  # the same random weights in every process and session
        try:
            model = resattn.create_model(meta["model"], **meta["overrides"])
        except (TypeError, ValueError) as exc:
            raise resattn.CheckpointError(f"random model {spec!r} cannot be built: {exc}") from exc
        return model.eval(), meta


def load_entry(entry: ModelEntry) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The entry's model (cached); raises ``resattn.CheckpointError`` if it cannot be read or built."""
    if entry.error:
        raise resattn.CheckpointError(entry.error)
    return load_model(entry.key, str(entry.path) if entry.path else None, entry.spec)


# --------------------------------------------------------------------------------------------------------------
# Derived data, cached by (model key, image hash, ...)
# --------------------------------------------------------------------------------------------------------------


@dataclass
class TraceData:
    """A trace turned into NumPy (picklable for st.cache_data): probabilities, per-module maps and the mean
    absolute output of each stage (the paper's Fig. 4 quantity, also for the ResNet baseline)."""

    probs: np.ndarray
    modules: list[dict[str, Any]]  # stage, index, name, mask, trunk, output, mask_path [(label, array)]
    seconds: float
    stage_response: list[float] = field(default_factory=list)
    model_key: str = ""  # which model computed it (exports name it)

    def module(self, stage: int, index: int) -> dict[str, Any]:
        for m in self.modules:
            if m["stage"] == stage and m["index"] == index:
                return m
        raise KeyError(f"no module {index} in stage {stage}")

    def stage_modules(self, stage: int) -> list[dict[str, Any]]:
        return [m for m in self.modules if m["stage"] == stage]


def model_input(image: Image.Image, meta: dict[str, Any]) -> torch.Tensor:
    """The exact input evaluation feeds the model (``resattn.preprocess.Preprocessing`` from the meta)."""
    return Preprocessing.from_meta(meta)(image)


def _trace_to_numpy(trace: resattn.Trace, seconds: float, with_path: bool, model_key: str) -> TraceData:
    probs = torch.softmax(trace.logits.float(), dim=1)[0].numpy()
    modules = []
    for r in trace.modules:
        modules.append({
            "stage": r.stage, "index": r.index, "name": r.name,
            "mask": r.mask[0].numpy(), "trunk": r.trunk[0].numpy(), "output": r.output[0].numpy(),
            "mask_logits": r.mask_logits[0].numpy() if with_path else None,
            "mask_path": [(label, t[0].numpy()) for label, t in r.mask_path] if with_path else [],
        })
    response = [maps.mean_abs_response(s[0]) for s in trace.stage_outputs]
    return TraceData(probs, modules, seconds, response, model_key)


@st.cache_data(show_spinner=False, max_entries=48)
def trace(model_key: str, image_hash: str, _model: torch.nn.Module, _meta: dict, _image: Image.Image,
          with_path: bool = False, knockout: tuple[int, int, str] | None = None, other_hash: str | None = None,
          _other: Image.Image | None = None) -> TraceData:
    """``resattn.inspect`` (or ``knockout``) on one image, as NumPy; cached by model key and image hash. The
    knock-out ``"other"`` uses the mask the module computes for ``_other`` (another image, named by ``other_hash``)."""
    start = time.perf_counter()
    x = model_input(_image, _meta)
    if knockout is None:
        result = resattn.inspect(_model, x)
    else:
        other = model_input(_other, _meta) if _other is not None else None
        result = resattn.knockout(_model, x, *knockout, other=other)
    return _trace_to_numpy(result, time.perf_counter() - start, with_path, model_key)


class SharedResults:
    """A bounded, thread-safe cache shared by every session of the server, which knows what is being computed:
    a session that asks for a result another session is computing waits for it (and is told so) instead of
    computing it twice. Long computations report progress through callbacks, which ``st.cache_data`` cannot
    carry, hence this small class."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self.lock = threading.Lock()
        self.values: "OrderedDict[tuple, Any]" = OrderedDict()
        self.running: dict[tuple, threading.Event] = {}

    def get(self, key: tuple, compute: Any, on_wait: Any = None) -> Any:
        while True:
            with self.lock:
                if key in self.values:
                    self.values.move_to_end(key)
                    return self.values[key]
                event = self.running.get(key)
                if event is None:
                    event = self.running[key] = threading.Event()
                    break
            if on_wait is not None:
                on_wait("another session is computing this same map; waiting for its result")
            event.wait()
        try:
            value = compute()
            with self.lock:
                self.values[key] = value
                while len(self.values) > self.max_entries:
                    self.values.popitem(last=False)
            return value
        finally:
            with self.lock:
                self.running.pop(key, None)
            event.set()


@st.cache_resource
def attribution_results() -> SharedResults:
    """One per server process: attribution maps by (model, image, method, class, stage, steps)."""
    return SharedResults(max_entries=96)


def attribution_map(model_key: str, image_hash: str, method: str, target: int, stage: int, steps: int,
                    model: torch.nn.Module, meta: dict, image: Image.Image,
                    progress: Any = None, on_wait: Any = None) -> tuple[np.ndarray, float]:
    """One attribution map at the model input's resolution and the seconds it took; shared by every session.
    ``progress(done, total)`` and ``on_wait(message)`` report to the page."""

    def compute() -> tuple[np.ndarray, float]:
        start = time.perf_counter()
        options = {"steps": steps} if method == "integrated_gradients" else {}
        result = attribution.attribute(
            model, model_input(image, meta), target, method, stage=stage,
            progress=progress or (lambda done, total: None),
            on_wait=(lambda: on_wait("all private model copies are busy with other sessions' Guided Grad-CAM; "
                                     "waiting for one")) if on_wait else None,
            **options)
        return result, time.perf_counter() - start

    key = (model_key, image_hash, method, int(target), int(stage), int(steps) if method == "integrated_gradients" else 0)
    return attribution_results().get(key, compute, on_wait)


@st.cache_data(show_spinner=False, max_entries=16)
def layer_shapes(model_key: str, _model: torch.nn.Module, _meta: dict) -> list[tuple[str, str, tuple[int, ...]]]:
    """(name, kind, output shape) of every top-level layer and every unit of each stage, for a live diagram.

    Runs the children one after another on a zero input of the model's input size (no hooks on the shared
    model, so it is safe while other sessions use it)."""
    x = torch.zeros(model_input(Image.new("RGB", (8, 8)), _meta).shape)
    rows: list[tuple[str, str, tuple[int, ...]]] = [("input", "image", tuple(x.shape))]
    with torch.no_grad():
        for name, child in _model.named_children():
            if name == "fc":
                x = torch.flatten(x, 1)
            if name.startswith("stage") and isinstance(child, torch.nn.Sequential):
                for sub, unit in child.named_children():
                    x = unit(x)
                    rows.append((f"{name}.{sub}", type(unit).__name__, tuple(x.shape)))
            else:
                x = child(x)
                rows.append((name, type(child).__name__, tuple(x.shape)))
    return rows


def job_entries() -> list[ModelEntry]:
    """The checkpoints of succeeded fine-tuning jobs (``resattn.jobs``, in ``RESATTN_JOBS_DIR``), newest first,
    labelled "job N": a finished job's model is in every page's picker on the next rerun, without a restart.
    Read from the jobs' result files: a page that shows no jobs never opens (nor waits for) the jobs database."""
    from resattn import jobs

    return [checkpoint_entry(path, f"job {job_id}", f"job {job_id}")
            for job_id, path in jobs.succeeded_checkpoints(jobs.jobs_dir())]
