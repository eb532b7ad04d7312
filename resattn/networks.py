"""Residual Attention Networks and the pre-activation ResNet-164 baseline.

Two topologies:

* ``imagenet`` — Table 2 of the paper, 224×224 input: 7×7/2 stem + max-pool, stages at 56/28/14 with widths
  256/512/1024 and mask pools 3/2/1, then three 2048-wide units at 7×7. The official release adds no other layer.
* ``cifar`` — a reconstruction for 32×32 input (the paper gives no CIFAR table, so this is *unverified*):
  3×3 stem with 16 channels, stages at 32/16/8 with widths 64/128/256 (ResNet-164 widths) and mask pools 2/1/0,
  ``m`` modules in every stage. The paper "adds two residual units at each stage": here one strided entry unit
  before the stage's modules and one unit after them, which keeps the depth at 36m + 20.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .attention import _STAGE_RECORDER, Attention, AttentionModule, Learning, MaskKind
from .blocks import Pooling, PreActBottleneck, max_pool

__all__ = ["ARCH_REVISION", "NetworkConfig", "ResidualAttentionNetwork", "PreActResNet", "scale_width"]

#: What the network code computes, for checkpoints. Revision 1: every max-pool was ``MaxPool2d(3, 2, padding=1)``.
#: Revision 2: the official Caffe pooling (k3 s2, no padding, ceil mode). A checkpoint records the revision it was
#: trained under; ``resattn.checkpoint`` rebuilds older ones as they were trained and refuses newer ones.
ARCH_REVISION = 2


def scale_width(channels: int, width_mult: float) -> int:
    """Scale a channel count, rounded to a multiple of 4 (the bottleneck divides by 4), at least 4."""
    return max(4, int(round(channels * width_mult / 4)) * 4)


@dataclass(frozen=True)
class NetworkConfig:
    """Everything that fixes a Residual Attention Network's shape."""

    variant: str  # "cifar" or "imagenet"
    modules: tuple[int, int, int]  # attention modules per stage
    p: int = 1
    t: int = 2
    r: int = 1
    attention: Attention = "mixed"
    learning: Learning = "arl"
    mask: MaskKind = "hourglass"
    num_classes: int = 10
    in_chans: int = 3
    width_mult: float = 1.0
    pools: tuple[int, int, int] = field(default=(2, 1, 0))
    #: "caffe" (the official definition, the default) or "pad1" (revision-1 checkpoints only); see ``max_pool``
    pooling: Pooling = "caffe"

    @property
    def depth(self) -> int:
        """Trunk depth as the paper counts it: 3·(2p + t)·modules + 20 weighted layers."""
        return 3 * (2 * self.p + self.t) * sum(self.modules) + 20


class _StagedClassifier(nn.Module):
    """What both network families share: three stages, a BN-ReLU-pool-FC head, and accessors by stage."""

    stem: nn.Module
    stage1: nn.Sequential
    stage2: nn.Sequential
    stage3: nn.Sequential
    tail: nn.Module
    norm: nn.BatchNorm2d
    relu: nn.ReLU
    fc: nn.Linear

    def stage(self, number: int) -> nn.Sequential:
        """The Sequential of stage ``number`` (1-based); Grad-CAM reads its output."""
        if number not in (1, 2, 3):
            raise ValueError(f"stage must be 1, 2 or 3, got {number}")
        return getattr(self, f"stage{number}")

    def attention_modules(self) -> list[AttentionModule]:
        """All attention modules in forward order (none in a plain ResNet)."""
        return [m for m in self.modules() if isinstance(m, AttentionModule)]

    def forward_features(self, x: Tensor) -> Tensor:
        """Stem, the three stages (each output reported to an active stage recorder), tail, final BN-ReLU."""
        x = self.stem(x)
        record = _STAGE_RECORDER.get()
        for number in (1, 2, 3):
            x = self.stage(number)(x)
            if record is not None:
                record(number, x)
        return self.relu(self.norm(self.tail(x)))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.pool(self.forward_features(x)), 1))


