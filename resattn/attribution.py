"""Attributions set beside the soft masks, and how far the two agree.

Every function takes a model, a preprocessed 1×3×H×W input and a target class and returns one H×W NumPy map
at the input's resolution. The explorer shares one model between browser sessions, so nothing here may change
the shared model while another thread uses it:

* Grad-CAM and Integrated Gradients are computed **hook-free**: the stage output comes from the network's
  stage recorder (a context variable, as in :func:`resattn.inspect`) and gradients from ``torch.autograd.grad``
  with respect to the input or that output only, so parameters never accumulate ``.grad``. They run on the shared
  model concurrently.
* Occlusion only runs forward passes (Captum's ``Occlusion``, which attaches no hooks).
* Guided Grad-CAM needs Guided backprop, which replaces the ReLU gradients with hooks: it runs on a private copy
  of the model taken from a small per-model pool (:data:`MAX_COPIES` copies; a call waits only when that many
  run at once, and says so through ``on_wait``).

The shared model must be in eval mode (the explorer's models always are); each function checks it.
``progress(done, total)`` is called as the work advances, so a page can show steps done.

Agreement is measured with Spearman's rank correlation over all pixels and the IoU of the top-20% pixels. Both
say whether two maps *rank* the same places highly; neither says whether either map is right.
"""

from __future__ import annotations

import copy
import threading
import warnings
import weakref
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import _STAGE_RECORDER
from .maps import upsample

