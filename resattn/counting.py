"""Parameter and multiply-accumulate counts, comparable with the paper's Table 2 / Table 7 figures.

The paper's "FLOPs" are multiply-accumulates (recounting the official prototxts gives 6.27G for
Attention-56, matching the paper's 6.2–6.3G). We count the MACs of convolutions and matrix products with
PyTorch's own FLOP counter (one MAC = two FLOPs); BN, ReLU, pooling and interpolation are not counted, as in the
paper's convention.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_params", "count_macs"]


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (BN scale and shift included, running statistics excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_macs(model: nn.Module, input_size: int | Sequence[int]) -> int:
    """Multiply-accumulates of one forward pass on a single image.

    ``input_size`` is ``H`` (square), ``(H, W)`` or ``(C, H, W)``; channels default to the model's ``in_chans``.
    """
    if isinstance(input_size, int):
        input_size = (input_size, input_size)
    size = tuple(input_size)
    if len(size) == 2:
        first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        size = (first_conv.in_channels, *size)
    param = next(model.parameters())
    x = torch.zeros((1, *size), dtype=param.dtype, device=param.device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2
