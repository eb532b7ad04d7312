"""Turn an attention module's tensors (M, T, H: C×H×W) into 2-D maps and pictures, NumPy out.

A reduction over channels (mean, max, one channel, or the top-k channels by mask energy) gives one map per
tensor; :func:`describe` reports its value range and sign and flags maps that are NaN or constant, so the app
never draws a meaningless map as if it meant something.

Colour scales (:func:`scale_for`) come in two contrasts, and a :class:`Scale` always says which one it is:

* ``fixed`` — the natural scale of the quantity: [0, 1] for sigmoid masks (mixed and spatial attention),
  [−1, 1] for channel attention (f2), and for trunk features T, outputs H and attributions 0–max, min–0 or
  ±max |x|, as the map's sign; so a mask of 0.5 everywhere looks like 0.5, not like contrast.
* ``stretch`` — the map's own 1st–99th percentile (symmetric around 0 when the map has both signs), which
  shows structure in a mask that only spans 0.42–0.52, and is labelled as stretched on the colorbar.

The scale follows the sign the data has, and so does the colormap (:func:`cmap_for`): a scale centred on 0 is
drawn with a diverging colormap, a one-sided one with a sequential colormap. One colormap per quantity
(:data:`DEFAULT_CMAPS`: mask, feature, attribution) is used for every panel of that quantity where its kind fits;
:func:`colorbar` draws the numeric scale that goes with each picture.
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

__all__ = ["Reduction", "REDUCTIONS", "Contrast", "CONTRASTS", "Quantity", "DEFAULT_CMAPS", "CMAPS", "Scale",
           "sign_of", "scale_for", "DIVERGING_CMAPS", "cmap_for", "colorbar", "with_colorbar", "enlarge_nearest",
           "MapStats", "MapView", "as_array", "topk_channels", "reduce_channels", "upsample", "describe",
           "colorize", "overlay", "Heat", "heat", "tile", "view_map", "mask_statistics", "mean_abs_response",
           "module_views", "to_png"]

Reduction = Literal["mean", "max", "channel", "topk"]
REDUCTIONS: tuple[str, ...] = ("mean", "max", "channel", "topk")
Contrast = Literal["fixed", "stretch"]
CONTRASTS: tuple[str, ...] = ("fixed", "stretch")
#: What a map shows: a sigmoid mask, a channel-attention mask (f2), a feature map (T, H) or an attribution.
Quantity = Literal["mask", "channel_mask", "feature", "attribution"]
#: One colormap per kind of quantity, the same on every page (the app lets the user change them in one place).
DEFAULT_CMAPS: dict[str, str] = {"mask": "viridis", "feature": "RdBu_r", "attribution": "inferno"}
#: Colormaps offered for each kind (sequential ones first for masks and attributions, diverging for features).
CMAPS: dict[str, tuple[str, ...]] = {
    "mask": ("viridis", "magma", "inferno", "cividis", "gray", "jet"),
    "feature": ("RdBu_r", "coolwarm", "PuOr_r", "viridis", "magma", "gray"),
    "attribution": ("inferno", "magma", "viridis", "hot", "RdBu_r", "jet"),
}


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


@dataclass(frozen=True)
class Scale:
    """A colour scale and what it means: the range, whether it is centred on 0, and fixed or stretched."""

    low: float
    high: float
    diverging: bool
    contrast: str  # "fixed" or "stretch"
    description: str  # for captions and the colorbar title

    @property
    def stretched(self) -> bool:
        return self.contrast == "stretch"


_NATURAL = {
    "mask": "fixed scale 0–1 (sigmoid mask)",
    "channel_mask": "fixed scale −1–1 (channel attention f2)",
    "feature": "fixed scale: 0–max, min–0 or symmetric around 0, as the map's sign",
    "attribution": "fixed scale: 0–max, min–0 or symmetric around 0, as the map's sign",
}


def sign_of(values: np.ndarray) -> Literal["both", "positive", "negative"]:
    """Which signs the finite ``values`` take: ``both`` when some are below 0 and some above, ``negative`` when
    none is above 0 (and some below), else ``positive`` (zeros count as positive)."""
    a = np.asarray(values, dtype=np.float64)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return "positive"
    low, high = float(a.min()), float(a.max())
    if low < 0 < high:
        return "both"
    return "negative" if low < 0 else "positive"


def scale_for(values: np.ndarray, quantity: Quantity, contrast: Contrast = "fixed") -> Scale:
    """The colour scale of a map of ``quantity`` under ``contrast`` (see the module docstring).

    The scale follows the sign the data has: a map with both signs gets a scale centred on 0 (diverging), an
    all-positive map 0–max (or its percentiles) and an all-negative one min–0, so a one-sided map uses the whole
    colour range. The fixed natural scales of masks are the exception: [0, 1] for sigmoid masks and [−1, 1] for
    channel attention, whatever one map's values, so 0.5 everywhere looks like 0.5, not like contrast.
    """
    if contrast not in CONTRASTS:
        raise ValueError(f"contrast must be one of {CONTRASTS}, got {contrast!r}")
    if quantity not in _NATURAL:
        raise ValueError(f"quantity must be one of {tuple(_NATURAL)}, got {quantity!r}")
    a = np.asarray(values, dtype=np.float64)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return Scale(0.0, 1.0, False, contrast, "no finite values")
    sign = sign_of(a)
    if contrast == "fixed":
        if quantity == "mask":
            return Scale(0.0, 1.0, False, "fixed", _NATURAL[quantity])
        if quantity == "channel_mask":
            return Scale(-1.0, 1.0, True, "fixed", _NATURAL[quantity])
        bound = float(np.abs(a).max()) or 1.0
        if sign == "both":
            return Scale(-bound, bound, True, "fixed", f"fixed scale: symmetric around 0, ±{bound:.3g} (±max |x|)")
        if sign == "negative":
            return Scale(-bound, 0.0, False, "fixed", f"fixed scale: {-bound:.3g}–0 (min to 0; every value ≤ 0)")
        return Scale(0.0, bound, False, "fixed", f"fixed scale: 0–{bound:.3g} (0 to max; every value ≥ 0)")
    if sign == "both":
        bound = float(np.percentile(np.abs(a), 99)) or float(np.abs(a).max()) or 1.0
        return Scale(-bound, bound, True, "stretch",
                     f"stretched to this map: ±{bound:.3g} (99th percentile of |x|), 0 at the centre")
    low, high = (float(v) for v in np.percentile(a, [1, 99]))
    if high <= low:
        low, high = float(a.min()), float(a.max()) if a.max() > a.min() else float(a.min()) + 1e-6
    return Scale(low, high, False, "stretch", f"stretched to this map's 1st–99th percentile: {low:.3g}–{high:.3g}")


#: Colormaps centred on a neutral middle colour: only these are used on a scale centred on 0, and never on a
#: one-sided one (where their white middle would read as zero).
DIVERGING_CMAPS = frozenset({"RdBu_r", "RdBu", "coolwarm", "PuOr_r", "PuOr", "bwr", "seismic", "RdYlBu_r"})
#: What replaces a chosen colormap whose kind does not fit the scale: diverging for signed maps, and one
#: sequential map per quantity for one-sided ones.
FALLBACK_CMAPS: dict[str, str] = {"diverging": "RdBu_r", "mask": "viridis", "channel_mask": "viridis",
                                  "feature": "magma", "attribution": "inferno"}


def cmap_for(scale: Scale, chosen: str | None, quantity: Quantity) -> str:
    """The colormap to draw ``scale`` with: ``chosen`` (default: the quantity's) when its kind fits the scale
    (diverging for a scale centred on 0, sequential otherwise), else the fitting fallback, so the sign of a map
    can always be read from its colours."""
    chosen = chosen or DEFAULT_CMAPS["mask" if quantity == "channel_mask" else quantity]
    if (chosen in DIVERGING_CMAPS) == scale.diverging:
        return chosen
    return FALLBACK_CMAPS["diverging"] if scale.diverging else FALLBACK_CMAPS[quantity]


def colorize(map2d: np.ndarray, low: float, high: float, cmap: str = "viridis") -> np.ndarray:
    """Map values in [low, high] to an H×W×3 uint8 picture with a matplotlib colormap."""
    from matplotlib import colormaps

    scaled = (np.nan_to_num(map2d, nan=low) - low) / max(high - low, 1e-12)
    lut = (colormaps[cmap](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)
    return lut[np.clip(scaled * 255 + 0.5, 0, 255).astype(np.uint8)]


def _font(size: int):  # noqa: ANN202 - a PIL font
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def _tick(value: float) -> str:
    return f"{value:.3g}"  # ASCII minus: Pillow's built-in font has no U+2212


def ticks(scale: Scale) -> tuple[str, str, str]:
    """The numbers at the ends and the middle of a colorbar (the middle is exactly 0 on a diverging scale)."""
    middle = 0.0 if scale.diverging else (scale.low + scale.high) / 2
    return _tick(scale.low), _tick(middle), _tick(scale.high)


def colorbar(scale: Scale, cmap: str, width: int, height: int = 14, font_size: int = 12) -> np.ndarray:
    """A horizontal colorbar for ``scale`` as an H×W×3 uint8 picture: the gradient, then the numbers at the
    ends and the middle, and "stretched" when the scale is the map's own percentiles."""
    from PIL import ImageDraw

    gradient = colorize(np.tile(np.linspace(scale.low, scale.high, max(2, width))[None, :], (height, 1)),
                        scale.low, scale.high, cmap)
    text_height = font_size + 6
    canvas = Image.new("RGB", (width, height + text_height), "white")
    canvas.paste(Image.fromarray(gradient), (0, 0))
    draw = ImageDraw.Draw(canvas)
    font = _font(font_size)
    labels = [(text, where) for text, where in zip(ticks(scale), (0.0, 0.5, 1.0))]
    if scale.stretched:
        labels[1] = (f"{labels[1][0]} · stretched", 0.5)
    for text, where in labels:
        w = draw.textlength(text, font=font)
        x = min(max(0.0, where * width - w * where), width - w)
        draw.text((x, height + 2), text, fill="black", font=font)
    return np.asarray(canvas)


def with_colorbar(picture: np.ndarray, scale: Scale, cmap: str) -> np.ndarray:
    """``picture`` with its colorbar underneath (what the app shows and exports as PNG)."""
    bar = colorbar(scale, cmap, picture.shape[1], font_size=max(12, min(20, picture.shape[1] // 18)))
    return np.concatenate([picture, np.full((4, picture.shape[1], 3), 255, np.uint8), bar], axis=0)


def enlarge_nearest(picture: np.ndarray, side: int) -> np.ndarray:
    """Enlarge an H×W×3 uint8 picture by nearest neighbour (every input pixel stays a visible square)."""
    h, w = picture.shape[:2]
    factor = max(1, side // max(h, w))
    return np.repeat(np.repeat(picture, factor, axis=0), factor, axis=1)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a colour map over an H×W×3 uint8 image; ``alpha`` is the map's opacity."""
    if image.shape != heat.shape:
        raise ValueError(f"image {image.shape} and map {heat.shape} differ in shape")
    blend = image.astype(np.float32) * (1 - alpha) + heat.astype(np.float32) * alpha
    return np.clip(blend + 0.5, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Heat:
    """A 2-D map drawn in colour: the picture, and the scale and colormap its colorbar must state."""

    picture: np.ndarray  # H×W×3 uint8
    scale: Scale
    cmap: str


def heat(values: np.ndarray, quantity: Quantity, contrast: Contrast, chosen_cmap: str | None,
         size: tuple[int, int], *, scale: Scale | None = None, over: np.ndarray | None = None,
         alpha: float = 0.6) -> Heat:
    """The one way every page draws a map: ``values`` (H×W) on ``scale`` (default :func:`scale_for` under
    ``contrast``) with the colormap :func:`cmap_for` allows (a signed map gets a diverging one), enlarged to
    ``size`` (bilinear) and, given ``over`` (an H×W×3 picture of that size), laid over it with opacity ``alpha``."""
    scale = scale or scale_for(values, quantity, contrast)
    cmap = cmap_for(scale, chosen_cmap, quantity)
    picture = colorize(upsample(values, size), scale.low, scale.high, cmap)
    return Heat(picture if over is None else overlay(over, picture, alpha), scale, cmap)


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
    # zlib level 1: about 3x faster than the default level 6 for these pictures, files about 4% larger; on a
    # classroom server PNG encoding was the largest cost of a page run
    Image.fromarray(picture).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


@dataclass
class MapView:
    """Everything a panel shows for one tensor (M, T or H) of one module."""

    name: str
    reduced: np.ndarray  # H×W at the module's resolution
    upsampled: np.ndarray  # at the picture's resolution
    stats: MapStats
    scale: Scale
    cmap: str
    heat: np.ndarray  # uint8 colour map at the picture's resolution
    overlay: np.ndarray  # uint8 heat blended over the picture
    grid: np.ndarray | None = None  # top-k: one small tile per channel, on grid_scale
    channels: list[int] = field(default_factory=list)
    grid_scale: Scale | None = None  # one scale for the top-k tiles, from their own values
    grid_cmap: str | None = None  # the colormap of the tiles (fits grid_scale's sign)

    @property
    def low(self) -> float:
        return self.scale.low

    @property
    def high(self) -> float:
        return self.scale.high

    @property
    def diverging(self) -> bool:
        return self.scale.diverging

    def picture(self, overlaid: bool) -> np.ndarray:
        """The panel as shown: the overlay or the bare colour map, with its colorbar underneath."""
        return with_colorbar(self.overlay if overlaid else self.heat, self.scale, self.cmap)


def view_map(
    x: Tensor | np.ndarray,
    name: str,
    picture: np.ndarray,
    *,
    how: Reduction = "mean",
    channel: int = 0,
    channels: Sequence[int] | None = None,
    quantity: Quantity = "feature",
    contrast: Contrast = "fixed",
    cmap: str | None = None,
    alpha: float = 0.5,
) -> MapView:
    """Reduce ``x`` (C×H×W), upsample to ``picture`` (H×W×3 uint8), colour it on the scale of ``quantity`` under
    ``contrast`` with ``cmap`` (default: the quantity's :data:`DEFAULT_CMAPS` entry) and overlay it.

    A NaN or constant map is flagged in ``stats`` and drawn flat grey, never with stretched contrast. The top-k
    tiles share one scale of their own (``grid_scale``, from the single channels' values, which span far more
    than their mean does), so no tile is clipped to a solid block.
    """
    reduced = reduce_channels(x, how, channel=channel, channels=channels)
    size = picture.shape[:2]
    up = upsample(reduced, size)
    stats = describe(reduced)
    scale = scale_for(reduced, quantity, contrast)
    cmap = cmap_for(scale, cmap, quantity)
    if stats.ok:
        heat = colorize(up, scale.low, scale.high, cmap)
        blended = overlay(picture, heat, alpha)
    else:
        heat = np.full(picture.shape, 128, np.uint8)
        blended = overlay(picture, heat, 0.7)
    grid = grid_scale = grid_cmap = None
    if how == "topk" and channels:
        a = as_array(x)[list(channels)]
        grid_scale = scale_for(a, quantity, contrast)
        grid_cmap = cmap_for(grid_scale, cmap, quantity)
        tiles = [colorize(t, grid_scale.low, grid_scale.high, grid_cmap) if describe(t).ok
                 else np.full((*t.shape, 3), 128, np.uint8) for t in a]
        side = max(24, min(96, 384 // max(1, min(4, len(tiles)))))
        tiles = [np.asarray(Image.fromarray(t).resize((side, side), Image.Resampling.NEAREST)) for t in tiles]
        grid = tile(tiles, columns=4)
    return MapView(name, reduced, up, stats, scale, cmap, heat, blended, grid, list(channels or []), grid_scale,
                   grid_cmap)


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
    contrast: Contrast = "fixed",
    mask_cmap: str | None = None,
    feature_cmap: str | None = None,
    alpha: float = 0.5,
) -> dict[str, MapView]:
    """The three panels of one attention module: soft mask M, trunk T and output H, reduced the same way.

    M is drawn on the mask's scale (``mask_scale``: [0, 1] sigmoid or [−1, 1] channel attention) with the mask
    colormap; T and H are features, drawn on a scale that follows their sign with the feature colormap. ``contrast``
    applies to all three. For ``topk`` the channels are ranked by the *mask's* energy and the same channels are
    shown for T and H, so the three panels stay comparable.
    """
    channels = topk_channels(mask, k) if how == "topk" else None
    common = dict(how=how, channel=channel, channels=channels, contrast=contrast, alpha=alpha)
    return {
        "M": view_map(mask, "M (soft mask)", picture, quantity=mask_scale, cmap=mask_cmap, **common),
        "T": view_map(trunk, "T (trunk)", picture, quantity="feature", cmap=feature_cmap, **common),
        "H": view_map(output, "H (module output)", picture, quantity="feature", cmap=feature_cmap, **common),
    }
