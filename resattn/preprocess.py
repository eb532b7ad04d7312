"""One preprocessing: how an image becomes a model's input, read from a checkpoint's metadata.

Evaluation (``python -m resattn.evaluate``), the explorer, the figure script and the jobs all turn images into
inputs through :class:`Preprocessing`, so a model is shown exactly the input it was evaluated on:

1. resize so the shorter side is ``resize`` pixels (bilinear with antialiasing, Pillow), then
2. take the centre ``size``×``size`` square (for ImageNet-style models ``resize = size / 0.875``, the usual
   "resize 256, crop 224"; for CIFAR models ``resize = size`` and both steps do nothing on a 32×32 image),
3. scale to [0, 1], subtract the mean (per channel, or the per-pixel mean image of the paper's CIFAR recipe) and
   divide by the per-channel std.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

__all__ = ["CENTER_CROP_RATIO", "Preprocessing", "resize_center_crop", "resize_for_crop"]

#: Evaluation crop as a fraction of the resized shorter side (224 / 256, the ImageNet convention).
CENTER_CROP_RATIO = 0.875


def resize_for_crop(size: int) -> int:
    """The shorter side to resize to before a centre crop of ``size`` (ImageNet convention)."""
    return int(round(size / CENTER_CROP_RATIO))


def resize_center_crop(image: Image.Image, resize: int, crop: int | None = None) -> Image.Image:
    """Resize ``image`` so its shorter side is ``resize``, then cut the centre ``crop``×``crop`` square
    (``crop=None``: the centre ``resize``×``resize`` square). Nothing is resampled when the size already fits."""
    crop = resize if crop is None else crop
    if crop > resize:
        raise ValueError(f"crop {crop} is larger than the resized shorter side {resize}")
    w, h = image.size
    if min(w, h) != resize:
        scale = resize / min(w, h)
        w, h = max(resize, round(w * scale)), max(resize, round(h * scale))
        image = image.resize((w, h), Image.Resampling.BILINEAR)
    if (w, h) != (crop, crop):
        left, top = (w - crop) // 2, (h - crop) // 2
        image = image.crop((left, top, left + crop, top + crop))
    return image


def _side(value: Any) -> int:
    """``input_size`` as stored by any resattn version: 32, [32, 32] or [3, 32, 32]."""
    if isinstance(value, (int, float)):
        return int(value)
    values = [int(v) for v in value]
    if not values or len(set(values[-2:])) != 1:
        raise ValueError(f"input_size must be square, got {value!r}")
    return values[-1]


@dataclass(frozen=True)
class Preprocessing:
    """The input pipeline a checkpoint was evaluated with (see the module docstring)."""

    size: int
    resize: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    mean_image: tuple[float, ...] | None = None  # C·size·size values: the paper recipe's per-pixel mean

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> "Preprocessing":
        """Read ``input_size``, ``resize`` (default: ``input_size``), ``mean``, ``std`` and ``mean_image``.

        Metadata without one of the required keys raises ``ValueError`` naming it (not a bare ``KeyError``)."""
        missing = [key for key in ("input_size", "mean", "std") if key not in meta]
        if missing:
            raise ValueError(f"the checkpoint's metadata has no {', '.join(map(repr, missing))}, which preprocessing "
                             "needs; save checkpoints with resattn.train or pass them in save_checkpoint's meta")
        size = _side(meta["input_size"])
        resize = int(meta.get("resize") or size)
        mean_image = meta.get("mean_image")
        return cls(size, resize, tuple(float(v) for v in meta["mean"]), tuple(float(v) for v in meta["std"]),
                   tuple(float(v) for v in mean_image) if mean_image is not None else None)

    def to_meta(self) -> dict[str, Any]:
        """The metadata keys :meth:`from_meta` reads."""
        meta: dict[str, Any] = {"input_size": self.size, "resize": self.resize, "mean": list(self.mean),
                                "std": list(self.std)}
        if self.mean_image is not None:
            meta["mean_image"] = list(self.mean_image)
        return meta

    @property
    def crop_fraction(self) -> float:
        """The share of the shorter side that the model sees (1 for CIFAR models, 0.875 for ImageNet ones)."""
        return self.size / self.resize

    def mean_tensor(self) -> Tensor:
        """The mean to subtract, shaped C×1×1 or C×H×W (per-pixel)."""
        if self.mean_image is not None:
            return torch.tensor(self.mean_image, dtype=torch.float32).view(len(self.std), self.size, self.size)
        return torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)

    def std_tensor(self) -> Tensor:
        return torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)

    def crop(self, image: Image.Image) -> Image.Image:
        """The RGB picture the model sees, at the model's resolution (``size``×``size``)."""
        return resize_center_crop(image.convert("RGB"), self.resize, self.size)

    def view(self, image: Image.Image) -> Image.Image:
        """The same region of ``image`` as :meth:`crop`, at the image's own resolution, for display and overlays."""
        w, h = image.size
        side = max(1, round(min(w, h) * self.crop_fraction))
        left, top = (w - side) // 2, (h - side) // 2
        return image.crop((left, top, left + side, top + side))

    def normalize(self, images: Tensor) -> Tensor:
        """uint8 (or 0–255 float) N×C×H×W → the normalised float input."""
        return (images.float() / 255 - self.mean_tensor().to(images.device)) / self.std_tensor().to(images.device)

    def __call__(self, image: Image.Image) -> Tensor:
        """One image → a 1×C×size×size float tensor, exactly as evaluation feeds it."""
        array = np.asarray(self.crop(image), dtype=np.uint8)
        return self.normalize(torch.from_numpy(array.copy()).permute(2, 0, 1).unsqueeze(0))

    def denormalize(self, x: Tensor) -> Tensor:
        """The inverse of :meth:`normalize`, clamped to [0, 1]: the input tensor as a picture."""
        return (x * self.std_tensor().to(x.device) + self.mean_tensor().to(x.device)).clamp(0, 1)


def stats_meta(mean: Sequence[float], std: Sequence[float], size: int, resize: int | None = None) -> dict[str, Any]:
    """Preprocessing metadata for a model without a training run (random weights in the explorer)."""
    return Preprocessing(size, resize or size, tuple(mean), tuple(std)).to_meta()
