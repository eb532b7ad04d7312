"""Masks over a dataset: shapes, per-class means and statistics against direct computations, determinism, CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import resattn
from resattn import maps
from resattn import masks as M
from resattn.data import load_split

from .test_data import make_tree, zip_tree

CLASSES = ["cat", "dog", "frog"]
META = {"classes": CLASSES, "input_size": 32, "mean": [0.4, 0.45, 0.5], "std": [0.25, 0.25, 0.25],
        "dataset": "generated", "metrics": {}, "recipe": "none"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A zip of 32×32 PNGs: train/ and test/ with three class folders (4 test images per class)."""
    root = tmp_path_factory.mktemp("maskdata")
    return zip_tree(make_tree(root / "tree", classes=tuple(CLASSES), per_class=(2, 4), size=32), root / "tiny.zip")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A quarter-width Attention-56 with three classes and non-trivial BN statistics, saved safely."""
    torch.manual_seed(0)
    model = resattn.create_model("attention56_cifar", width_mult=0.25, num_classes=3)
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 32, 32))
    path = tmp_path_factory.mktemp("maskckpt") / "tiny.safetensors"
    resattn.save_checkpoint(path, model.eval(), META)
    return path


@pytest.fixture(scope="module")
def collected(checkpoint, dataset):
    return M.collect_checkpoint_masks(checkpoint, str(dataset), batch_size=5)  # 12 images: batches of 5, 5, 2


def _direct(checkpoint, dataset):
    """Each test image alone through resattn.inspect: channel-mean masks, predictions and confidences."""
    model, meta = resattn.load_checkpoint(checkpoint)
    decoded = load_split(dataset, "test", 32, crop=32)
    x = resattn.preprocess.Preprocessing.from_meta(meta).normalize(decoded.images)
    per_module: dict[str, list[np.ndarray]] = {}
    logits, responses = [], []
    for i in range(len(x)):
        trace = resattn.inspect(model, x[i : i + 1])
        logits.append(trace.logits[0])
        responses.append([maps.mean_abs_response(s[0]) for s in trace.stage_outputs])
        for record in trace.modules:
            per_module.setdefault(record.name, []).append(record.mask[0].mean(0).numpy())
    probs = torch.softmax(torch.stack(logits), 1)
    return {k: np.stack(v) for k, v in per_module.items()}, probs, decoded.labels.numpy(), np.array(responses)


def test_shapes_and_per_image_values(collected):
    n = 12
    assert collected.modules == ["stage1.module1", "stage2.module1", "stage3.module1"]
    assert [collected.masks[m].shape for m in collected.modules] == [(n, 32, 32), (n, 16, 16), (n, 8, 8)]
    assert all(collected.masks[m].dtype == np.float32 for m in collected.modules)
    assert [collected.class_means[m].shape for m in collected.modules] == [(3, 32, 32), (3, 16, 16), (3, 8, 8)]
    assert collected.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert collected.class_counts.tolist() == [4, 4, 4]
    assert collected.index.tolist() == list(range(n))
    assert collected.predictions.shape == collected.confidence.shape == (n,)
    assert ((collected.confidence > 1 / 3 - 1e-6) & (collected.confidence <= 1)).all()
    for m in collected.modules:  # sigmoid masks: every channel mean lies in (0, 1)
        assert ((collected.masks[m] > 0) & (collected.masks[m] < 1)).all()
        assert set(collected.image_stats[m]) == set(M.STATISTICS)
        assert all(v.shape == (n,) for v in collected.image_stats[m].values())
    assert collected.meta["reduction"] == "channel mean" and collected.meta["attention"] == "mixed"


def test_batched_pass_equals_one_image_at_a_time(collected, checkpoint, dataset):
    masks, probs, labels, responses = _direct(checkpoint, dataset)
    assert np.array_equal(collected.labels, labels)
    # Fig. 4's quantity per image and stage: what the Compare page computes for one image
    assert collected.stage_response.shape == (12, 3) and (collected.stage_response > 0).all()
    np.testing.assert_allclose(collected.stage_response, responses, rtol=1e-4)
    assert np.array_equal(collected.predictions, probs.argmax(1).numpy())
    np.testing.assert_allclose(collected.confidence, probs.max(1).values.numpy(), atol=1e-5)
    for name, direct in masks.items():
        np.testing.assert_allclose(collected.masks[name], direct, atol=1e-5)
        # per-class mean masks: the plain mean over each class's images
        for c in range(3):
            np.testing.assert_allclose(collected.class_means[name][c], direct[labels == c].mean(0), atol=1e-5)


def test_statistics_equal_a_direct_computation(collected):
    for name in collected.modules:
        maps = collected.masks[name].astype(np.float64)
        flat = maps.reshape(len(maps), -1)
        count = int(round(0.2 * flat.shape[1]))
        top = np.sort(np.abs(flat), axis=1)[:, ::-1][:, :count].sum(1) / np.abs(flat).sum(1)
        stats = collected.image_stats[name]
        np.testing.assert_allclose(stats["mean"], flat.mean(1), rtol=1e-12)
        np.testing.assert_allclose(stats["fraction_above_half"], (flat > 0.5).mean(1))
        np.testing.assert_allclose(stats["top20_share"], top, rtol=1e-12)
        h, w = maps.shape[1:]
        inner = np.zeros((h, w), bool)
        inner[h // 4:h - h // 4, w // 4:w - w // 4] = True
        expected = maps[:, inner].mean(1) - maps[:, ~inner].mean(1) if h >= 4 and w >= 4 else np.full(len(maps), np.nan)
        np.testing.assert_allclose(stats["centre_minus_border"], expected, rtol=1e-9, atol=1e-12)
        assert collected.module_stats[name]["mean"] == pytest.approx(maps.mean(), rel=1e-9)


def test_centre_minus_border_signs_and_small_maps():
    centre_high = np.zeros((1, 8, 8))
    centre_high[0, 2:6, 2:6] = 1.0  # exactly the central region: centre mean 1, border mean 0
    assert M.centre_minus_border(centre_high)[0] == pytest.approx(1.0)
    assert M.centre_minus_border(1 - centre_high)[0] == pytest.approx(-1.0)
    assert M.centre_minus_border(np.full((2, 8, 8), 0.4)) == pytest.approx([0.0, 0.0])
    odd = np.zeros((1, 5, 7))
    odd[0, 1:4, 1:6] = 2.0  # 5×7: middle rows 1..3, columns 1..5
    assert M.centre_minus_border(odd)[0] == pytest.approx(2.0)
    assert np.isnan(M.centre_minus_border(np.ones((1, 2, 2)))[0])  # too small to split


def test_concentration_limits_and_class_means_of_empty_classes():
    flat = np.full((1, 10, 10), 0.3)
    spike = np.zeros((1, 10, 10))
    spike[0, 2, 3] = 0.9
    assert M.concentration(flat)[0] == pytest.approx(0.2)
    assert M.concentration(spike)[0] == pytest.approx(1.0)
    means = M.class_means(np.ones((2, 4, 4), np.float32), np.array([0, 0]), 3)
    assert np.all(means[0] == 1) and np.isnan(means[1:]).all()


def test_limit_spreads_over_the_split():
    assert M.spread_indices(12, 3).tolist() == [0, 4, 8]
    assert M.spread_indices(5, None).tolist() == M.spread_indices(5, 9).tolist() == [0, 1, 2, 3, 4]


def test_limit_spreads_when_the_count_does_not_divide_the_split():
    """6 of 10 must reach the end of the split; an integer step (10 // 6 = 1) would take the first six."""
    assert M.spread_indices(10, 6).tolist() == [0, 1, 3, 5, 6, 8]
    # a class-sorted split (10 classes of 1,000): 300 images give every class its 30, 7 give 7 classes one each
    labels = np.repeat(np.arange(10), 1000)
    assert np.bincount(labels[M.spread_indices(10_000, 300)], minlength=10).tolist() == [30] * 10
    assert len(set(labels[M.spread_indices(10_000, 7)].tolist())) == 7
    # the limits, at their boundaries
    assert M.spread_indices(10, 10).tolist() == M.spread_indices(10, 11).tolist() == list(range(10))
    assert M.spread_indices(10, 9).tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8] and M.spread_indices(10, 1).tolist() == [0]
    for limit in (0, -1):
        with pytest.raises(ValueError, match="positive"):
            M.spread_indices(10, limit)


