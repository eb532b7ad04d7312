"""One forward pass that returns every attention module's mask M, trunk T and output H.

``inspect`` uses no hooks: the attention modules report to a context variable that only the calling thread
sees, so several threads can inspect one shared model at once (the explorer app does). The model runs in eval
mode; every submodule's own train/eval flag is restored when the last concurrent inspection on it finishes (a
part deliberately left in eval mode, such as a frozen trunk, stays in eval mode).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from .attention import _MASK_EDIT, _RECORDER, _STAGE_RECORDER, AttentionModule

__all__ = ["ModuleRecord", "Trace", "inspect", "knockout", "KNOCKOUTS"]

Knockout = Literal["zero", "one", "mean", "other"]
KNOCKOUTS: tuple[str, ...] = ("zero", "one", "mean", "other")


@dataclass
class ModuleRecord:
    """What one attention module computed. Tensors are N×C×H×W at the module's resolution.

    Without a knock-out, ``mask`` is the activation of ``mask_logits`` and ``computed_mask`` is the same tensor.
    Under a knock-out of this module, ``mask_logits`` and ``computed_mask`` are still what the mask branch computed,
    while ``mask`` is the replacement that was actually used: ``output`` is always ``combine(mask, trunk)`` and
    ``computed_mask`` is always ``activation(mask_logits)``. ``knockout`` names the replacement (or is ``None``).
    """

    stage: int  # 1-based attention stage
    index: int  # 1-based position within the stage
    name: str  # qualified module name in the model, e.g. "stage2.module1"
    mask: Tensor  # M as used in H (the replacement under a knock-out)
    mask_logits: Tensor  # the mask branch's output, before the activation
    trunk: Tensor  # T
    output: Tensor  # H = (1 + M)·T (ARL) or M·T (NAL), with the ``mask`` above
    mask_path: list[tuple[str, Tensor]] = field(default_factory=list)  # the mask branch's maps in order
    computed_mask: Tensor | None = None  # activation(mask_logits): the mask branch's own M, even under a knock-out
    knockout: str | None = None  # "zero" | "one" | "mean" | "other" when this module's mask was replaced

    @property
    def label(self) -> str:
        """The module as the paper names it."""
        return f"stage {self.stage}, module {self.index}"


@dataclass
class Trace:
    """Logits, one :class:`ModuleRecord` per attention module in forward order, and the output of each of the
    three stages (after the stage's last unit: what the paper's Fig. 4 averages), also for the ResNet baseline."""

    logits: Tensor
    modules: list[ModuleRecord]
    stage_outputs: list[Tensor] = field(default_factory=list)

    def module(self, stage: int, index: int = 1) -> ModuleRecord:
        """The record of module ``index`` in ``stage`` (both 1-based)."""
        for record in self.modules:
            if record.stage == stage and record.index == index:
                return record
        raise KeyError(f"no attention module {index} in stage {stage}")

    def stage(self, stage: int) -> list[ModuleRecord]:
        """All records of one stage."""
        return [r for r in self.modules if r.stage == stage]


class _EvalGuard:
    """Per-model count of active inspections; the first puts the model in eval mode, the last restores every
    submodule's own flag."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active = 0
        self.flags: list[tuple[nn.Module, bool]] = []


_GUARDS: "weakref.WeakKeyDictionary[nn.Module, _EvalGuard]" = weakref.WeakKeyDictionary()
_GUARDS_LOCK = threading.Lock()


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    with _GUARDS_LOCK:
        guard = _GUARDS.setdefault(model, _EvalGuard())
    with guard.lock:
        if guard.active == 0:
            guard.flags = [(m, m.training) for m in model.modules()]
            if any(training for _, training in guard.flags):
                model.eval()
        guard.active += 1
    try:
        yield
    finally:
        with guard.lock:
            guard.active -= 1
            if guard.active == 0:
                for module, training in guard.flags:
                    module.training = training
                guard.flags = []


