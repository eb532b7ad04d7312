"""resattn.inspect: one pass, every module's M / T / H, no hooks left, thread-safe."""

from __future__ import annotations

import threading

import pytest
import torch

import resattn


def _hook_count(model: torch.nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()
    )


def test_one_record_per_module_with_matching_shapes():
    model = resattn.create_model("attention92_cifar", width_mult=0.25)
    x = torch.randn(2, 3, 40, 36)
    trace = resattn.inspect(model, x)
    assert len(trace.modules) == len(model.attention_modules()) == 6
    assert [(r.stage, r.index) for r in trace.modules] == [(1, 1), (1, 2), (2, 1), (2, 2), (3, 1), (3, 2)]
    assert [r.name for r in trace.modules][:2] == ["stage1.module1", "stage1.module2"]
    for record in trace.modules:
        assert record.mask.shape == record.mask_logits.shape == record.trunk.shape == record.output.shape
        assert record.mask.shape[0] == 2
        assert record.mask_path[0][0] == "input" and record.mask_path[-1][1].shape == record.mask.shape
        assert all(isinstance(label, str) for label, _ in record.mask_path)
        assert not record.mask.requires_grad
    assert trace.module(1, 1).mask.shape[-2:] == (40, 36)
    assert trace.module(3, 2).mask.shape[-2:] == (10, 9)
    # the hourglass of stage 1 (two pools) shows both levels, the skip and the final resize
    labels = [label for label, _ in trace.module(1, 1).mask_path]
    assert labels == ["input", "down 1 (pool 1)", "down 2 (pool 2)", "up 1 (+ skip 1)", "upsampled to input",
                      "1×1 head (mask logits)"]
    with pytest.raises(KeyError):
        trace.module(4, 1)


def test_same_logits_as_forward_no_hooks_and_state_restored(tiny_cifar):
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = tiny_cifar(x)
    tiny_cifar.train()
    hooks = _hook_count(tiny_cifar)
    with torch.enable_grad():
        trace = resattn.inspect(tiny_cifar, x)
        assert torch.is_grad_enabled()
    assert tiny_cifar.training  # restored
    assert _hook_count(tiny_cifar) == hooks
    torch.testing.assert_close(trace.logits, expected)
    assert not trace.logits.requires_grad


def test_grad_mode_keeps_the_graph(tiny_cifar):
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        trace = resattn.inspect(tiny_cifar, x, grad=True)
        assert not torch.is_grad_enabled()
    assert trace.logits.requires_grad
    trace.logits[0, 0].backward()
    assert tiny_cifar.fc.weight.grad is not None


def test_concurrent_inspections_give_each_thread_its_own_results(tiny_cifar):
    tiny_cifar.train()  # the shared model starts in train mode: inspections must not disturb each other
    inputs = [torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(6)]
    tiny_cifar.eval()
    with torch.no_grad():
        expected = [(tiny_cifar(x), resattn.inspect(tiny_cifar, x).module(2, 1).mask) for x in inputs]
    tiny_cifar.train()
    results: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(3):
                trace = resattn.inspect(tiny_cifar, inputs[i])
                results[i] = (trace.logits, trace.module(2, 1).mask)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, (logits, mask) in enumerate(expected):
        torch.testing.assert_close(results[i][0], logits)
        torch.testing.assert_close(results[i][1], mask)
    assert tiny_cifar.training


@pytest.mark.parametrize("mode", ["zero", "one", "mean"])
def test_knockout_replaces_only_the_chosen_mask(tiny_cifar, mode):
    x = torch.randn(2, 3, 32, 32)
    plain = resattn.inspect(tiny_cifar, x)
    edited = resattn.knockout(tiny_cifar, x, stage=1, index=1, mode=mode)
    mask = edited.module(1, 1).mask
    if mode == "zero":
        assert torch.all(mask == 0)
    elif mode == "one":
        assert torch.all(mask == 1)
    else:
        torch.testing.assert_close(mask, plain.module(1, 1).mask.mean(dim=(-2, -1), keepdim=True).expand_as(mask))
    assert not torch.allclose(edited.logits, plain.logits)
    with pytest.raises(ValueError):
        resattn.knockout(tiny_cifar, x, stage=1, index=1, mode="half")  # type: ignore[arg-type]


def test_resnet_baseline_has_no_modules_but_stage_outputs():
    model = resattn.create_model("resnet164_cifar", width_mult=0.25).eval()
    x = torch.randn(1, 3, 32, 32)
    trace = resattn.inspect(model, x)
    assert trace.modules == [] and trace.logits.shape == (1, 10)
    # the paper's Fig. 4 quantity exists for the baseline too: each stage's output, as the stages compute it
    with torch.no_grad():
        s1 = model.stage1(model.stem(x))
        s2 = model.stage2(s1)
        s3 = model.stage3(s2)
    for recorded, expected in zip(trace.stage_outputs, (s1, s2, s3)):
        torch.testing.assert_close(recorded, expected)


def test_each_submodule_keeps_its_own_train_flag(tiny_cifar):
    """A part left in eval mode on purpose (a frozen trunk while fine-tuning) stays in eval mode after inspect."""
    tiny_cifar.train()
    tiny_cifar.stage1.eval()
    before = {name: m.training for name, m in tiny_cifar.named_modules()}
    resattn.inspect(tiny_cifar, torch.randn(1, 3, 32, 32))
    assert {name: m.training for name, m in tiny_cifar.named_modules()} == before
    assert not tiny_cifar.stage1.module1.training and tiny_cifar.stage2.module1.training


@pytest.mark.parametrize("mode", ["zero", "one", "mean"])
def test_knockout_record_is_consistent(tiny_cifar, mode):
    x = torch.randn(2, 3, 32, 32)
    plain = resattn.inspect(tiny_cifar, x).module(1, 1)
    record = resattn.knockout(tiny_cifar, x, stage=1, index=1, mode=mode).module(1, 1)
    module = tiny_cifar.stage1.module1
    assert record.knockout == mode and plain.knockout is None
    # the branch's own computation is recorded unchanged: logits and their activation correspond
    torch.testing.assert_close(record.mask_logits, plain.mask_logits)
    torch.testing.assert_close(record.computed_mask, module.activation(record.mask_logits))
    torch.testing.assert_close(record.computed_mask, plain.mask)
    # and the output is what the used mask gives
    torch.testing.assert_close(record.output, module.combine(record.mask, record.trunk))
    assert not torch.allclose(record.mask, record.computed_mask)
    torch.testing.assert_close(plain.computed_mask, plain.mask)