class ResidualAttentionNetwork(_StagedClassifier):
    """Stem, three attention stages, (ImageNet only) a 7×7 tail, then BN-ReLU, global average pool and FC.

    The global average pool is adaptive, so any input size works (the paper tests Attention-92 at 320×320,
    where the 7×7 pool of Table 2 could not feed the classifier).
    """

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        if config.variant not in ("cifar", "imagenet"):
            raise ValueError(f"variant must be 'cifar' or 'imagenet', got {config.variant!r}")
        if len(config.modules) != 3 or min(config.modules) < 0:
            raise ValueError(f"modules must be three non-negative counts, got {config.modules!r}")
        self.config = config
        w = config.width_mult
        imagenet = config.variant == "imagenet"
        stem_channels = scale_width(64 if imagenet else 16, w)
        widths = [scale_width(c, w) for c in ((256, 512, 1024) if imagenet else (64, 128, 256))]
        if imagenet:
            self.stem = nn.Sequential(
                OrderedDict(
                    conv=nn.Conv2d(config.in_chans, stem_channels, 7, stride=2, padding=3, bias=False),
                    bn=nn.BatchNorm2d(stem_channels),
                    relu=nn.ReLU(),
                    pool=max_pool(config.pooling),
                )
            )
        else:
            self.stem = nn.Sequential(
                OrderedDict(conv=nn.Conv2d(config.in_chans, stem_channels, 3, padding=1, bias=False))
            )
        in_channels = stem_channels
        stages = []
        for number, (width, count, pools) in enumerate(zip(widths, config.modules, config.pools), start=1):
            layers: OrderedDict[str, nn.Module] = OrderedDict()
            layers["unit"] = PreActBottleneck(in_channels, width, stride=1 if number == 1 else 2)
            for index in range(1, count + 1):
                layers[f"module{index}"] = AttentionModule(
                    width, pools, config.p, config.t, config.r,
                    config.attention, config.learning, config.mask, stage=number, index=index,
                    pooling=config.pooling,
                )
            if not imagenet:
                layers["exit"] = PreActBottleneck(width, width)
            stages.append(nn.Sequential(layers))
            in_channels = width
        self.stage1, self.stage2, self.stage3 = stages
        if imagenet:
            final = scale_width(2048, w)
            self.tail: nn.Module = nn.Sequential(
                PreActBottleneck(in_channels, final, stride=2),
                PreActBottleneck(final, final),
                PreActBottleneck(final, final),
            )
            in_channels = final
        else:
            self.tail = nn.Identity()
        self.norm = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, config.num_classes)
        self.num_features = in_channels
        _init_weights(self)


class PreActResNet(_StagedClassifier):
    """Pre-activation bottleneck ResNet for CIFAR (He et al. 2016); ResNet-164 is 18 units per stage.

    The paper's baseline in Tables 5 and 6. It has the same stem, widths and head as the ``cifar``
    attention networks, so the two differ only in the attention modules.
    """

    def __init__(
        self,
        units_per_stage: Sequence[int] = (18, 18, 18),
        num_classes: int = 10,
        in_chans: int = 3,
        width_mult: float = 1.0,
    ) -> None:
        super().__init__()
        stem_channels = scale_width(16, width_mult)
        self.stem = nn.Sequential(OrderedDict(conv=nn.Conv2d(in_chans, stem_channels, 3, padding=1, bias=False)))
        in_channels = stem_channels
        stages = []
        for number, (width, count) in enumerate(zip((64, 128, 256), units_per_stage), start=1):
            width = scale_width(width, width_mult)
            units = [PreActBottleneck(in_channels, width, stride=1 if number == 1 else 2)]
            units += [PreActBottleneck(width, width) for _ in range(count - 1)]
            stages.append(nn.Sequential(*units))
            in_channels = width
        self.stage1, self.stage2, self.stage3 = stages
        self.tail = nn.Identity()
        self.norm = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        self.num_features = in_channels
        _init_weights(self)


def _init_weights(model: nn.Module) -> None:
    """He ("Delving deep into rectifiers") initialisation for convs, as the paper states (§4.1)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)
