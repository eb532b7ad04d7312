"""Captum wrappers return input-resolution maps that depend on the class; agreement metrics behave."""

from __future__ import annotations

import numpy as np
import pytest
import torch

try:  # tests/ may or may not be a package
    from .imagefiles import single_thread  # noqa: F401 - single_thread is an autouse fixture
except ImportError:
    from imagefiles import single_thread  # noqa: F401

import resattn

from resattn import attribution


@pytest.fixture(scope="module")
def model():
    """A quarter-width Attention-56 (CIFAR topology), built once for the module, in eval mode."""
    torch.manual_seed(0)
    return resattn.create_model("attention56_cifar", width_mult=0.25).eval()


@pytest.fixture
def x():
    torch.manual_seed(1)
    return torch.randn(1, 3, 16, 16)  # small input keeps Occlusion and IG fast; the network takes any size


@pytest.mark.parametrize("method", attribution.METHODS)
def test_methods_give_finite_maps_at_input_resolution(model, x, method):
    options = {"steps": 4} if method == "integrated_gradients" else {"window": 8} if method == "occlusion" else {}
    amap = attribution.attribute(model, x, target=3, method=method, stage=2, **options)
    assert amap.shape == (16, 16) and np.isfinite(amap).all() and np.ptp(amap) > 0
    assert not model.training


def test_grad_cam_is_non_negative_and_class_dependent(model, x):
    a = attribution.grad_cam(model, x, 0, stage=3)
    b = attribution.grad_cam(model, x, 7, stage=3)
    assert (a >= 0).all() and not np.allclose(a, b)


def test_integrated_gradients_completeness(model, x):
    """IG's sum approximates f(x) − f(baseline) for the target logit."""
    amap = attribution.integrated_gradients(model, x, 2, steps=64)
    with torch.no_grad():
        delta = (model(x) - model(torch.zeros_like(x)))[0, 2].item()
    assert amap.sum() == pytest.approx(delta, rel=0.1, abs=0.05)


def test_unknown_method(model, x):
    with pytest.raises(ValueError, match="method"):
        attribution.attribute(model, x, 0, "lime")


def test_spearman_and_iou_on_known_maps():
    a = np.arange(100, dtype=float).reshape(10, 10)
    assert attribution.spearman(a, a * 3 + 1) == pytest.approx(1.0)
    assert attribution.spearman(a, -a) == pytest.approx(-1.0)
    assert attribution.top_iou(a, a) == pytest.approx(1.0)
    assert attribution.top_iou(a, -a) == pytest.approx(0.0)
    shifted = np.roll(a.ravel(), 10).reshape(10, 10)  # top 20 values share half their pixels
    assert attribution.top_iou(a, shifted) == pytest.approx(10 / 30)


def test_agreement_is_nan_for_constant_maps_and_uses_magnitude():
    a = np.arange(16, dtype=float).reshape(4, 4)
    assert np.isnan(attribution.spearman(a, np.ones((4, 4))))
    assert np.isnan(attribution.top_iou(a, np.ones((4, 4))))
    assert attribution.agreement(a, -a)["spearman"] == pytest.approx(1.0)  # |−a| ranks like a
    with pytest.raises(ValueError, match="shape"):
        attribution.spearman(a, np.ones((2, 2)))


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def test_hook_free_grad_cam_and_ig_match_captum(model, x):
    from captum.attr import IntegratedGradients, LayerGradCam

    ours = attribution.grad_cam(model, x, 5, stage=2)
    cam = LayerGradCam(model, model.stage(2)).attribute(x, target=5, relu_attributions=True)
    np.testing.assert_allclose(ours, resattn.maps.upsample(cam[0, 0].detach().numpy(), (16, 16)), rtol=1e-4, atol=1e-6)
    ig = attribution.integrated_gradients(model, x, 5, steps=8, chunk=3)
    theirs = IntegratedGradients(model).attribute(x, baselines=torch.zeros_like(x), target=5, n_steps=8)
    np.testing.assert_allclose(ig, theirs[0].sum(0).detach().numpy(), rtol=1e-4, atol=1e-6)


def test_shared_model_is_left_untouched_and_progress_is_reported(model, x):
    hooks = _hooks(model)
    seen = []
    for method in attribution.METHODS:
        options = {"steps": 4} if method == "integrated_gradients" else {"window": 8} if method == "occlusion" else {}
        attribution.attribute(model, x, 1, method, stage=1, progress=lambda d, t: seen.append((method, d, t)), **options)
    assert _hooks(model) == hooks
    assert all(p.grad is None for p in model.parameters())  # gradients w.r.t. inputs only
    assert ("integrated_gradients", 4, 4) in seen and {m for m, _, _ in seen} == set(attribution.METHODS)
    with pytest.raises(ValueError, match="eval mode"):
        attribution.grad_cam(model.train(), x, 0, stage=1)
    model.eval()


def test_guided_grad_cam_waits_only_when_every_private_copy_is_busy(model, x):
    """A hook-based attribution never blocks the hook-free methods; it waits (and says so) only when all
    MAX_COPIES private copies are in use."""
    import threading

    pool = attribution._pool(model)
    taken = [pool.acquire(model, None) for _ in range(attribution.MAX_COPIES)]
    assert len({id(m) for m in taken}) == attribution.MAX_COPIES and all(m is not model for m in taken)
    # while every copy is busy, Grad-CAM and IG on the shared model still run
    assert attribution.grad_cam(model, x, 0, stage=3).shape == (16, 16)
    waited = threading.Event()
    result = {}
    worker = threading.Thread(target=lambda: result.setdefault(
        "map", attribution.guided_grad_cam(model, x, 0, stage=3, on_wait=waited.set)))
    worker.start()
    assert waited.wait(10) and "map" not in result
    pool.release(taken.pop())
    worker.join(30)
    assert result["map"].shape == (16, 16)
    for m in taken:
        pool.release(m)


def test_guided_grad_cam_follows_weights_changed_in_place(x):
    """A reused private copy takes the shared model's current weights: after an in-place change (as the sanity
    check's randomisation cascade makes) Guided Grad-CAM equals that of a fresh copy, not the stale one."""
    import copy

    torch.manual_seed(2)
    net = resattn.create_model("attention56_cifar", width_mult=0.25).eval()
    before = attribution.guided_grad_cam(net, x, 3, stage=2)  # makes and returns one private copy
    with torch.no_grad():
        for p in net.stage(3).parameters():
            p.mul_(-1.5)  # in place: the same tensors, new values
    after = attribution.guided_grad_cam(net, x, 3, stage=2)  # reuses that copy
    fresh = attribution.guided_grad_cam(copy.deepcopy(net).eval(), x, 3, stage=2)
    assert not np.allclose(before, fresh)
    np.testing.assert_allclose(after, fresh, rtol=1e-5, atol=1e-7)