def test_cli_writes_npz_and_png_deterministically(tmp_path, checkpoint, dataset, collected, capsys):
    outs = []
    for run in ("a", "b"):
        out, png = tmp_path / f"{run}.npz", tmp_path / f"{run}.png"
        assert M.main(["--checkpoint", str(checkpoint), "--data", str(dataset), "--out", str(out), "--png", str(png),
                       "--limit", "6", "--batch-size", "4", "--no-progress"]) == 0
        outs.append((out, png))
    printed = capsys.readouterr().out
    assert "stage2.module1" in printed and "top-20% share" in printed and "6 images" in printed
    means = collected.stage_response[::2].mean(0)  # the six images the CLI took
    assert f"mean |stage output| (the paper's Fig. 4), mean over images: stage 1 {means[0]:.4f}" in printed
    assert outs[0][0].read_bytes() == outs[1][0].read_bytes()  # byte-identical output
    loaded = M.load_npz(outs[0][0])
    assert loaded.index.tolist() == [0, 2, 4, 6, 8, 10] and loaded.class_counts.tolist() == [2, 2, 2]
    for name in collected.modules:  # the subset's masks are the full pass's masks at those positions
        np.testing.assert_allclose(loaded.masks[name], collected.masks[name][loaded.index], atol=1e-5)
    assert loaded.meta["checkpoint"] == "tiny.safetensors" and loaded.meta["split"] == "test"
    with np.load(outs[0][0], allow_pickle=False) as z:  # plain arrays, no pickles
        assert {"labels", "predictions", "confidence", "mask/stage1.module1", "class_mean/stage3.module1",
                "stat/stage2.module1/top20_share"} <= set(z.files)
    with Image.open(outs[0][1]) as picture:
        assert picture.format == "PNG" and picture.width > 200 and picture.height > 200


def test_save_and_load_round_trip(tmp_path, collected):
    path = tmp_path / "m.npz"
    M.save_npz(path, collected)
    loaded = M.load_npz(path)
    assert loaded.modules == collected.modules and loaded.classes == collected.classes
    for name in collected.modules:
        assert np.array_equal(loaded.masks[name], collected.masks[name])
        assert np.array_equal(loaded.class_means[name], collected.class_means[name])
    assert np.array_equal(loaded.confidence, collected.confidence)
    assert np.array_equal(loaded.stage_response, collected.stage_response)
    assert loaded.module_stats == collected.module_stats
    assert "stage3.module1" in M.summary_table(loaded)


def test_files_from_before_stage_responses_still_load(tmp_path, collected):
    path = tmp_path / "old.npz"
    M.save_npz(path, collected)
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != "stage_response"}
    older = tmp_path / "older.npz"
    np.savez_compressed(older, **arrays)
    loaded = M.load_npz(older)
    assert loaded.stage_response.shape == (12, 0)
    assert "Fig. 4" not in M.summary_table(loaded) and "stage3.module1" in M.summary_table(loaded)
