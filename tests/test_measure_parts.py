"""scripts/measure_parts.py: the measures of one mask have the values worked out by hand, and the command measures
every stage of a real checkpoint over spread images of a dataset folder."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("measure_parts", ROOT / "scripts" / "measure_parts.py")
assert SPEC is not None and SPEC.loader is not None
measure_parts = importlib.util.module_from_spec(SPEC)
sys.modules["measure_parts"] = measure_parts  # its dataclasses look their module up there
SPEC.loader.exec_module(measure_parts)

CIFAR = ROOT / "checkpoints" / "attention56_cifar_mixed_arl.safetensors"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _two_regions() -> np.ndarray:
    """20 channels at level 0.45: ten rise by 0.3 over the left half, ten over the top-right quarter (16×16)."""
    left = np.zeros((16, 16))
    left[:, :8] = 1
    corner = np.zeros((16, 16))
    corner[:8, 8:] = 1
    return 0.45 + 0.3 * np.concatenate([np.repeat(left[None], 10, 0), np.repeat(corner[None], 10, 0)])


def test_one_masks_measures_are_the_hand_worked_values():
    m = measure_parts.ModuleMeasures("stage1.module1", (20, 16, 16))
    m.add(_two_regions(), "mixed", (2, 4))
    assert m.explained[2][0] == pytest.approx(1.0, abs=1e-3) and m.auto_k == [2]
    top = round(0.2 * 256)  # 51 positions hold the top 20%
    left, corner = top / 128, top / 64  # parts spread evenly over 128 and 64 positions
    energy = np.array([128, 64]) / 192  # ten channels each, the same rise: energy in proportion to the area
    assert m.parts_plain[0] == pytest.approx((left + corner) / 2, abs=0.01)
    assert m.parts_weighted[0] == pytest.approx(energy @ [left, corner], abs=0.01)
    assert m.mean_above_min[0] == pytest.approx(top / 192, abs=1e-9)  # the channel mean rises over both regions
    flat_mean = 0.45 + 0.15 * 192 / 256  # raw: the common level dilutes it towards 0.2
    assert m.mean_raw[0] == pytest.approx((top * 0.6) / (256 * flat_mean), abs=1e-9)
    summary = m.summary()
    assert summary["share_parts_more_concentrated"] == 1.0 and summary["flat"] == 0


def test_a_flat_mask_has_no_parts_and_is_left_out_of_their_concentration():
    m = measure_parts.ModuleMeasures("stage1.module1", (4, 8, 8))
    m.add(np.full((4, 8, 8), 0.45), "mixed", (2,))
    m.add(_two_regions()[:, 4:12, 4:12], "mixed", (2,))  # both regions cross this window
    summary = m.summary()
    assert summary["flat"] == 1 and m.auto_k[0] == 0 and np.isnan(m.parts_weighted[0])
    assert summary["parts_top20_energy_weighted"]["mean"] == pytest.approx(m.parts_weighted[1], abs=1e-4)


def _cifar_folder(root: Path, classes: list[str], per_class: int = 2) -> Path:
    rng = np.random.default_rng(0)
    for name in classes:
        (root / "test" / name).mkdir(parents=True)
        for i in range(per_class):
            y, x = np.mgrid[:32, :32]
            pixels = np.stack([x * 8, y * 8, rng.integers(0, 255, (32, 32))], axis=-1).astype(np.uint8)
            Image.fromarray(pixels).save(root / "test" / name / f"{i}.png")
    return root


def test_the_command_measures_every_stage_over_spread_images(tmp_path, capsys):
    data = _cifar_folder(tmp_path / "data", CLASSES)
    out = tmp_path / "parts.json"
    code = measure_parts.main(["--checkpoint", str(CIFAR), "--data", str(data), "--limit", "5", "--ks", "2", "8",
                               "--cache-dir", "", "--json", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["images"] == 5 and result["total_in_split"] == 20
    assert result["per_image"]["stage1.module1"]["index"] == [0, 4, 8, 12, 16]  # spread over the classes
    assert [s["module"] for s in result["summaries"]] == ["stage1.module1", "stage2.module1", "stage3.module1"]
    for s in result["summaries"]:
        assert s["images"] == 5
        assert s["explained_k2"]["mean"] < s["explained_k8"]["mean"] <= 1
        assert 2 <= s["auto_k"]["mean"] <= 8 and s["explained_auto"]["mean"] >= 0.75
        assert 0.2 <= s["channel_mean_top20_raw"]["mean"] < 1
    table = capsys.readouterr().out
    assert "| stage2.module1 | 128×16×16 |" in table and "explained, k=8" in table


def test_the_command_refuses_a_dataset_with_other_classes(tmp_path, capsys):
    data = _cifar_folder(tmp_path / "data", ["cat", "dog"], per_class=1)
    assert measure_parts.main(["--checkpoint", str(CIFAR), "--data", str(data), "--cache-dir", ""]) == 2
    assert "trained on" in capsys.readouterr().err
