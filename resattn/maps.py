"""Turn an attention module's tensors (M, T, H: C×H×W) into 2-D maps and pictures, NumPy out.

A reduction over channels (mean, max, one channel, or the top-k channels by mask energy) gives one map per
tensor; :func:`describe` reports its value range and sign and flags maps that are NaN or constant, so the app
never draws a meaningless map as if it meant something; :func:`value_range` picks a colour scale that keeps
the map's range and sign (masks on their fixed [0, 1] or [−1, 1] scale, signed features centred on 0).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

__all__ = [
    "Reduction",
    "REDUCTIONS",
    "MapStats",
    "MapView",
    "as_array",
    "topk_channels",
    "reduce_channels",
    "upsample",
    "describe",
    "value_range",
    "colorize",
    "overlay",
    "tile",
    "view_map",
    "mask_statistics",
    "mean_abs_response",
    "module_views",
    "to_png",
]

Reduction = Literal["mean", "max", "channel", "topk"]
REDUCTIONS: tuple[str, ...] = ("mean", "max", "channel", "topk")


def as_array(x: Tensor | np.ndarray) -> np.ndarray:
    """A float32 NumPy view of a tensor; a leading batch dimension of 1 is dropped."""
    if isinstance(x, Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    x = np.asarray(x, dtype=np.float32)
    return x[0] if x.ndim == 4 and x.shape[0] == 1 else x


def topk_channels(mask: Tensor | np.ndarray, k: int) -> list[int]:
    """Indices of the ``k`` channels of a C×H×W mask with the most energy (mean of M²), strongest first."""
    m = as_array(mask)
    energy = np.nan_to_num(np.square(m, dtype=np.float64).mean(axis=(1, 2)), nan=-1.0)
    k = max(1, min(int(k), m.shape[0]))
    return [int(i) for i in np.argsort(-energy, kind="stable")[:k]]


def reduce_channels(
    x: Tensor | np.ndarray,
    how: Reduction = "mean",
    *,
    channel: int = 0,
    channels: Sequence[int] | None = None,
) -> np.ndarray:
    """Reduce a C×H×W tensor to one H×W map: channel ``mean``, channel ``max``, a single ``channel``, or the
    mean of the listed ``channels`` (``topk``; pick them with :func:`topk_channels` on the mask)."""
    a = as_array(x)
    if a.ndim != 3:
        raise ValueError(f"expected a C×H×W tensor, got shape {a.shape}")
    if how == "mean":
        return a.mean(axis=0)
    if how == "max":
        return a.max(axis=0)
    if how == "channel":
        if not 0 <= channel < a.shape[0]:
            raise ValueError(f"channel {channel} is out of range for {a.shape[0]} channels")
        return a[channel].copy()
    if how == "topk":
        if not channels:
            raise ValueError("the top-k reduction needs the channel indices (see topk_channels)")
        return a[list(channels)].mean(axis=0)
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {how!r}")


def upsample(map2d: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an H×W map to ``size`` = (height, width), e.g. the image's resolution."""
    if map2d.shape == tuple(size):
        return map2d.astype(np.float32, copy=False)
    t = torch.from_numpy(np.ascontiguousarray(map2d, dtype=np.float32))[None, None]
    return F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)[0, 0].numpy()


@dataclass(frozen=True)
class MapStats:
    """Range, sign and sanity of one map."""

    minimum: float
    maximum: float
    mean: float
    sign: str  # "positive", "non-negative", "negative", "non-positive", "mixed", "zero" or "undefined"
    problem: str | None = None  # why the map is not meaningful (NaN / Inf / constant), else None

    @property
    def ok(self) -> bool:
        return self.problem is None

    def summary(self) -> str:
        """One line for the page: range and sign, or the problem."""
        if self.problem:
            return f"⚠ {self.problem}"
        return f"range [{self.minimum:.4g}, {self.maximum:.4g}], mean {self.mean:.4g}, sign: {self.sign}"


