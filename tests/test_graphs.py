"""resattn.graphs: the captured training step does the eager loop's arithmetic (fused SGD with a device learning
rate); on CUDA, its replays and the captured evaluation forward match the eager model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from resattn.graphs import GraphForward, GraphTrainStep
from resattn.registry import create_model

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")


def _model_and_optimizer(seed: int = 0, device: str = "cpu", attention: bool = False) -> tuple[nn.Module, torch.optim.SGD]:
    torch.manual_seed(seed)
    if attention:  # what --cuda-graphs captures
        model = create_model("attention56_cifar", width_mult=0.125, num_classes=3).to(device)
    else:  # smooth in its weights: no max-pooling whose winner a rounding difference can flip, so no chaos
        model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                              nn.Linear(8, 3)).to(device)
    decay = [p for p in model.parameters() if p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.dim() == 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}],
                          lr=0.1, momentum=0.9, nesterov=True)
    return model, opt


def _batches(n: int, device: str = "cpu") -> list[tuple[torch.Tensor, torch.Tensor, float]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 3, 16, 16, generator=g).to(device), torch.randint(0, 3, (8,), generator=g).to(device), lr)
            for lr in [0.05, 0.2, 0.1, 0.01, 0.3, 0.02][:n]]


def _eager(model: nn.Module, opt: torch.optim.SGD, batches, bf16: bool = False) -> list[float]:
    losses = []
    for x, y, lr in batches:
        for group in opt.param_groups:
            group["lr"] = lr
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            loss = nn.functional.cross_entropy(model(x).float(), y, label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def test_the_step_is_the_eager_loops_sgd_with_a_device_learning_rate():
    batches = _batches(6)
    model_a, opt_a = _model_and_optimizer()
    losses_a = _eager(model_a, opt_a, batches)
    model_b, opt_b = _model_and_optimizer()
    step = GraphTrainStep(model_b, opt_b, label_smoothing=0.1, bf16=False, warmup=100)  # on a CPU: never captured
    losses_b = [float(step(x, y, lr)[0].detach()) for x, y, lr in batches]
    assert losses_b == pytest.approx(losses_a, rel=1e-5)  # fused and foreach SGD round in different orders
    assert all(g["lr"] is step.lr for g in opt_b.param_groups) and float(step.lr) == pytest.approx(0.02)
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)
    # the learning rate really reaches the update: a different schedule gives different weights
    model_c, opt_c = _model_and_optimizer()
    step_c = GraphTrainStep(model_c, opt_c, label_smoothing=0.1, bf16=False, warmup=100)
    for x, y, lr in batches:
        step_c(x, y, lr * 2)
    assert not torch.allclose(model_a[-1].weight, model_c[-1].weight, atol=1e-3)


def test_only_sgd_is_supported():
    model = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="SGD"):
        GraphTrainStep(model, torch.optim.Adam(model.parameters()), 0.0, False)


@cuda
def test_captured_steps_follow_the_eager_steps_on_cuda():
    batches = _batches(4, "cuda")  # two eager warm-up steps, the capture, one more replay
    model_a, opt_a = _model_and_optimizer(device="cuda", attention=True)
    losses_a = _eager(model_a, opt_a, batches)
    model_b, opt_b = _model_and_optimizer(device="cuda", attention=True)
    step = GraphTrainStep(model_b, opt_b, label_smoothing=0.1, bf16=False, warmup=2)
    losses_b = [float(step(x, y, lr)[0].detach()) for x, y, lr in batches]
    assert step.graph is not None and not step.failed
    assert losses_b == pytest.approx(losses_a, rel=1e-3)
    torch.testing.assert_close(model_b.fc.weight, model_a.fc.weight, rtol=1e-3, atol=1e-3)


@cuda
def test_captured_forward_matches_the_model_and_pads_a_short_batch():
    model, _ = _model_and_optimizer(device="cuda", attention=True)
    model.eval()
    forward = GraphForward(model, batch_size=8, bf16=False)
    x = torch.randn(5, 3, 16, 16, device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(forward(x), model(x), rtol=1e-4, atol=1e-4)
        with pytest.raises(ValueError, match="larger"):
            forward(torch.randn(9, 3, 16, 16, device="cuda"))
