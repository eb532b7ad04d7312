"""The maps whose faithfulness is measured, and the controls they are measured against.

Maps (all H×W at the input's resolution; keys of :data:`MAP_NAMES`):

* ``mask``: the channel mean of the soft mask M of attention module (stage, index), upsampled bilinearly: the
  class-agnostic map the network itself multiplies its features by;
* ``gradcam`` (and ``guided_gradcam``, ``occlusion`` on request): :mod:`resattn.attribution`'s Captum wrappers,
  Grad-CAM at the output of the same stage;
* ``integrated_gradients``: :func:`resattn.attribution.integrated_gradients` (16 steps), summed over colour
  channels. Its baseline is 0 in normalised space, the dataset's mean colour: the very image deletion ends at
  (:mod:`~resattn.faithfulness.deletion`), which favours IG there (its attributions add up to the change from
  that image).

Controls. Each answers one question about the map under test, the *reference* (by default ``mask``):

* ``other``: the reference map of **another image** (for the same class). It knows nothing about *this* image,
  only what the reference's maps share (their average layout): where the reference does no better than this, its
  score comes from that layout. Over a dataset image i gets the map of image ``derangement(N, seed)[i]`` of the
  same sample (a random cyclic permutation: never itself);
* ``inverted``: the reference turned upside down (max + min − map): ranks the reference's last pixels first;
* ``smooth_random``: a random map **matched in smoothness** to the reference: the reference's Fourier amplitude
  spectrum (of its mirror extension) with random phases, a phase-randomised surrogate: the reference's spatial
  autocorrelation and none of its layout. A smooth map deletes contiguous regions, pixel noise scatters its
  deletions, and deletion / insertion scores the two differently whatever the map knows: compare a smooth map with
  this control, not with ``random``;
* ``random``: uniform pixel noise from ``numpy.random.default_rng(seed)`` (over a dataset: ``seed`` + the image's
  position in the split);
* ``centre``: a Gaussian bump at the image centre with σ = side / 4, the photographer's-bias prior.

``smooth_random`` draws its phases from ``default_rng((seed, 1))``, a stream apart from ``random``'s.

A new map or control is a function here, a key of :data:`MAP_NAMES` and a branch of :func:`saliency_maps`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
from torch import Tensor, nn

from .. import attribution
from ..inspect import inspect
from ..maps import upsample

__all__ = ["DELETION_MAPS", "CONTROLS", "REFERENCE_CONTROLS", "MAP_NAMES", "random_map", "smooth_random_map",
           "inverted_map", "derangement", "centre_prior", "mask_map", "saliency_maps", "evaluating"]

#: Controls that are made from the map under test (the reference), and all controls.
REFERENCE_CONTROLS: tuple[str, ...] = ("other", "inverted", "smooth_random")
CONTROLS: tuple[str, ...] = (*REFERENCE_CONTROLS, "random", "centre")
#: Maps compared by deletion and insertion (the default of :func:`saliency_maps`).
DELETION_MAPS: tuple[str, ...] = ("mask", "gradcam", "integrated_gradients", *CONTROLS)
MAP_NAMES: dict[str, str] = {
    "mask": "soft mask M (channel mean)", **attribution.METHOD_NAMES, "other": "another image's map",
    "inverted": "inverted map", "smooth_random": "random, matched smoothness", "random": "random pixel noise",
    "centre": "centre prior"}


def random_map(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Uniform pixel noise of ``size`` = (H, W) from ``numpy.random.default_rng(seed)``."""
    return np.random.default_rng(seed).random(size).astype(np.float32)


