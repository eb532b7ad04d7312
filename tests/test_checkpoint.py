"""Checkpoints: exact round trip, and one clear error for every kind of bad file, without unpickling."""

from __future__ import annotations

import json
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


def test_a_torch_save_archive_is_refused_before_any_unpickling(tmp_path, tiny_cifar, monkeypatch):
    """A benign torch.save file (what torch.load(weights_only=True) would accept) is still refused, and no
    unpickling code is even reached: loading never unpickles."""
    path = tmp_path / "weights.safetensors"
    torch.save(tiny_cifar.state_dict(), path)
    calls: list[str] = []

    def forbidden(name):
        def spy(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} was called")
        return spy

    monkeypatch.setattr(torch, "load", forbidden("torch.load"))
    monkeypatch.setattr(pickle, "load", forbidden("pickle.load"))
    monkeypatch.setattr(pickle, "loads", forbidden("pickle.loads"))
    monkeypatch.setattr(pickle, "Unpickler", forbidden("pickle.Unpickler"))
    import torch._weights_only_unpickler as wou
    monkeypatch.setattr(wou, "Unpickler", forbidden("weights_only Unpickler"))
    for load in (resattn.load_checkpoint, resattn.read_meta):
        with pytest.raises(CheckpointError, match="pickle"):
            load(path)
    assert calls == []


def test_checkpoints_record_the_architecture_revision(tmp_path, tiny_cifar):
    path = tmp_path / "new.safetensors"
    resattn.save_checkpoint(path, tiny_cifar, META)
    assert resattn.read_meta(path)["arch_revision"] == resattn.networks.ARCH_REVISION == 2
    model, _ = resattn.load_checkpoint(path)
    assert model.stage1.module1.mask.pool.padding == 0 and model.stage1.module1.mask.pool.ceil_mode


def _rewrite_meta(source, target, change):
    from safetensors.torch import load_file, save_file
    meta = resattn.read_meta(source)
    change(meta)
    save_file(load_file(str(source)), str(target), metadata={"resattn": json.dumps(meta)})


def test_a_revision_1_checkpoint_is_rebuilt_with_the_pooling_it_was_trained_with(tmp_path):
    """Before revision 2 every max-pool was MaxPool2d(3, 2, padding=1); such a checkpoint must compute what it
    was trained to compute, not the official pooling."""
    torch.manual_seed(0)
    legacy = resattn.create_model("attention56_imagenet", width_mult=0.0625, num_classes=5, pooling="pad1").eval()
    for m in legacy.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    saved = tmp_path / "saved.safetensors"
    resattn.save_checkpoint(saved, legacy, META)
    old = tmp_path / "old.safetensors"

    def as_revision_1(meta):
        del meta["arch_revision"]
        meta["overrides"].pop("pooling")

    _rewrite_meta(saved, old, as_revision_1)
    model, meta = resattn.load_checkpoint(old)
    assert model.stem.pool.padding == 1 and model.stage1.module1.mask.pool.padding == 1
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), legacy(x))
        # the same weights under the official pooling compute something else: the rebuild matters
        official = resattn.create_model("attention56_imagenet", width_mult=0.0625, num_classes=5).eval()
        official.load_state_dict(legacy.state_dict())
        assert not torch.allclose(official(x), legacy(x), rtol=1e-3)


def test_a_newer_revision_is_refused_with_a_reason(tmp_path, tiny_cifar):
    saved = tmp_path / "saved.safetensors"
    resattn.save_checkpoint(saved, tiny_cifar, META)
    future = tmp_path / "future.safetensors"
    _rewrite_meta(saved, future, lambda meta: meta.update(arch_revision=99))
    with pytest.raises(CheckpointError, match="revision 99.*Upgrade resattn"):
        resattn.load_checkpoint(future)
    bogus = tmp_path / "bogus.safetensors"
    _rewrite_meta(saved, bogus, lambda meta: meta.update(arch_revision="two"))
    with pytest.raises(CheckpointError, match="invalid architecture revision"):
        resattn.load_checkpoint(bogus)


def test_half_precision_storage_loads_as_float32(tmp_path, tiny_cifar):
    full, half = tmp_path / "full.safetensors", tmp_path / "half.safetensors"
    resattn.save_checkpoint(full, tiny_cifar, META)
    resattn.save_checkpoint(half, tiny_cifar, META, half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    model, meta = resattn.load_checkpoint(half)
    assert meta["storage"] == "float16" and all(p.dtype == torch.float32 for p in model.parameters())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), tiny_cifar(x), rtol=2e-2, atol=2e-2)


def test_metadata_that_describes_a_larger_network_than_the_file_is_refused_before_it_is_built(tmp_path):
    """Issue 22: ``width_mult: 500`` in the metadata of a small file exhausted memory on load; the network the
    metadata names is now built without memory (meta device) and compared with the file's own tensors first."""
    model = resattn.create_model("attention56_cifar", width_mult=0.125)
    model.resattn_spec["overrides"]["width_mult"] = 500  # the file's weights stay an eighth-width network's
    path = tmp_path / "liar.safetensors"
    resattn.save_checkpoint(path, model, {"classes": [str(i) for i in range(10)], "input_size": 32})
    with pytest.raises(CheckpointError, match=r"describes a network of [\d,]+ values, the file holds"):
        resattn.load_checkpoint(path)
    model.resattn_spec["overrides"]["width_mult"] = 0.125
    resattn.save_checkpoint(path, model, {"classes": [str(i) for i in range(10)], "input_size": 32})
    assert resattn.load_checkpoint(path)[1]["overrides"]["width_mult"] == 0.125  # the honest file loads
