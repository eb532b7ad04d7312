"""What runs after every epoch: the callback type, and :class:`MaskSnapshots` (``--probe``), which records every
module's mask on fixed test images so a page can scrub through training."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .build import Run

__all__ = ["EpochCallback", "MaskSnapshots"]


#: Called on rank 0 after every epoch with the run and that epoch's metrics line.
EpochCallback = Callable[[Run, dict[str, Any]], None]


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
        from ..inspect import inspect

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