def smooth_random_map(reference: np.ndarray, seed: int = 0) -> np.ndarray:
    """A random map as smooth as ``reference`` (H, W), with none of its layout: the reference is mirrored into a
    2H×2W map (periodic without jumps at the edges, which would otherwise add sharp detail), that map keeps its
    Fourier amplitudes and gets the phases of white noise from ``default_rng((seed, 1))``, and the top-left H×W
    is returned. A constant reference gives pixel noise (there is no smoothness to match)."""
    ref = np.nan_to_num(np.asarray(reference, np.float64))
    wide = np.block([[ref, ref[:, ::-1]], [ref[::-1, :], ref[::-1, ::-1]]])
    noise = np.random.default_rng((seed, 1)).standard_normal(wide.shape)
    amplitude = np.abs(np.fft.fft2(wide - wide.mean()))
    if not amplitude.any():
        return noise[: ref.shape[0], : ref.shape[1]].astype(np.float32)
    spectrum = np.fft.fft2(noise)
    phases = spectrum / np.maximum(np.abs(spectrum), 1e-300)
    surrogate = np.real(np.fft.ifft2(amplitude * phases))
    return surrogate[: ref.shape[0], : ref.shape[1]].astype(np.float32)


def inverted_map(reference: np.ndarray) -> np.ndarray:
    """``reference`` upside down within its own range (max + min − map): the last pixels first."""
    ref = np.asarray(reference, np.float32)
    return (np.nanmax(ref) + np.nanmin(ref) - ref).astype(np.float32)


def derangement(n: int, seed: int = 0) -> np.ndarray:
    """A random cyclic permutation of ``range(n)`` (Sattolo's algorithm, ``default_rng((seed, 2))``): no position
    maps to itself, so ``images[perm[i]]`` is always *another* image. Needs n ≥ 2."""
    if n < 2:
        raise ValueError(f"another image needs at least 2 images, got {n}")
    rng = np.random.default_rng((seed, 2))
    perm = np.arange(n)
    for i in range(n - 1, 0, -1):
        j = int(rng.integers(0, i))  # j < i: Sattolo, one cycle through every position
        perm[i], perm[j] = perm[j], perm[i]
    return perm


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
    reference: str = "mask",
    other: Tensor | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict[str, np.ndarray]:
    """The maps ``names`` (keys of :data:`MAP_NAMES`) for one 1×C×H×W input and a target class. The controls in
    :data:`REFERENCE_CONTROLS` are made from the map ``reference``; ``other`` (needs ``other``, another 1×C×H×W
    input) is ``reference`` computed on that input for the same ``target``. ``progress(done, total, text)`` is
    called before each map."""
    size = tuple(x.shape[-2:])
    if reference in CONTROLS or reference not in MAP_NAMES:
        raise ValueError(f"reference must be a map under test, one of {tuple(n for n in MAP_NAMES if n not in CONTROLS)}"
                         f", got {reference!r}")
    if "other" in names and other is None:
        raise ValueError("the control 'other' needs another image (other=...)")
    out: dict[str, np.ndarray] = {}

    def one(name: str, inp: Tensor) -> np.ndarray:
        if name == "mask":
            return mask_map(model, inp, stage, index)[0]
        if name == "random":
            return random_map(size, seed)
        if name == "centre":
            return centre_prior(size)
        if name == "integrated_gradients":
            return attribution.integrated_gradients(model, inp, target, steps=ig_steps)
        if name in attribution.METHODS:
            return attribution.attribute(model, inp, target, name, stage=stage)
        raise ValueError(f"map must be one of {tuple(MAP_NAMES)}, got {name!r}")

    for done, name in enumerate(names):
        if progress is not None:
            progress(done, len(names), f"the {MAP_NAMES.get(name, name)} map")
        if name in out:
            continue
        if name == "other":
            out[name] = one(reference, other)  # type: ignore[arg-type]
        elif name in REFERENCE_CONTROLS:
            if reference not in out:
                out[reference] = one(reference, x)
            made = out[reference]
            out[name] = inverted_map(made) if name == "inverted" else smooth_random_map(made, seed)
        else:
            out[name] = one(name, x)
    return {name: out[name] for name in names}


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
