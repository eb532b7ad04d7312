"""The attention module of the Residual Attention Network (Wang et al., CVPR 2017, §3).

An attention module splits the features after ``p`` pre-processing residual units into

* a **trunk branch** T of ``t`` units, which does the feature processing, and
* a **soft mask branch** M of the same shape, which weighs the trunk features,

merges them with attention residual learning (ARL, Eq. 3: H = (1 + M)·T) or naive attention learning
(NAL, Eq. 1: H = M·T), and ends with ``p`` more units.

The mask branch is the bottom-up / top-down "hourglass" of §3.2, wired as in the official Caffe release:
max-pool then ``r`` units per level, ``2r`` units at the lowest level, one residual-unit skip connection per
intermediate scale added on the way up, bilinear resizing to the size of the matching map (so any input size
works), then BN-ReLU-1×1-BN-ReLU-1×1 and the mask activation. ``mask="local"`` replaces the hourglass with
residual units at full resolution (the paper's Table 4 ablation).
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import Pooling, PreActBottleneck, conv1x1, max_pool, stack

__all__ = [
    "Attention",
    "Learning",
    "MaskKind",
    "MaskActivation",
    "HourglassMask",
    "LocalMask",
    "AttentionModule",
    "CHANNEL_EPS",
    "SPATIAL_EPS",
    "FIXED_BY_ACTIVATION",
    "fixed_by_activation",
]

Attention = Literal["mixed", "channel", "spatial"]
Learning = Literal["arl", "nal"]
MaskKind = Literal["hourglass", "local"]

ATTENTIONS: tuple[str, ...] = ("mixed", "channel", "spatial")
LEARNINGS: tuple[str, ...] = ("arl", "nal")
MASKS: tuple[str, ...] = ("hourglass", "local")

#: ε added under the channel L2 norm (f2). The paper gives none; it only guards a zero vector.
CHANNEL_EPS = 1e-6
#: ε added to the spatial variance (f3), the same order as BatchNorm's default. The paper gives none.
SPATIAL_EPS = 1e-5
#: What the activation alone fixes about a mask's two summary statistics (the mean of M and the share of its
#: entries above 0.5, ``maps.mask_statistics``), whatever the model learned; ``tests/test_model.py`` checks each
#: bound. Spatial: σ(z) > ½ exactly when z > 0, i.e. when x is above its channel's mean; and for z with mean 0
#: and E[z²] ≤ 1, |E σ(z) − ½| ≤ max_z |σ(z) − ½ − z/4| / z² ≈ 0.0332. Channel: a position's C entries have
#: squares summing to at most 1, so at most 3 exceed 0.5, and by Cauchy–Schwarz their mean is within ±1/√C.
FIXED_BY_ACTIVATION: dict[str, str] = {
    "spatial": "spatial attention standardises each channel over its positions before the sigmoid, so a mask "
               "entry is above 0.5 exactly where it is above its channel's mean, and the mask's mean lies within "
               "0.5 ± 0.034",
    "channel": "channel attention divides each position's C channels by their L2 norm, so at most 3 of a "
               "position's C entries (a share of at most 3/C) can exceed 0.5, and their mean lies within ±1/√C",
}


def fixed_by_activation(kinds: Iterable[str]) -> list[str]:
    """:data:`FIXED_BY_ACTIVATION`'s statements for the attention types in ``kinds``, as sentences, in the order
    of :data:`ATTENTIONS`; mixed attention fixes nothing and has none."""
    wanted = set(kinds)
    return [f"{FIXED_BY_ACTIVATION[k][0].upper()}{FIXED_BY_ACTIVATION[k][1:]}." for k in ATTENTIONS
            if k in wanted and k in FIXED_BY_ACTIVATION]


#: Number of full-resolution units in the "local convolution" mask. Table 4 says "3 residual units".
LOCAL_UNITS = 3

# Inspection and mask knock-out talk to the modules through context variables, not hooks: each thread (and each
# asyncio task) sees its own value, so concurrent inspections of one shared model never see each other's records.
_RECORDER: contextvars.ContextVar[Callable[..., None] | None] = contextvars.ContextVar("resattn_recorder", default=None)
#: Called with (stage number, stage output) by the networks after each stage, when set (inspect's stage outputs,
#: hook-free Grad-CAM).
_STAGE_RECORDER: contextvars.ContextVar[Callable[[int, Tensor], None] | None] = contextvars.ContextVar(
    "resattn_stage_recorder", default=None
)
_MASK_EDIT: contextvars.ContextVar[Callable[[nn.Module, Tensor], tuple[Tensor, str | None]] | None] = contextvars.ContextVar(
    "resattn_mask_edit", default=None
)


def _resize(x: Tensor, like: Tensor) -> Tensor:
    """Bilinear resize of ``x`` to the spatial size of ``like``.

    The official Caffe ``Interp`` layer resizes its first input to the second's size with the DeepLab kernel,
    whose coordinate mapping is PyTorch's ``align_corners=True`` (a strong inference from the kernel the layer calls, not verified).
    """
    if x.shape[-2:] == like.shape[-2:]:
        return x
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=True)


class MaskActivation(nn.Module):
    """The three mask activations of §3.3 (Eq. 4–6), applied to the mask logits x (N×C×H×W).

    * ``mixed`` (f1): element-wise sigmoid, M = 1 / (1 + exp(−x)). Values in (0, 1).
    * ``channel`` (f2): L2 normalisation across channels at each position, M = x / sqrt(Σ_c x² + ε²) with
      ε = ``CHANNEL_EPS``. Values lie in [−1, 1], not [0, 1]: the paper does not discuss this.
    * ``spatial`` (f3): standardise each channel of each sample over its H×W positions with the population
      (biased) std, then sigmoid: M = σ((x − mean_c) / sqrt(var_c + ε)), ε = ``SPATIAL_EPS``. The paper does not
      say whether statistics are per sample or per batch; per sample keeps inference independent of the batch.
    """

    def __init__(self, kind: Attention = "mixed") -> None:
        super().__init__()
        if kind not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {kind!r}")
        self.kind = kind

    @staticmethod
    def standardize(x: Tensor) -> Tensor:
        """The pre-sigmoid maps of the spatial activation: per-sample, per-channel zero mean and unit std."""
        mean = x.mean(dim=(-2, -1), keepdim=True)
        var = x.var(dim=(-2, -1), keepdim=True, unbiased=False)
        return (x - mean) / torch.sqrt(var + SPATIAL_EPS)

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "mixed":
            return torch.sigmoid(x)
        if self.kind == "channel":
            return x / torch.sqrt(x.pow(2).sum(dim=1, keepdim=True) + CHANNEL_EPS**2)
        return torch.sigmoid(self.standardize(x))

    def extra_repr(self) -> str:
        return self.kind


def _mask_head(channels: int) -> nn.Sequential:
    """BN-ReLU-1×1-BN-ReLU-1×1: the two 1×1 convs of §3.2 in the official pre-activation form."""
    return nn.Sequential(
        nn.BatchNorm2d(channels),
        nn.ReLU(),
        conv1x1(channels, channels),
        nn.BatchNorm2d(channels),
        nn.ReLU(),
        conv1x1(channels, channels),
    )


class HourglassMask(nn.Module):
    """Bottom-up / top-down soft mask branch with ``pools`` max-pool levels (§3.2, official wiring).

    With k pools: d_1 … d_{k−1} are max-pool then ``r`` units, d_k is max-pool then ``2r`` units; going up,
    u_j = units_r(resize(u_{j+1} → d_j) + skip_j(d_j)) with one residual-unit skip per intermediate scale;
    finally the result is resized to the input size and passed through the 1×1 head. That is 2rk + k − 1 units
    (8 / 5 / 2 for 3 / 2 / 1 pools with r = 1). With ``pools=0`` the branch is ``2r`` units at full resolution.

    Choice where the paper is silent: each skip connection is **one** residual unit whatever ``r`` is. The
    official release only defines r = 1; for Attention-452's r = 3 the paper does not say whether skips grow with
    r (GluonCV also uses one unit).

    ``forward`` returns the mask logits (before the activation) and the named intermediate maps.
    """

    def __init__(self, channels: int, pools: int, r: int = 1, pooling: Pooling = "caffe") -> None:
        super().__init__()
        if pools < 0 or r < 1:
            raise ValueError(f"need pools >= 0 and r >= 1, got pools={pools}, r={r}")
        self.pools = pools
        self.pool = max_pool(pooling)  # k3 s2, no padding, ceil mode: the official definition
        self.down = nn.ModuleList(stack(channels, 2 * r if level == pools - 1 else r) for level in range(pools))
        self.skips = nn.ModuleList(PreActBottleneck(channels, channels) for _ in range(max(pools - 1, 0)))
        self.up = nn.ModuleList(stack(channels, r) for _ in range(max(pools - 1, 0)))
        self.bottom = stack(channels, 2 * r) if pools == 0 else None
        self.head = _mask_head(channels)

    def forward(self, x: Tensor) -> tuple[Tensor, list[tuple[str, Tensor]]]:
        path: list[tuple[str, Tensor]] = [("input", x)]
        if self.bottom is not None:
            out = self.bottom(x)
            path.append(("units (no pooling)", out))
        else:
            downs: list[Tensor] = []
            out = x
            for level, units in enumerate(self.down, start=1):
                out = units(self.pool(out))
                downs.append(out)
                path.append((f"down {level} (pool {level})", out))
            for j in range(self.pools - 1, 0, -1):  # top-down: back up to the scale of d_j
                skip = self.skips[j - 1](downs[j - 1])
                out = self.up[j - 1](_resize(out, downs[j - 1]) + skip)
                path.append((f"up {j} (+ skip {j})", out))
            out = _resize(out, x)
            path.append(("upsampled to input", out))
        logits = self.head(out)
        path.append(("1×1 head (mask logits)", logits))
        return logits, path


class LocalMask(nn.Module):
    """Table 4's "local convolutions" mask: ``units`` residual units at full resolution, then the 1×1 head."""

    def __init__(self, channels: int, units: int = LOCAL_UNITS) -> None:
        super().__init__()
        self.units = stack(channels, units)
        self.head = _mask_head(channels)

    def forward(self, x: Tensor) -> tuple[Tensor, list[tuple[str, Tensor]]]:
        out = self.units(x)
        logits = self.head(out)
        return logits, [("input", x), ("local units", out), ("1×1 head (mask logits)", logits)]


