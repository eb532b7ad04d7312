"""Checkpoints: exact round trip, and one clear error for every kind of bad file, without unpickling."""

from __future__ import annotations

import os
import pickle
import zipfile

import pytest
import torch

import resattn
from resattn import CheckpointError

META = {
    "classes": [str(i) for i in range(10)],
    "input_size": 32,
    "mean": [0.49, 0.48, 0.45],
    "std": [0.25, 0.24, 0.26],
    "dataset": "generated",
    "metrics": {"test_top1": 0.1},
    "recipe": "none",
}


def test_round_trip_gives_identical_logits(tmp_path, tiny_cifar):
    path = tmp_path / "m.safetensors"
    resattn.save_checkpoint(path, tiny_cifar, META)
    model, meta = resattn.load_checkpoint(path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), tiny_cifar(x))
    assert meta["model"] == "attention56_cifar" and meta["overrides"] == {"width_mult": 0.25}
    assert meta["version"] == resattn.__version__
    assert meta["classes"] == META["classes"]
    assert resattn.read_meta(path) == meta
    # the same file as bytes (an upload)
    model2, _ = resattn.load_checkpoint(path.read_bytes())
    with torch.no_grad():
        assert torch.equal(model2(x), tiny_cifar(x))


def test_overrides_are_rebuilt(tmp_path):
    model = resattn.create_model("attention56_cifar", width_mult=0.25, attention="channel", learning="nal", num_classes=3)
    resattn.save_checkpoint(tmp_path / "c.safetensors", model, META)
    loaded, _ = resattn.load_checkpoint(tmp_path / "c.safetensors")
    assert loaded.attention_modules()[0].activation.kind == "channel"
    assert loaded.attention_modules()[0].learning == "nal"
    assert loaded.fc.out_features == 3


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("kind", ["torch.save", "raw pickle"])
def test_pickle_payload_is_refused_without_running(tmp_path, kind):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.safetensors"
    if kind == "torch.save":
        torch.save({"state_dict": _Payload(str(marker))}, path)
        assert zipfile.is_zipfile(path)
    else:
        path.write_bytes(pickle.dumps(_Payload(str(marker))))
    for load in (resattn.load_checkpoint, resattn.read_meta):
        with pytest.raises(CheckpointError, match="pickle"):
            load(path)
        with pytest.raises(CheckpointError, match="pickle"):
            load(path.read_bytes())
    assert not marker.exists()


def test_bad_files_raise_one_clear_error(tmp_path, tiny_cifar):
    good = tmp_path / "good.safetensors"
    resattn.save_checkpoint(good, tiny_cifar, META)
    data = good.read_bytes()
    cases = {
        "empty": b"",
        "truncated header": data[:50],
        "truncated weights": data[: len(data) - 1000],
        "random bytes": os.urandom(4096),
        "text": b"hello, this is not a model\n" * 10,
        "corrupt header": data[:8] + b"\xff" * 40 + data[48:],
    }
    for label, blob in cases.items():
        path = tmp_path / f"{label}.safetensors"
        path.write_bytes(blob)
        with pytest.raises(CheckpointError):
            resattn.load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no such"):
        resattn.load_checkpoint(tmp_path / "missing.safetensors")


def test_foreign_safetensors_and_mismatched_weights(tmp_path, tiny_cifar):
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(3)}, plain)
    with pytest.raises(CheckpointError, match="not a resattn checkpoint"):
        resattn.load_checkpoint(plain)
    # weights of a quarter-width model under a full-width model's name
    state = {k: v.contiguous() for k, v in tiny_cifar.state_dict().items()}
    wrong = tmp_path / "wrong.safetensors"
    import json

    save_file(state, wrong, metadata={"resattn": json.dumps({"model": "attention56_cifar", "overrides": {}})})
    with pytest.raises(CheckpointError, match="do not match"):
        resattn.load_checkpoint(wrong)
    unknown = tmp_path / "unknown.safetensors"
    save_file(state, unknown, metadata={"resattn": json.dumps({"model": "attention999_cifar", "overrides": {}})})
    with pytest.raises(CheckpointError, match="does not know"):
        resattn.load_checkpoint(unknown)


def test_save_refuses_models_it_cannot_rebuild(tmp_path):
    with pytest.raises(CheckpointError):
        resattn.save_checkpoint(tmp_path / "x.safetensors", torch.nn.Linear(2, 2), META)
    with pytest.raises(CheckpointError, match="JSON"):
        resattn.save_checkpoint(tmp_path / "y.safetensors", resattn.create_model("attention56_cifar", width_mult=0.25), {"bad": object()})
    assert not (tmp_path / "y.safetensors").exists()
