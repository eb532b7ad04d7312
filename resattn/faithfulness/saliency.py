"""The maps whose faithfulness is measured, and the controls they are measured against.

Maps (all H×W at the input's resolution; keys of :data:`MAP_NAMES`):

* ``mask``: the channel mean of the soft mask M of attention module (stage, index), upsampled bilinearly: the
  class-agnostic map the network itself multiplies its features by;
* ``gradcam`` (and ``guided_gradcam``, ``occlusion`` on request): :mod:`resattn.attribution`'s Captum wrappers,
  Grad-CAM at the output of the same stage;
* ``integrated_gradients``: :func:`resattn.attribution.integrated_gradients` (zero baseline, 16 steps), summed
  over colour channels.

Controls (they know nothing the model learned):

* ``random``: uniform noise from ``numpy.random.default_rng(seed)`` (over a dataset: ``seed`` + the image's
  position in the split), a floor every map should beat;
* ``centre``: a Gaussian bump at the image centre with σ = side / 4, the photographer's-bias prior.

A new map or control is a function here, a key of :data:`MAP_NAMES` and a branch of :func:`saliency_maps`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
from torch import Tensor, nn

from .. import attribution
from ..inspect import inspect
from ..maps import upsample

__all__ = ["DELETION_MAPS", "MAP_NAMES", "random_map", "centre_prior", "mask_map", "saliency_maps", "evaluating"]

#: Maps compared by deletion and insertion (the default of :func:`saliency_maps`).
DELETION_MAPS: tuple[str, ...] = ("mask", "gradcam", "integrated_gradients", "random", "centre")
MAP_NAMES: dict[str, str] = {
    "mask": "soft mask M (channel mean)", **attribution.METHOD_NAMES, "random": "random", "centre": "centre prior"}


def random_map(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Uniform noise of ``size`` = (H, W) from ``numpy.random.default_rng(seed)``."""
    return np.random.default_rng(seed).random(size).astype(np.float32)


def centre_prior(size: tuple[int, int], sigma_fraction: float = 0.25) -> np.ndarray:
    """A Gaussian bump at the centre of an (H, W) map with σ = ``sigma_fraction`` × the shorter side."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    sigma = sigma_fraction * min(h, w)
    bump = np.exp(-(((yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2) / (2 * sigma**2)))
    return bump.astype(np.float32)


def mask_map(model: nn.Module, x: Tensor, stage: int, index: int = 1) -> tuple[np.ndarray, Tensor]:
    """The channel mean of module (stage, index)'s soft mask M upsampled to the input, and the logits."""
    trace = inspect(model, x)
    reduced = trace.module(stage, index).mask[0].float().mean(dim=0).cpu().numpy()
    return upsample(reduced, tuple(x.shape[-2:])), trace.logits


def saliency_maps(
    model: nn.Module,
    x: Tensor,
    target: int,
    stage: int,
    index: int = 1,
    names: Sequence[str] = DELETION_MAPS,
    *,
    seed: int = 0,
    ig_steps: int = 16,
) -> dict[str, np.ndarray]:
    """The maps ``names`` (keys of :data:`MAP_NAMES`) for one 1×C×H×W input and a target class."""
    size = tuple(x.shape[-2:])
    out: dict[str, np.ndarray] = {}
    for name in names:
        if name == "mask":
            out[name] = mask_map(model, x, stage, index)[0]
        elif name == "random":
            out[name] = random_map(size, seed)
        elif name == "centre":
            out[name] = centre_prior(size)
        elif name == "integrated_gradients":
            out[name] = attribution.integrated_gradients(model, x, target, steps=ig_steps)
        elif name in attribution.METHODS:
            out[name] = attribution.attribute(model, x, target, name, stage=stage)
        else:
            raise ValueError(f"map must be one of {tuple(MAP_NAMES)}, got {name!r}")
    return out


@contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode for the block, then back in the mode it was in: every measurement here runs the
    model as it is deployed (BatchNorm on running statistics), whoever calls it."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
