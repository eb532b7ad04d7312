"""The randomisation cascade with signed and absolute rank correlations, over several images and seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from resattn import faithfulness as F

from .test_faithfulness import _perturbed_copy
from .test_masks import checkpoint, dataset  # noqa: F401 - module-scoped fixtures reused here

NAMES = ("mask", "gradcam", "integrated_gradients")


def test_signed_and_absolute_rank_correlations_are_both_reported(tiny_cifar):
    _perturbed_copy(tiny_cifar)
    torch.manual_seed(3)
    x = torch.randn(1, 3, 32, 32)
    calls = []
    result = F.sanity_check(tiny_cifar, x, 2, stage=2, names=NAMES, ig_steps=4, seed=1,
                            progress=lambda done, total, text: calls.append((done, total)))
    assert calls[0] == (0, 7) and calls[-1] == (7, 7) and [c[0] for c in calls] == sorted(c[0] for c in calls)
    trained = result.steps[0].maps
    assert (trained["integrated_gradients"] < 0).any()  # signed attributions: the two measures differ
    for step in result.steps:
        for n in NAMES:
            assert step.spearman[n] == pytest.approx(F.rank_correlation(trained[n], step.maps[n]), nan_ok=True)
            assert step.spearman_abs[n] == pytest.approx(
                F.rank_correlation(np.abs(trained[n]), np.abs(step.maps[n])), nan_ok=True)
    last = result.steps[-1]
    assert last.spearman["integrated_gradients"] != pytest.approx(last.spearman_abs["integrated_gradients"])
    assert "ρ|·|" in result.table()
    # the trained model's step handed over from another seed's run gives the same result as recomputing it
    again = F.sanity_check(tiny_cifar, x, 2, stage=2, names=NAMES, ig_steps=4, seed=1, trained=result.steps[0])
    for a, b in zip(result.steps, again.steps):
        assert a.spearman == pytest.approx(b.spearman, nan_ok=True) and a.ssim == pytest.approx(b.ssim, nan_ok=True)


def test_cascade_over_images_and_seeds(tiny_cifar):
    _perturbed_copy(tiny_cifar)
    torch.manual_seed(6)
    inputs = torch.randn(2, 3, 32, 32)
    summary = F.sanity_over_images(tiny_cifar, inputs, [1, None], stage=2, names=("mask", "gradcam"),
                                   seeds=(0, 1, 2), ig_steps=4, positions=[5, 9])
    assert summary.blocks == ["trained", "fc", "norm", "stage3", "stage2", "stage1", "stem"]
    assert summary.signed["gradcam"].shape == summary.absolute["mask"].shape == (2, 3, 7)
    assert summary.index.tolist() == [5, 9] and summary.targets[0] == 1
    with torch.inference_mode():
        assert summary.targets[1] == int(tiny_cifar(inputs[1:]).argmax())
    # each run is the one-image check with that seed
    for i in range(2):
        for j, seed in enumerate((0, 1, 2)):
            alone = F.sanity_check(tiny_cifar, inputs[i : i + 1], int(summary.targets[i]), stage=2,
                                   names=("mask", "gradcam"), seed=seed, ig_steps=4)
            got = summary.signed["gradcam"][i, j]
            np.testing.assert_allclose(got, [s.spearman["gradcam"] for s in alone.steps], atol=1e-9)
    # the mask cannot change before its own stage is re-initialised, whatever the seed: exactly 1
    np.testing.assert_array_equal(summary.signed["mask"][:, :, :4], 1.0)
    # the seed matters for Grad-CAM once the classifier is random, and the statistics say so
    fc = summary.signed["gradcam"][:, :, 1]
    st = summary.stats("signed", "gradcam", 1)
    finite = fc[np.isfinite(fc)]
    assert st["mean"] == pytest.approx(finite.mean()) and st["min"] == finite.min() and st["max"] == finite.max()
    assert st["undefined"] == fc.size - finite.size and st["runs"] == 6
    assert st["seed_sd"] > 0
    table = summary.table()
    assert "2 image(s) × 3 seed(s)" in table
    assert sum(line.startswith("Grad-CAM") for line in table.splitlines()) == 6  # a line per re-initialised step
    with pytest.raises(ValueError, match="seed"):
        F.sanity_over_images(tiny_cifar, inputs, seeds=())


def test_sanity_command_over_a_dataset_and_seeds(tmp_path, checkpoint, dataset, capsys):  # noqa: F811
    assert F.main(["sanity", "--checkpoint", str(checkpoint), "--data", str(dataset), "--limit", "2", "--seeds", "0",
                   "1", "--stage", "3", "--maps", "mask", "gradcam", "--target", "label", "--out",
                   str(tmp_path / "s.npz")]) == 0
    out = capsys.readouterr().out
    assert "2 image(s) × 2 seed(s) (0, 1)" in out and "ρ (|map|)" in out
    with np.load(tmp_path / "s.npz") as z:
        assert z["signed/gradcam"].shape == (2, 2, 7) and z["index"].tolist() == [0, 6]
        assert z["targets"].tolist() == [0, 1]  # --target label: the true classes of images 0 and 6
    with pytest.raises(SystemExit):
        F.main(["sanity", "--checkpoint", str(checkpoint), "--data", str(dataset), "--target", "cat"])
