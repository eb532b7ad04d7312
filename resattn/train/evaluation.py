"""Accuracy, loss, per-class accuracy and confusion matrix of a model on a decoded split, on one process or
summed over all of ``torchrun``'s."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import BatchIterator, Decoded
from .environment import Runtime

__all__ = ["evaluate_model", "full_precision"]


@contextmanager
def full_precision() -> Iterator[None]:
    """TF32 off for matrix products and cuDNN convolutions inside the block (restored after it): with float32
    weights and no autocast, a GPU then computes what ``python -m resattn.evaluate`` does on a CPU."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


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
