"""Attributions computed with Captum, set beside the soft masks, and how far the two agree.

Every function takes a model, a preprocessed 1×3×H×W input and a target class and returns one H×W NumPy map
at the input's resolution. Captum attaches hooks to the model while it works (Guided backprop replaces the
ReLU gradients), so calls on one model are serialised by a per-model lock: the explorer shares one model
between browser sessions.

Agreement is measured with Spearman's rank correlation over all pixels and the IoU of the top-20% pixels. Both
say whether two maps *rank* the same places highly; neither says whether either map is right.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from .maps import upsample

__all__ = [
    "Method",
    "METHODS",
    "METHOD_NAMES",
    "grad_cam",
    "guided_grad_cam",
    "integrated_gradients",
    "occlusion",
    "attribute",
    "spearman",
    "top_iou",
    "agreement",
]

Method = Literal["gradcam", "guided_gradcam", "integrated_gradients", "occlusion"]
METHODS: tuple[str, ...] = ("gradcam", "guided_gradcam", "integrated_gradients", "occlusion")
METHOD_NAMES: dict[str, str] = {
    "gradcam": "Grad-CAM",
    "guided_gradcam": "Guided Grad-CAM",
    "integrated_gradients": "Integrated Gradients",
    "occlusion": "Occlusion",
}

_LOCKS: "weakref.WeakKeyDictionary[nn.Module, threading.Lock]" = weakref.WeakKeyDictionary()
_LOCKS_LOCK = threading.Lock()


def _lock(model: nn.Module) -> threading.Lock:
    with _LOCKS_LOCK:
        return _LOCKS.setdefault(model, threading.Lock())


def _stage_layer(model: nn.Module, stage: int) -> nn.Module:
    if not hasattr(model, "stage"):
        raise TypeError("the model has no .stage(k); Grad-CAM needs a network from resattn.create_model")
    return model.stage(stage)


def _plain(model: nn.Module, x: Tensor, run: Callable[[], Tensor]) -> np.ndarray:
    """Run a Captum call under the model's lock, in eval mode, and return a float32 NumPy array."""
    with _lock(model):
        was_training = model.training
        model.eval()
        try:
            out = run()
        finally:
            model.train(was_training)
    return out.detach().to("cpu", torch.float32).numpy()


def grad_cam(model: nn.Module, x: Tensor, target: int, stage: int) -> np.ndarray:
    """Grad-CAM (Selvaraju et al. 2017) at the output of attention stage ``stage``, ReLU applied, upsampled
    bilinearly to the input's resolution."""
    from captum.attr import LayerGradCam

    cam = _plain(model, x, lambda: LayerGradCam(model, _stage_layer(model, stage)).attribute(
        x, target=int(target), relu_attributions=True))
    return upsample(cam[0, 0], tuple(x.shape[-2:]))


def guided_grad_cam(model: nn.Module, x: Tensor, target: int, stage: int) -> np.ndarray:
    """Guided Grad-CAM: Guided backprop times the upsampled Grad-CAM at ``stage``, summed over colour channels."""
    from captum.attr import GuidedGradCam

    out = _plain(model, x, lambda: GuidedGradCam(model, _stage_layer(model, stage)).attribute(
        x, target=int(target), interpolate_mode="bilinear"))
    return out[0].sum(axis=0)


def integrated_gradients(model: nn.Module, x: Tensor, target: int, steps: int = 16) -> np.ndarray:
    """Integrated Gradients from a zero (dataset-mean) baseline in ``steps`` steps, summed over colour channels."""
    from captum.attr import IntegratedGradients

    out = _plain(model, x, lambda: IntegratedGradients(model).attribute(
        x, baselines=torch.zeros_like(x), target=int(target), n_steps=int(steps), internal_batch_size=int(steps)))
    return out[0].sum(axis=0)


def occlusion(model: nn.Module, x: Tensor, target: int, window: int | None = None) -> np.ndarray:
    """Occlusion: the drop in the target logit when a square of zeros (the dataset mean after normalisation)
    slides over the input. Default window: a quarter of the shorter side, stride half the window (7×7 positions,
    49 forward passes, whatever the input size)."""
    from captum.attr import Occlusion

    side = min(x.shape[-2:])
    window = int(window or max(2, side // 4))
    stride = max(1, window // 2)
    out = _plain(model, x, lambda: Occlusion(model).attribute(
        x, sliding_window_shapes=(x.shape[1], window, window), strides=(x.shape[1], stride, stride),
        target=int(target), baselines=0.0, perturbations_per_eval=16))
    return out[0].sum(axis=0)


def attribute(model: nn.Module, x: Tensor, target: int, method: Method, stage: int = 1, **options: int) -> np.ndarray:
    """Dispatch to one of :data:`METHODS` by name."""
    if method == "gradcam":
        return grad_cam(model, x, target, stage)
    if method == "guided_gradcam":
        return guided_grad_cam(model, x, target, stage)
    if method == "integrated_gradients":
        return integrated_gradients(model, x, target, **options)
    if method == "occlusion":
        return occlusion(model, x, target, **options)
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def _ranks(a: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(a.ravel(), method="average")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation between two maps of the same shape; NaN if either map is constant."""
    if a.shape != b.shape:
        raise ValueError(f"maps differ in shape: {a.shape} vs {b.shape}")
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = float(np.sqrt((ra**2).sum() * (rb**2).sum()))
    return float((ra * rb).sum() / denominator) if denominator > 0 else float("nan")


def _top(a: np.ndarray, fraction: float) -> np.ndarray:
    """Boolean mask of the ``fraction`` highest-ranked pixels (ties broken by position, so exactly that many)."""
    flat = a.ravel()
    count = max(1, int(round(fraction * flat.size)))
    keep = np.zeros(flat.size, bool)
    keep[np.argsort(-flat, kind="stable")[:count]] = True
    return keep


def top_iou(a: np.ndarray, b: np.ndarray, fraction: float = 0.2) -> float:
    """Intersection over union of the top ``fraction`` pixels of two maps; NaN if either map is constant."""
    if a.shape != b.shape:
        raise ValueError(f"maps differ in shape: {a.shape} vs {b.shape}")
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    ta, tb = _top(a, fraction), _top(b, fraction)
    return float((ta & tb).sum() / (ta | tb).sum())


def agreement(mask_map: np.ndarray, attribution: np.ndarray, fraction: float = 0.2) -> dict[str, float]:
    """Spearman ρ and top-``fraction`` IoU between a mask map and an attribution's magnitude |A|.

    Magnitude, because a mask says how much a place is weighted, not in which direction it pushes the class.
    """
    magnitude = np.abs(attribution)
    return {"spearman": spearman(mask_map, magnitude), "top_iou": top_iou(mask_map, magnitude, fraction)}
