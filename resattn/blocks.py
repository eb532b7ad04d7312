"""The pre-activation bottleneck residual unit (He et al., "Identity Mappings in Deep Residual Networks", 2016).

Every trunk unit, every mask-branch unit and every skip connection of the Residual Attention Network is this unit
(paper §3, official Caffe prototxt). Activations are separate module instances per use, never shared and never
in-place, so attribution libraries (Captum's guided backprop, layer hooks) can address each one.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

__all__ = ["PreActBottleneck", "Pooling", "POOLINGS", "conv1x1", "conv3x3", "max_pool", "stack"]


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """1×1 convolution without bias (every conv in the network is followed by a BN)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)


Pooling = Literal["caffe", "pad1"]
POOLINGS: tuple[str, ...] = ("caffe", "pad1")


def max_pool(pooling: Pooling = "caffe") -> nn.MaxPool2d:
    """The 3×3, stride-2 max-pool of the stem and of every mask-branch level.

    ``"caffe"`` is the authors' definition (official prototxt): no padding, output sizes rounded up (Caffe's ceil
    mode), so 56 → 28 → 14 → 7, and 7 → 3, 15 → 7 for odd sizes. ``"pad1"`` is ``MaxPool2d(3, 2, padding=1)``,
    the form most PyTorch ports use: the same sizes for even inputs, but every window shifted by one pixel. It is
    kept only to rebuild checkpoints trained before architecture revision 2 (see ``resattn.checkpoint``).
    """
    if pooling == "caffe":
        return nn.MaxPool2d(kernel_size=3, stride=2, padding=0, ceil_mode=True)
    if pooling == "pad1":
        return nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """3×3 convolution with padding 1 and no bias."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class PreActBottleneck(nn.Module):
    """BN-ReLU-1×1(out/4), BN-ReLU-3×3(out/4, stride), BN-ReLU-1×1(out), plus a shortcut.

    The shortcut is the identity when shape is kept. When the channel count or the stride changes it is a strided
    1×1 projection applied to the *pre-activated* input BN-ReLU(x), as in the official release and in He et al.
    The stride sits on the 3×3 conv.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        if out_channels % 4:
            raise ValueError(f"out_channels must be divisible by 4 (bottleneck width), got {out_channels}")
        width = out_channels // 4
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU()
        self.conv1 = conv1x1(in_channels, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu2 = nn.ReLU()
        self.conv2 = conv3x3(width, width, stride)
        self.bn3 = nn.BatchNorm2d(width)
        self.relu3 = nn.ReLU()
        self.conv3 = conv1x1(width, out_channels)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = conv1x1(in_channels, out_channels, stride)

    def forward(self, x: Tensor) -> Tensor:
        pre = self.relu1(self.bn1(x))
        identity = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(self.relu2(self.bn2(out)))
        out = self.conv3(self.relu3(self.bn3(out)))
        return out + identity


def stack(channels: int, count: int) -> nn.Sequential:
    """``count`` shape-preserving units in a row (an empty Sequential, the identity, when count is 0)."""
    return nn.Sequential(*(PreActBottleneck(channels, channels) for _ in range(count)))


