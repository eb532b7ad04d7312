"""``--cpu-bf16``: bf16 autocast for training on a CPU, off unless asked, with evaluation kept in float32 and every
session's precision recorded in the checkpoint's machine history."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import resattn
import resattn.train.loop
from resattn.train import TrainConfig, build_parser, environment, train
from resattn.train.environment import Runtime, trains_in_bf16

from .test_train import TINY, dataset  # noqa: F401 - the tiny dataset fixture


@pytest.fixture
def logits_dtypes(monkeypatch):
    """The dtype of the classifier's output at every call, with whether the model was training."""
    seen: list[tuple[bool, torch.dtype]] = []
    real = resattn.train.loop.prepare

    def prepare(config):
        run = real(config)
        run.model.fc.register_forward_hook(lambda module, args, out: seen.append((module.training, out.dtype)))
        return run

    monkeypatch.setattr(resattn.train.loop, "prepare", prepare)
    return seen


def _config(tmp_path, data, **extra) -> TrainConfig:
    return TrainConfig(**TINY, data=str(data), epochs=1, out=str(tmp_path / "run"), state_dir=str(tmp_path / "state"),
                       **extra)


def test_float32_is_the_default_on_the_cpu(tmp_path, dataset, logits_dtypes):
    train(_config(tmp_path, dataset))
    assert {dtype for _, dtype in logits_dtypes} == {torch.float32}
    _, meta = resattn.load_checkpoint(tmp_path / "run" / "model.safetensors")
    assert "bf16" not in meta["hardware"]


def test_cpu_bf16_on_trains_in_bf16_evaluates_in_float32_and_says_so(tmp_path, dataset, logits_dtypes):
    train(_config(tmp_path, dataset, cpu_bf16="on"))
    assert {dtype for training, dtype in logits_dtypes if training} == {torch.bfloat16}
    assert {dtype for training, dtype in logits_dtypes if not training} == {torch.float32}  # the test split
    model, meta = resattn.load_checkpoint(tmp_path / "run" / "model.safetensors")
    assert meta["hardware"].endswith("; bf16 autocast")
    assert all(v.dtype == torch.float32 for v in model.state_dict().values() if v.is_floating_point())


def test_a_float32_run_resumed_in_bf16_records_where_the_precision_changed(tmp_path, dataset):
    assert train(_config(tmp_path, dataset, stop_after=4)) == {"stopped_at": 4}
    result = train(_config(tmp_path, dataset, cpu_bf16="on", resume=True))
    _, meta = resattn.load_checkpoint(tmp_path / "run" / "model.safetensors")
    first, second = meta["hardware_log"]
    assert first["from_iteration"] == 0 and "bf16" not in first["hardware"]
    assert second == {"hardware": first["hardware"] + "; bf16 autocast", "from_iteration": 4}
    assert meta["metrics"]["test_top1"] == result["test_top1"]
    # the two bf16 iterations really ran differently from float32 ones
    train(dataclasses.replace(_config(tmp_path, dataset), out=str(tmp_path / "fp32"), state_dir=str(tmp_path / "s32")))
    mixed = resattn.load_checkpoint(tmp_path / "run" / "model.safetensors")[0].state_dict()
    fp32 = resattn.load_checkpoint(tmp_path / "fp32" / "model.safetensors")[0].state_dict()
    assert not torch.equal(mixed["fc.weight"], fp32["fc.weight"])
    torch.testing.assert_close(mixed["fc.weight"], fp32["fc.weight"], rtol=0, atol=0.05)  # but close


@pytest.mark.parametrize("native", [True, False])
def test_auto_follows_the_processor(native, monkeypatch):
    monkeypatch.setattr(environment, "native_bf16", lambda: native)
    cpu = Runtime(torch.device("cpu"))
    assert trains_in_bf16(TrainConfig(cpu_bf16="auto").resolved(), cpu) is native
    assert trains_in_bf16(TrainConfig(cpu_bf16="on").resolved(), cpu) is True
    assert trains_in_bf16(TrainConfig().resolved(), cpu) is False
    # CUDA keeps its own switch, --no-bf16
    cuda = Runtime(torch.device("cuda", 0))
    assert trains_in_bf16(TrainConfig(cpu_bf16="off").resolved(), cuda) is True
    assert trains_in_bf16(TrainConfig(bf16=False, cpu_bf16="on").resolved(), cuda) is False


def test_native_bf16_reads_the_processors_instructions(monkeypatch):
    for avx512_bf16, amx, expected in [(False, False, False), (True, False, True), (False, True, True)]:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v, raising=False)
        assert environment.native_bf16() is expected


def test_an_unknown_setting_is_refused(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--cpu-bf16", "fast"])
    assert "--cpu-bf16" in capsys.readouterr().err
    assert build_parser().parse_args(["--cpu-bf16", "auto"]).cpu_bf16 == "auto"
    with pytest.raises(ValueError, match="cpu_bf16 must be one of"):
        TrainConfig(cpu_bf16="yes").resolved()