def describe(x: np.ndarray, rtol: float = 1e-6) -> MapStats:
    """Range and sign of ``x``; flags NaN/Inf and maps that are constant (up to ``rtol`` of their magnitude)."""
    a = np.asarray(x, dtype=np.float64)
    if a.size == 0:
        return MapStats(np.nan, np.nan, np.nan, "undefined", "empty map")
    finite = np.isfinite(a)
    if not finite.all():
        bad = int((~finite).sum())
        return MapStats(np.nan, np.nan, np.nan, "undefined", f"{bad} of {a.size} values are NaN or infinite")
    lo, hi, mean = float(a.min()), float(a.max()), float(a.mean())
    if lo > 0:
        sign = "positive"
    elif lo == 0 and hi > 0:
        sign = "non-negative"
    elif hi < 0:
        sign = "negative"
    elif hi == 0 and lo < 0:
        sign = "non-positive"
    elif lo == 0 and hi == 0:
        sign = "zero"
    else:
        sign = "mixed"
    problem = None
    if hi - lo <= rtol * max(1.0, abs(hi), abs(lo)):
        problem = f"constant map (every value ≈ {mean:.4g}): nothing to localise"
    return MapStats(lo, hi, mean, sign, problem)


def value_range(stats: MapStats, kind: Literal["auto", "mask", "channel_mask"] = "auto") -> tuple[float, float, bool]:
    """(low, high, diverging) for the colour scale.

    ``mask``: the fixed [0, 1] of a sigmoid mask, so 0.5 everywhere looks like 0.5, not like contrast.
    ``channel_mask``: [−1, 1], the range of the channel (L2) activation. ``auto``: signed maps get a symmetric
    scale around 0 (diverging colours), non-negative maps [0, max], non-positive maps [min, 0].
    """
    if kind == "mask":
        return 0.0, 1.0, False
    if kind == "channel_mask":
        return -1.0, 1.0, True
    if not stats.ok or not np.isfinite(stats.maximum):
        return 0.0, 1.0, False
    if stats.minimum < 0 < stats.maximum:
        bound = max(abs(stats.minimum), abs(stats.maximum))
        return -bound, bound, True
    if stats.maximum <= 0:
        return stats.minimum, 0.0, False
    return 0.0, stats.maximum, False


