"""The parts of a soft mask: ``python -m resattn.parts --checkpoint C --image I --stage S``.

Averaged over channels, a learned mask is nearly flat (the photo model's stage-1 mask on the temple photo spans
0.40–0.52), yet single channels are near-binary maps with sharp structure. :func:`mask_parts` shows that structure:
a non-negative factorisation of one module's mask, C channels × H·W positions, into ``k`` spatial *parts* and
how much each channel takes part in each (its *loadings*), so that channel c ≈ floor_c + Σ_j loading[c, j]·part_j.

Choices the paper does not make, shown wherever a part is shown:

* **The common level is not a part.** Every channel of a sigmoid mask sits around a common level (about 0.45 for
  the shipped models); a plain factorisation spends a part on it. Each channel's spatial minimum (its *floor*) is
  subtracted first, so what is factorised is where a channel rises above its own lowest value.
* **Channel attention** (f2) lies in [−1, 1]; it is factorised as (1 + M) / 2, which maps it onto [0, 1] without
  changing its spatial pattern.
* **Explained fraction**: the share of the mask's spatial variation, around each channel's own mean, that the parts
  reproduce: 1 − Σ‖(M_c − mean M_c) − (R_c − mean R_c)‖² / Σ‖M_c − mean M_c‖², R the reconstruction.
* **Choosing k**: with ``k=None`` the smallest k in 2–8 whose parts explain at least :data:`TARGET_EXPLAINED`
  (three quarters) of the variation, or 8 if none does. On the shipped models four parts explain 0.75–0.85.
* scikit-learn's NMF with NNDSVD initialisation and a fixed seed: the same mask always gives the same parts.

Parts come sorted by *energy* (the squared norm of their rank-one term, loading_j ⊗ part_j), largest first; each
part's map is scaled to a maximum of 1 (its loadings carry the scale).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from torch import Tensor

__all__ = ["TARGET_EXPLAINED", "K_RANGE", "MaskParts", "mask_parts", "explained_fraction", "part_images",
           "dataset_examples", "concentration", "parts_picture", "main"]

#: With ``k=None``: the smallest k whose parts explain at least this share of the mask's spatial variation.
TARGET_EXPLAINED = 0.75
#: The k that ``k=None`` chooses among.
K_RANGE: tuple[int, int] = (2, 8)
#: The share of positions whose mass :func:`concentration` measures (as ``resattn.masks``'s top-20% share).
TOP_FRACTION = 0.2

Transform = Literal["none", "(1 + M) / 2"]


@dataclass(frozen=True)
class MaskParts:
    """The parts of one module's mask for one image (see the module docstring for every choice made)."""

    maps: np.ndarray  # k×H×W, each scaled to a maximum of 1, largest energy first
    loadings: np.ndarray  # C×k: how much each channel takes part in each part
    energy: np.ndarray  # k: each part's share of the parts' energy (sums to 1), descending
    explained: float  # share of the spatial variation around each channel's mean that the parts reproduce
    floor: np.ndarray  # C: each channel's spatial minimum (after ``transform``), subtracted before factorising
    transform: Transform  # what was applied to the mask first: "(1 + M) / 2" for channel attention
    explained_by_k: dict[int, float]  # every k tried, with its explained fraction

    @property
    def k(self) -> int:
        """The number of parts (0 for a mask with no spatial variation)."""
        return int(self.maps.shape[0])

    @property
    def flat(self) -> bool:
        """True when the mask is the same at every position (per channel): it has no parts to show."""
        return self.k == 0

    def order(self) -> np.ndarray:
        """Indices of the parts by energy, largest first (the parts are stored in this order: ``arange(k)``)."""
        return np.argsort(-self.energy, kind="stable")

    def top_channels(self, part: int, count: int = 8) -> list[int]:
        """The channels with the largest loadings on ``part``, largest first."""
        return [int(c) for c in np.argsort(-self.loadings[:, part], kind="stable")[:count]]

    def reconstruction(self) -> np.ndarray:
        """The mask as the parts rebuild it (C×H×W, in the mask's own values)."""
        c, (h, w) = self.loadings.shape[0], self.maps.shape[1:]
        above = self.loadings @ self.maps.reshape(self.k, h * w) if self.k else np.zeros((c, h * w))
        rebuilt = (self.floor[:, None] + above).reshape(c, h, w)
        return rebuilt * 2 - 1 if self.transform == "(1 + M) / 2" else rebuilt

    def to_dict(self, channels: int = 5) -> dict[str, Any]:
        """A JSON-ready summary: k, explained fractions, and per part its energy, peak and top channels."""
        return {
            "k": self.k,
            "explained": round(self.explained, 4),
            "explained_by_k": {str(k): round(v, 4) for k, v in self.explained_by_k.items()},
            "transform": self.transform,
            "parts": [{"part": j + 1, "energy": round(float(self.energy[j]), 4),
                       "top_channels": self.top_channels(j, channels),
                       "concentration": round(float(concentration(self.maps[j])), 4)} for j in range(self.k)],
        }