def _names(model: nn.Module) -> dict[int, str]:
    return {id(m): n for n, m in model.named_modules() if isinstance(m, AttentionModule)}


def inspect(
    model: nn.Module,
    images: Tensor,
    *,
    grad: bool = False,
    mask_edit: dict[tuple[int, int], Knockout | Tensor] | None = None,
) -> Trace:
    """Run ``model`` on ``images`` once and return its logits with every module's M, T, H and mask path.

    ``grad=True`` keeps the autograd graph (for attribution); by default the pass runs without gradients and
    the recorded tensors are detached. ``mask_edit`` maps (stage, index) to a knock-out (see :func:`knockout`)
    or to a tensor that replaces the mask (broadcast to its shape; recorded as the knock-out ``"other"``).
    """
    names = _names(model)
    records: list[ModuleRecord] = []

    def record(module: AttentionModule, **tensors: object) -> None:
        if not grad:
            tensors = {k: _detach(v) for k, v in tensors.items()}
        records.append(
            ModuleRecord(stage=module.stage, index=module.index, name=names.get(id(module), ""), **tensors)  # type: ignore[arg-type]
        )

    stages: list[Tensor] = []

    def record_stage(number: int, x: Tensor) -> None:
        stages.append(x if grad else x.detach())

    recorder_token = _RECORDER.set(record)
    stage_token = _STAGE_RECORDER.set(record_stage)
    edit_token = _MASK_EDIT.set(_editor(mask_edit) if mask_edit else None)
    try:
        with _eval_mode(model), torch.set_grad_enabled(grad):
            logits = model(images)
    finally:
        _MASK_EDIT.reset(edit_token)
        _STAGE_RECORDER.reset(stage_token)
        _RECORDER.reset(recorder_token)
    return Trace(logits=logits if grad else logits.detach(), modules=records, stage_outputs=stages)


def knockout(model: nn.Module, images: Tensor, stage: int, index: int, mode: Knockout,
             other: Tensor | None = None) -> Trace:
    """Inspect with one module's mask replaced: ``"zero"`` (M = 0; under ARL the module passes T through),
    ``"one"`` (M = 1), ``"mean"`` (each channel's spatial mean, which removes *where* but keeps *how much*) or
    ``"other"``: the mask this module computes for ``other`` (1 or N images shaped like ``images``), i.e. another
    image's mask, a real mask that knows nothing about these images."""
    if mode != "other":
        return inspect(model, images, mask_edit={(stage, index): mode})
    if other is None or other.shape[1:] != images.shape[1:] or other.shape[0] not in (1, images.shape[0]):
        raise ValueError("the knock-out 'other' needs other images shaped like the inputs (1 or as many), got "
                         f"{None if other is None else tuple(other.shape)} for {tuple(images.shape)}")
    replacement = inspect(model, other).module(stage, index).mask
    return inspect(model, images, mask_edit={(stage, index): replacement})


def _editor(edits: dict[tuple[int, int], Knockout | Tensor]):  # noqa: ANN202 - a closure for the context variable
    for mode in edits.values():
        if not isinstance(mode, Tensor) and (mode not in KNOCKOUTS or mode == "other"):
            raise ValueError(f"knock-out must be one of {KNOCKOUTS[:-1]} or a replacement mask, got {mode!r}")

    def edit(module: nn.Module, mask: Tensor) -> tuple[Tensor, str | None]:
        mode = edits.get((module.stage, module.index))
        if isinstance(mode, Tensor):
            return mode.to(mask.device, mask.dtype).expand_as(mask), "other"
        if mode == "zero":
            return torch.zeros_like(mask), mode
        if mode == "one":
            return torch.ones_like(mask), mode
        if mode == "mean":
            return mask.mean(dim=(-2, -1), keepdim=True).expand_as(mask), mode
        return mask, None

    return edit


def _detach(value: object) -> object:
    if isinstance(value, Tensor):
        return value.detach()
    if isinstance(value, list):
        return [(label, t.detach()) for label, t in value]
    return value
