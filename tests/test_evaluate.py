"""python -m resattn.evaluate --compare: two checkpoints on the same images, compared per image (paired gap,
its standard error, McNemar's exact test), checked against direct computations."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.stats import binomtest

import resattn
from resattn.data import DataError
from resattn.evaluate import compare_checkpoints, evaluate_checkpoint, main, paired_comparison

from .test_data import make_tree, zip_tree

CLASSES = ["cat", "dog", "frog"]


def test_paired_comparison_against_a_direct_computation():
    rng = np.random.default_rng(0)
    a, b = rng.random(500) < 0.8, rng.random(500) < 0.7
    got = paired_comparison(a, b)
    assert got["both"] + got["only_a"] + got["only_b"] + got["neither"] == 500
    assert got["only_a"] == int(np.sum(a & ~b)) and got["only_b"] == int(np.sum(~a & b))
    assert got["gap_points"] == pytest.approx(100 * (a.mean() - b.mean()))
    d = a.astype(float) - b.astype(float)  # per-image difference: its mean is the gap, its spread the paired SE
    assert got["gap_se_points"] == pytest.approx(100 * d.std() / np.sqrt(len(d)))
    assert got["mcnemar_p"] == pytest.approx(binomtest(got["only_a"], got["only_a"] + got["only_b"]).pvalue)
    assert got["mcnemar_p"] < 0.05  # 80% against 70% on 500 images is beyond test-set noise
    same = paired_comparison(a, a)
    assert [same[k] for k in ("only_a", "only_b", "gap_points", "gap_se_points", "mcnemar_p")] == [0, 0, 0, 0, 1]
    with pytest.raises(ValueError):
        paired_comparison(a, b[:10])


@pytest.fixture(scope="module")
def data_and_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    data = zip_tree(make_tree(root / "tree", classes=tuple(CLASSES), per_class=(1, 6), size=16), root / "d.zip")
    paths = []
    for seed, classes in ((0, CLASSES), (1, CLASSES), (2, ["cat", "dog", "newt"])):
        torch.manual_seed(seed)
        model = resattn.create_model("attention56_cifar", width_mult=0.125, num_classes=3)
        model.train()
        with torch.no_grad():
            model(torch.randn(8, 3, 16, 16) * (1 + seed))
        meta = {"classes": classes, "input_size": 16, "mean": [0.5] * 3, "std": [0.25] * 3, "dataset": "d",
                "metrics": {}, "recipe": "none"}
        paths.append(root / f"m{seed}.safetensors")
        resattn.save_checkpoint(paths[-1], model.eval(), meta)
    return str(data), [str(p) for p in paths]


def test_two_checkpoints_on_the_same_images(data_and_models, capsys):
    data, (first, second, _) = data_and_models
    result = compare_checkpoints(first, second, data)
    alone = [evaluate_checkpoint(p, data, keep_predictions=True) for p in (first, second)]
    assert result["a"]["top1"] == alone[0]["top1"] and result["b"]["top1"] == alone[1]["top1"]
    right = [np.array(r["predictions"]) == np.array(r["labels"]) for r in alone]
    assert result["paired"] == paired_comparison(*right) and result["paired"]["images"] == 18
    assert result["paired"]["gap_points"] == pytest.approx(100 * (alone[0]["top1"] - alone[1]["top1"]))
    # the command line prints the same as JSON
    assert main(["--checkpoint", first, "--compare", second, "--data", data]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["paired"] == result["paired"] and printed["a"]["checkpoint"] == "m0.safetensors"
    assert "confusion" not in printed["a"] and "predictions" not in printed["b"]


def test_a_checkpoint_with_other_classes_is_refused(data_and_models):
    data, (first, _, other_classes) = data_and_models
    with pytest.raises(DataError, match="trained on"):
        compare_checkpoints(first, other_classes, data)


def test_limit_spreads_over_the_classes_and_reports_only_classes_it_saw(data_and_models, capsys):
    data, (first, second, _) = data_and_models
    full = evaluate_checkpoint(first, data, keep_predictions=True)
    assert full["labels"] == [0] * 6 + [1] * 6 + [2] * 6  # the split is sorted by class
    three = evaluate_checkpoint(first, data, limit=3, keep_predictions=True)
    assert three["labels"] == [0, 1, 2] and three["images"] == 3  # one per class, not the first three cats
    assert three["predictions"] == [full["predictions"][i] for i in (0, 6, 12)]
    assert set(three["per_class"]) == set(CLASSES)
    for name, position in zip(CLASSES, (0, 6, 12)):
        assert three["per_class"][name] == float(full["predictions"][position] == full["labels"][position])
    two = evaluate_checkpoint(first, data, limit=2)
    assert set(two["per_class"]) == {"cat", "dog"}  # frog has no image among the two: left out, not 0.0
    assert main(["--checkpoint", first, "--compare", second, "--data", data, "--limit", "3"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["paired"]["images"] == 3 and set(printed["a"]["per_class"]) == set(CLASSES)