class AttentionModule(nn.Module):
    """One attention module: ``p`` units, then trunk (``t`` units) and soft mask, merged, then ``p`` units.

    ``learning="arl"`` computes H = (1 + M)·T (attention residual learning, Eq. 3); ``"nal"`` computes
    H = M·T (naive attention learning, Eq. 1). ``stage`` and ``index`` (1-based) name the module as the paper
    does and are set by the network that owns it.
    """

    def __init__(
        self,
        channels: int,
        pools: int,
        p: int = 1,
        t: int = 2,
        r: int = 1,
        attention: Attention = "mixed",
        learning: Learning = "arl",
        mask: MaskKind = "hourglass",
        stage: int = 0,
        index: int = 0,
        pooling: Pooling = "caffe",
    ) -> None:
        super().__init__()
        if learning not in LEARNINGS:
            raise ValueError(f"learning must be one of {LEARNINGS}, got {learning!r}")
        if mask not in MASKS:
            raise ValueError(f"mask must be one of {MASKS}, got {mask!r}")
        self.learning = learning
        self.stage = stage
        self.index = index
        self.pre = stack(channels, p)
        self.trunk = stack(channels, t)
        self.mask: nn.Module = HourglassMask(channels, pools, r, pooling) if mask == "hourglass" else LocalMask(channels)
        self.activation = MaskActivation(attention)
        self.post = stack(channels, p)

    def combine(self, mask: Tensor, trunk: Tensor) -> Tensor:
        """ARL: (1 + M)·T; NAL: M·T."""
        return (1 + mask) * trunk if self.learning == "arl" else mask * trunk

    def forward(self, x: Tensor) -> Tensor:
        h = self.pre(x)
        trunk = self.trunk(h)
        logits, path = self.mask(h)
        computed = self.activation(logits)
        mask, knockout = computed, None
        edit = _MASK_EDIT.get()
        if edit is not None:
            mask, knockout = edit(self, computed)
        out = self.combine(mask, trunk)
        record = _RECORDER.get()
        if record is not None:
            record(self, mask=mask, mask_logits=logits, trunk=trunk, output=out, mask_path=path,
                   computed_mask=computed, knockout=knockout)
        return self.post(out)

    def extra_repr(self) -> str:
        return f"stage={self.stage}, index={self.index}, learning={self.learning}"