def _as_chw(mask: Tensor | np.ndarray) -> np.ndarray:
    array = mask.detach().float().cpu().numpy() if isinstance(mask, Tensor) else np.asarray(mask, dtype=np.float64)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3:
        raise ValueError(f"a mask must be C×H×W (one image of one module), got shape {tuple(array.shape)}")
    if not np.isfinite(array).all():
        raise ValueError("the mask has non-finite values")
    return array.astype(np.float64)


def explained_fraction(mask: np.ndarray, rebuilt: np.ndarray) -> float:
    """The share of ``mask``'s spatial variation around each channel's mean that ``rebuilt`` reproduces
    (both C×H×W or C×HW); 1.0 for a mask without variation."""
    x = mask.reshape(mask.shape[0], -1)
    r = rebuilt.reshape(rebuilt.shape[0], -1)
    xc = x - x.mean(axis=1, keepdims=True)
    rc = r - r.mean(axis=1, keepdims=True)
    total = float((xc**2).sum())
    return 1.0 if total <= 0 else 1.0 - float(((xc - rc) ** 2).sum()) / total


def _factorise(y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.decomposition import NMF
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():  # the explained fraction reports how well it fitted
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = NMF(n_components=k, init="nndsvd", random_state=0, max_iter=200, tol=1e-3)
        loadings = model.fit_transform(y.astype(np.float32)).astype(np.float64)
    return loadings, model.components_.astype(np.float64)


def _sorted_parts(loadings: np.ndarray, parts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scale each part to a maximum of 1 (loadings take the scale), drop empty parts, sort by energy."""
    peak = parts.max(axis=1)
    keep = peak > 0
    loadings, parts, peak = loadings[:, keep], parts[keep], peak[keep]
    parts = parts / peak[:, None]
    loadings = loadings * peak[None, :]
    energy = (loadings**2).sum(axis=0) * (parts**2).sum(axis=1)
    order = np.argsort(-energy, kind="stable")
    total = energy.sum()
    return loadings[:, order], parts[order], energy[order] / (total if total > 0 else 1.0)


def mask_parts(mask: Tensor | np.ndarray, k: int | None = None, *,
               attention: Literal["mixed", "spatial", "channel"] | None = None) -> MaskParts:
    """Factorise one module's mask of one image (C×H×W) into ``k`` spatial parts (``None``: choose k).

    ``attention`` says which activation made the mask; ``"channel"`` masks (values in [−1, 1]) are factorised as
    (1 + M) / 2. Without it, a mask with negative values is taken for channel attention.
    """
    array = _as_chw(mask)
    channel = attention == "channel" or (attention is None and array.min() < 0)
    transform: Transform = "(1 + M) / 2" if channel else "none"
    values = (array + 1) / 2 if channel else array
    c, h, w = values.shape
    x = values.reshape(c, h * w)
    floor = x.min(axis=1)
    y = x - floor[:, None]
    empty = MaskParts(np.zeros((0, h, w)), np.zeros((c, 0)), np.zeros(0), 1.0, floor, transform, {})
    if k is not None and not 1 <= k <= 64:
        raise ValueError(f"k must be between 1 and 64 parts, got {k}")
    if float(y.max(initial=0.0)) <= 1e-12 or h * w < 2:
        return empty  # the same value at every position of every channel: nothing spatial to factorise
    from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

    most = min(c, h * w)
    # One BLAS thread: the products here are small (256×1024 by k), and a second thread that must wait for a busy
    # core made every one of NMF's hundreds of products wait with it (10× slower on a shared 2-core machine).
    with threadpool_limits(1, user_api="blas"):
        if k is not None:
            candidates = [min(k, most)]
        else:
            # the rank-k SVD of the centred mask bounds what any k parts can explain: skip the k that cannot reach
            # it. Its squared singular values are the eigenvalues of the smaller Gram matrix (C×C or HW×HW).
            centred = x - x.mean(axis=1, keepdims=True)
            gram = centred @ centred.T if c <= h * w else centred.T @ centred
            s2 = np.clip(np.linalg.eigvalsh(gram)[::-1], 0, None)
            bound = np.cumsum(s2) / s2.sum()
            low, high = K_RANGE[0], min(K_RANGE[1], most)
            candidates = [n for n in range(low, high + 1) if bound[n - 1] >= TARGET_EXPLAINED - 1e-9] or [high]
            candidates = list(range(candidates[0], high + 1))
        tried: dict[int, float] = {}
        best: tuple[np.ndarray, np.ndarray] | None = None
        for n in candidates:
            loadings, parts = _factorise(y, n)
            tried[n] = explained_fraction(y, loadings @ parts)
            best = (loadings, parts)
            if k is not None or tried[n] >= TARGET_EXPLAINED:
                break
    assert best is not None
    loadings, parts, energy = _sorted_parts(*best)
    if parts.shape[0] == 0:
        return empty
    explained = explained_fraction(y, loadings @ parts)
    return MaskParts(parts.reshape(-1, h, w), loadings, energy, explained, floor, transform, tried)


def concentration(map2d: np.ndarray, fraction: float = TOP_FRACTION) -> float:
    """The share of a non-negative map's mass held by its ``fraction`` highest positions (0.2 for a flat map at
    the default, 1 when everything sits in a fifth of the positions): how much a part is in one place."""
    values = np.sort(np.abs(np.asarray(map2d, dtype=np.float64)).ravel())[::-1]
    total = values.sum()
    top = max(1, int(round(fraction * values.size)))
    return float(values[:top].sum() / total) if total > 0 else fraction


def part_images(parts: MaskParts, masks: np.ndarray, part: int | None = None,
                channel: int | None = None) -> np.ndarray:
    """For a dataset's masks of the same module (N×C×H×W), each image's map of one part (its channels weighted by
    the part's loadings, above their floor) or of one channel: N×H×W, for picking dataset examples."""
    if (part is None) == (channel is None):
        raise ValueError("give exactly one of part or channel")
    values = (masks + 1) / 2 if parts.transform == "(1 + M) / 2" else masks
    if channel is not None:
        return values[:, channel]
    above = values - values.min(axis=(2, 3), keepdims=True)
    weights = parts.loadings[:, part] / max(float(parts.loadings[:, part].sum()), 1e-12)
    return np.einsum("nchw,c->nhw", above, weights)


def dataset_examples(maps: np.ndarray, count: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """The images (indices into ``maps``, N×H×W) where a part or channel is most concentrated, with the scores."""
    scores = np.array([concentration(m) for m in maps])
    order = np.argsort(-scores, kind="stable")[:count]
    return order, scores[order]


# ---------------------------------------------------------------------------------------------- picture

#: The colormap of a part's map (one direction: a part is non-negative).
PART_CMAP = "inferno"


def _titled(picture: np.ndarray, text: str, font_size: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    from .maps import _font

    strip = Image.new("RGB", (picture.shape[1], font_size + 10), "white")
    ImageDraw.Draw(strip).text((4, 4), text, fill="black", font=_font(font_size))
    return np.concatenate([np.asarray(strip), picture], axis=0)


def parts_picture(parts: MaskParts, image: np.ndarray, title: str = "", side: int = 320) -> np.ndarray:
    """Every part over the picture the network saw (H×W×3 uint8), each with its share of the energy and a colorbar,
    side by side under ``title`` and the explained fraction: an H×W×3 uint8 picture."""
    from PIL import Image

    from .maps import Scale, colorize, overlay, tile, upsample, with_colorbar

    photo = np.asarray(Image.fromarray(image).resize((side, side), Image.BILINEAR))
    font = max(14, side // 20)
    scale = Scale(0.0, 1.0, False, "fixed", "part weight, 0 to its maximum")
    panels = []
    for j in range(parts.k):
        heat = colorize(upsample(parts.maps[j], (side, side)), 0.0, 1.0, PART_CMAP)
        panel = with_colorbar(overlay(photo, heat, alpha=0.65), scale, PART_CMAP)
        panels.append(_titled(panel, f"part {j + 1}: {parts.energy[j]:.0%} of energy", font))
    if not panels:
        return _titled(photo, f"{title}: no spatial variation, no parts", font)
    heading = (f"{title}: {parts.k} parts explain {parts.explained:.0%} of the mask's spatial variation"
               + (f" (factorised as {parts.transform})" if parts.transform != "none" else ""))
    grid = tile(panels, columns=min(4, len(panels)), gap=8)
    return _titled(grid, heading, font)


# ---------------------------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m resattn.parts",
                                description="The parts of one attention module's soft mask for one image.")
    p.add_argument("--checkpoint", required=True, help="a .safetensors checkpoint")
    p.add_argument("--image", required=True, help="an image file (PNG, JPEG, …)")
    p.add_argument("--stage", type=int, required=True, help="attention stage (1-based)")
    p.add_argument("--module", type=int, default=1, help="module within the stage (1-based)")
    p.add_argument("--k", type=int, help=f"number of parts (default: the smallest k in {K_RANGE[0]}–{K_RANGE[1]} "
                                         f"explaining {TARGET_EXPLAINED:.0%} of the mask's spatial variation)")
    p.add_argument("--channels", type=int, default=5, help="channels listed per part")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--png", help="write a picture of the parts over the image here")
    return p


def _summary(parts: MaskParts, label: str) -> str:
    if parts.flat:
        return f"{label}: the mask is the same at every position of each channel; it has no parts to show."
    tried = ", ".join(f"k={k}: {v:.3f}" for k, v in parts.explained_by_k.items())
    lines = [f"{label}: {parts.k} parts explain {parts.explained:.1%} of the mask's spatial variation "
             f"(around each channel's mean; tried {tried})"
             + (f"; factorised as {parts.transform}" if parts.transform != "none" else "")]
    for j in range(parts.k):
        channels = ", ".join(str(c) for c in parts.top_channels(j, 5))
        lines.append(f"  part {j + 1}: {parts.energy[j]:.1%} of the energy, top-20% share "
                     f"{concentration(parts.maps[j]):.2f}, channels {channels}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .checkpoint import CheckpointError, load_checkpoint
    from .images import ImageError, load_image
    from .inspect import inspect
    from .preprocess import Preprocessing

    try:
        model, meta = load_checkpoint(args.checkpoint)
        prep = Preprocessing.from_meta(meta)
        x = prep(load_image(Path(args.image).read_bytes(), Path(args.image).name))
    except (CheckpointError, ImageError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    trace = inspect(model, x)
    try:
        record = trace.module(args.stage, args.module)
    except KeyError as error:
        print(f"error: {error.args[0]}", file=sys.stderr)
        return 2
    attention = meta.get("overrides", {}).get("attention")
    parts = mask_parts(record.mask[0], args.k, attention=attention)
    if args.png:
        from .maps import to_png

        picture = (prep.denormalize(x)[0].permute(1, 2, 0).numpy().clip(0, 1) * 255 + 0.5).astype(np.uint8)
        Path(args.png).write_bytes(to_png(parts_picture(parts, picture, f"{Path(args.checkpoint).stem}, {record.label}")))
    if args.json:
        print(json.dumps({"checkpoint": Path(args.checkpoint).name, "stage": args.stage, "module": args.module,
                          **parts.to_dict(args.channels)}, indent=1))
    else:
        print(_summary(parts, f"{Path(args.checkpoint).stem}, {record.label}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
