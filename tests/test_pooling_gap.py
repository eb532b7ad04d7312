"""scripts/pooling_gap.py: one checkpoint's logits under the official pooling and under MaxPool2d(3, 2, padding=1)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import resattn

from .test_data import make_tree, zip_tree

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("pooling_gap", ROOT / "scripts" / "pooling_gap.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_the_gap_is_measured_between_the_two_poolings_on_the_same_images(tmp_path, capsys):
    data = zip_tree(make_tree(tmp_path / "tree", per_class=(1, 4), size=64), tmp_path / "d.zip")
    torch.manual_seed(0)
    model = resattn.create_model("attention56_imagenet", width_mult=0.0625, num_classes=3).train()
    with torch.no_grad():
        model(torch.randn(4, 3, 64, 64))
    meta = {"classes": ["cat", "dog", "frog"], "input_size": 64, "resize": 64, "mean": [0.5] * 3, "std": [0.25] * 3}
    resattn.save_checkpoint(tmp_path / "m.safetensors", model.eval(), meta)
    got = _script().pooling_gap(str(tmp_path / "m.safetensors"), str(data), limit=6)
    # the same weights, rebuilt with the ports' pooling, by hand
    twin = resattn.create_model("attention56_imagenet", width_mult=0.0625, num_classes=3, pooling="pad1").eval()
    twin.load_state_dict(model.state_dict())
    assert any(isinstance(m, nn.MaxPool2d) and m.padding == 1 for m in twin.modules())
    decoded, normalizer = resattn.evaluate.evaluation_data(meta, str(data))
    x = normalizer(decoded.images[torch.from_numpy(resattn.masks.spread_indices(12, 6))])
    with torch.inference_mode():
        a, b = model(x).double().numpy(), twin(x).double().numpy()
    relative = np.linalg.norm(b - a, axis=1) / np.linalg.norm(a, axis=1)
    assert got["images"] == 6 and got["relative_logit_change_mean"] == pytest.approx(relative.mean(), rel=1e-6)
    assert got["relative_logit_change_mean"] > 0  # the windows move, so the logits do
    assert got["top1_changed"] == pytest.approx(np.mean(a.argmax(1) != b.argmax(1)))
    assert _script().main(["--checkpoint", str(tmp_path / "m.safetensors"), "--data", str(data), "--limit", "3"]) == 0
    assert '"images": 3' in capsys.readouterr().out