def colorize(map2d: np.ndarray, low: float, high: float, cmap: str = "viridis") -> np.ndarray:
    """Map values in [low, high] to an H×W×3 uint8 picture with a matplotlib colormap."""
    from matplotlib import colormaps

    scaled = (np.nan_to_num(map2d, nan=low) - low) / max(high - low, 1e-12)
    lut = (colormaps[cmap](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)
    return lut[np.clip(scaled * 255 + 0.5, 0, 255).astype(np.uint8)]


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a colour map over an H×W×3 uint8 image; ``alpha`` is the map's opacity."""
    if image.shape != heat.shape:
        raise ValueError(f"image {image.shape} and map {heat.shape} differ in shape")
    blend = image.astype(np.float32) * (1 - alpha) + heat.astype(np.float32) * alpha
    return np.clip(blend + 0.5, 0, 255).astype(np.uint8)


def tile(pictures: Sequence[np.ndarray], columns: int = 4, gap: int = 2) -> np.ndarray:
    """Arrange equally sized H×W×3 uint8 pictures in a grid (white gaps)."""
    if not pictures:
        raise ValueError("nothing to tile")
    h, w, _ = pictures[0].shape
    columns = max(1, min(columns, len(pictures)))
    rows = -(-len(pictures) // columns)
    out = np.full((rows * h + (rows - 1) * gap, columns * w + (columns - 1) * gap, 3), 255, np.uint8)
    for i, picture in enumerate(pictures):
        r, c = divmod(i, columns)
        out[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = picture
    return out


def to_png(picture: np.ndarray) -> bytes:
    """PNG bytes of an H×W×3 (or H×W) uint8 picture, for download buttons."""
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class MapView:
    """Everything a panel shows for one tensor (M, T or H) of one module."""

    name: str
    reduced: np.ndarray  # H×W at the module's resolution
    upsampled: np.ndarray  # at the picture's resolution
    stats: MapStats
    low: float
    high: float
    diverging: bool
    heat: np.ndarray  # uint8 colour map at the picture's resolution
    overlay: np.ndarray  # uint8 heat blended over the picture
    grid: np.ndarray | None = None  # top-k: one small tile per channel
    channels: list[int] = field(default_factory=list)


def view_map(
    x: Tensor | np.ndarray,
    name: str,
    picture: np.ndarray,
    *,
    how: Reduction = "mean",
    channel: int = 0,
    channels: Sequence[int] | None = None,
    scale: Literal["auto", "mask", "channel_mask"] = "auto",
    cmap: str = "viridis",
    alpha: float = 0.5,
) -> MapView:
    """Reduce ``x`` (C×H×W), upsample to ``picture`` (H×W×3 uint8), colour and overlay it.

    A NaN or constant map is flagged in ``stats`` and drawn flat grey, never with stretched contrast.
    """
    reduced = reduce_channels(x, how, channel=channel, channels=channels)
    size = picture.shape[:2]
    up = upsample(reduced, size)
    stats = describe(reduced)
    low, high, diverging = value_range(stats, scale)
    colours = cmap if not diverging or cmap != "viridis" else "RdBu_r"
    if stats.ok:
        heat = colorize(up, low, high, colours)
        blended = overlay(picture, heat, alpha)
    else:
        heat = np.full(picture.shape, 128, np.uint8)
        blended = overlay(picture, heat, 0.7)
    grid = None
    if how == "topk" and channels:
        a = as_array(x)
        tiles = []
        for c in channels:
            s = describe(a[c])
            lo, hi, div = value_range(s, scale)
            tiles.append(colorize(a[c], lo, hi, colours) if s.ok else np.full((*a[c].shape, 3), 128, np.uint8))
        side = max(24, min(96, 384 // max(1, min(4, len(tiles)))))
        tiles = [np.asarray(Image.fromarray(t).resize((side, side), Image.Resampling.NEAREST)) for t in tiles]
        grid = tile(tiles, columns=4)
    return MapView(name, reduced, up, stats, low, high, diverging, heat, blended, grid, list(channels or []))


def mask_statistics(mask: Tensor | np.ndarray) -> dict[str, float]:
    """The mask statistics the paper discusses: mean mask value and the fraction of entries above 0.5."""
    m = as_array(mask)
    return {"mean mask": float(np.mean(m)), "fraction > 0.5": float(np.mean(m > 0.5))}


def mean_abs_response(h: Tensor | np.ndarray) -> float:
    """Mean absolute value of a feature tensor: the "mean response" the paper plots per stage (Fig. 4)."""
    return float(np.mean(np.abs(as_array(h))))


def module_views(
    mask: Tensor | np.ndarray,
    trunk: Tensor | np.ndarray,
    output: Tensor | np.ndarray,
    picture: np.ndarray,
    *,
    how: Reduction = "mean",
    channel: int = 0,
    k: int = 8,
    mask_scale: Literal["mask", "channel_mask"] = "mask",
    cmap: str = "viridis",
    alpha: float = 0.5,
) -> dict[str, MapView]:
    """The three panels of one attention module: soft mask M, trunk T and output H, reduced the same way.

    For ``topk`` the channels are ranked by the *mask's* energy and the same channels are shown for T and H,
    so the three panels stay comparable.
    """
    channels = topk_channels(mask, k) if how == "topk" else None
    common = dict(how=how, channel=channel, channels=channels, cmap=cmap, alpha=alpha)
    return {
        "M": view_map(mask, "M (soft mask)", picture, scale=mask_scale, **common),
        "T": view_map(trunk, "T (trunk)", picture, **common),
        "H": view_map(output, "H (module output)", picture, **common),
    }