__all__ = [
    "Method",
    "METHODS",
    "METHOD_NAMES",
    "MAX_COPIES",
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
#: Private model copies per shared model for the hook-based method (Guided Grad-CAM).
MAX_COPIES = 4

Progress = Callable[[int, int], None]


def _none(done: int, total: int) -> None:  # noqa: ARG001 - the default progress callback
    return None


class _CopyPool:
    """Deep copies of one shared model, handed out one per call and returned afterwards. A reused copy first takes
    the shared model's current weights (a few milliseconds), so a model changed in place since the copy was made
    (the sanity check's randomisation cascade re-initialises one copy block by block) is never explained with
    stale weights."""

    def __init__(self) -> None:
        self.free: list[nn.Module] = []
        self.made = 0
        self.cond = threading.Condition()

    def acquire(self, model: nn.Module, on_wait: Callable[[], None] | None) -> nn.Module:
        with self.cond:
            if not self.free and self.made >= MAX_COPIES:
                if on_wait is not None:
                    on_wait()
                self.cond.wait_for(lambda: bool(self.free))
            private = self.free.pop() if self.free else None
            if private is None:
                self.made += 1
        if private is None:
            return copy.deepcopy(model).eval()
        private.load_state_dict(model.state_dict())
        return private

    def release(self, private: nn.Module) -> None:
        with self.cond:
            self.free.append(private)
            self.cond.notify()


_POOLS: "weakref.WeakKeyDictionary[nn.Module, _CopyPool]" = weakref.WeakKeyDictionary()
_POOLS_LOCK = threading.Lock()


def _pool(model: nn.Module) -> _CopyPool:
    with _POOLS_LOCK:
        return _POOLS.setdefault(model, _CopyPool())


def _check(model: nn.Module, stage: int | None = None) -> None:
    if model.training:
        raise ValueError("attributions need the model in eval mode (call model.eval()); batch-norm statistics "
                         "of a shared model must not change")
    if stage is not None and not hasattr(model, "stage"):
        raise TypeError("the model has no .stage(k); Grad-CAM needs a network from resattn.create_model")
    if stage is not None and stage not in (1, 2, 3):
        raise ValueError(f"stage must be 1, 2 or 3, got {stage}")


def _numpy(x: Tensor) -> np.ndarray:
    return x.detach().to("cpu", torch.float32).numpy()


def _forward_with_stage(model: nn.Module, x: Tensor, stage: int) -> tuple[Tensor, Tensor]:
    """Logits and the output of ``stage``, with the graph kept, without hooks."""
    outputs: dict[int, Tensor] = {}
    token = _STAGE_RECORDER.set(lambda number, out: outputs.__setitem__(number, out))
    try:
        with torch.enable_grad():
            logits = model(x)
    finally:
        _STAGE_RECORDER.reset(token)
    return logits, outputs[stage]


def _grad_cam_map(model: nn.Module, x: Tensor, target: int, stage: int) -> Tensor:
    """ReLU(Σ_k α_k A_k) at the stage's resolution, α_k the spatial mean of ∂y_target/∂A_k (N×1×h×w)."""
    logits, activation = _forward_with_stage(model, x, stage)
    (grads,) = torch.autograd.grad(logits[:, int(target)].sum(), activation)
    weights = grads.mean(dim=(-2, -1), keepdim=True)
    return F.relu((weights * activation).sum(dim=1, keepdim=True)).detach()


def grad_cam(model: nn.Module, x: Tensor, target: int, stage: int, progress: Progress = _none) -> np.ndarray:
    """Grad-CAM (Selvaraju et al. 2017) at the output of attention stage ``stage``, ReLU applied, upsampled
    bilinearly to the input's resolution. Hook-free; the same map as Captum's ``LayerGradCam`` on ``model.stage(k)``."""
    _check(model, stage)
    cam = _grad_cam_map(model, x, target, stage)
    progress(1, 1)
    return upsample(_numpy(cam[0, 0]), tuple(x.shape[-2:]))


def guided_grad_cam(model: nn.Module, x: Tensor, target: int, stage: int, progress: Progress = _none,
                    on_wait: Callable[[], None] | None = None) -> np.ndarray:
    """Guided Grad-CAM: Guided backprop times the upsampled Grad-CAM at ``stage``, summed over colour channels.
    Guided backprop hooks the ReLUs, so it runs on a private copy of the model."""
    from captum.attr import GuidedGradCam

    _check(model, stage)
    pool = _pool(model)
    private = pool.acquire(model, on_wait)
    try:
        with warnings.catch_warnings():  # Captum announces the ReLU hooks it adds (to the private copy)
            warnings.simplefilter("ignore", UserWarning)
            out = GuidedGradCam(private, private.stage(stage)).attribute(
                x.detach().clone().requires_grad_(True), target=int(target), interpolate_mode="bilinear")
    finally:
        pool.release(private)
    progress(1, 1)
    return _numpy(out[0].sum(dim=0))


def integrated_gradients(model: nn.Module, x: Tensor, target: int, steps: int = 16, progress: Progress = _none,
                         chunk: int = 8) -> np.ndarray:
    """Integrated Gradients (Sundararajan et al. 2017) from a zero baseline (the dataset mean after
    normalisation) in ``steps`` steps, summed over colour channels.

    The path integral uses the Gauss–Legendre points and weights Captum uses by default, computed ``chunk``
    points per pass with ``torch.autograd.grad`` (hook-free; ``progress`` reports points done).
    """
    _check(model)
    steps = int(steps)
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    alphas = torch.tensor((nodes + 1) / 2, dtype=x.dtype)
    scales = torch.tensor(weights / 2, dtype=x.dtype)
    baseline = torch.zeros_like(x)
    total = torch.zeros_like(x)
    for first in range(0, steps, chunk):
        a = alphas[first : first + chunk].view(-1, 1, 1, 1).to(x.device)
        points = (baseline + a * (x - baseline)).requires_grad_(True)
        with torch.enable_grad():
            logits = model(points)
            (grads,) = torch.autograd.grad(logits[:, int(target)].sum(), points)
        total += (grads * scales[first : first + chunk].view(-1, 1, 1, 1).to(x.device)).sum(dim=0, keepdim=True)
        progress(min(first + chunk, steps), steps)
    return _numpy(((x - baseline) * total)[0].sum(dim=0))


def occlusion(model: nn.Module, x: Tensor, target: int, window: int | None = None, progress: Progress = _none) -> np.ndarray:
    """Occlusion: the drop in the target logit when a square of zeros (the dataset mean after normalisation)
    slides over the input. Default window: a quarter of the shorter side, stride half the window (7×7 positions,
    49 forward passes, whatever the input size). Forward passes only (Captum's ``Occlusion`` adds no hooks)."""
    from captum.attr import Occlusion

    _check(model)
    side = min(x.shape[-2:])
    window = int(window or max(2, side // 4))
    stride = max(1, window // 2)
    with torch.no_grad():
        out = Occlusion(model).attribute(
            x, sliding_window_shapes=(x.shape[1], window, window), strides=(x.shape[1], stride, stride),
            target=int(target), baselines=0.0, perturbations_per_eval=16)
    progress(1, 1)
    return _numpy(out[0].sum(dim=0))


def attribute(model: nn.Module, x: Tensor, target: int, method: Method, stage: int = 1,
              progress: Progress = _none, on_wait: Callable[[], None] | None = None, **options: int) -> np.ndarray:
    """Dispatch to one of :data:`METHODS` by name."""
    if method == "gradcam":
        return grad_cam(model, x, target, stage, progress)
    if method == "guided_gradcam":
        return guided_grad_cam(model, x, target, stage, progress, on_wait)
    if method == "integrated_gradients":
        return integrated_gradients(model, x, target, progress=progress, **options)
    if method == "occlusion":
        return occlusion(model, x, target, progress=progress, **options)
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
