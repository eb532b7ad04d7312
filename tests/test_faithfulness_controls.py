"""The controls deletion and insertion need (another image's map, the inverted map, a random map as smooth as the map
under test), per-image seeds over a dataset, and the paired tests between maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

import resattn
from resattn import faithfulness as F
from resattn.evaluate import paired_comparison

from .test_faithfulness import region_first, toy  # noqa: F401 - the toy model with known evidence
from .test_masks import META


def _smooth(seed: int, size: int = 32) -> np.ndarray:
    """A smooth, lopsided map: low-pass noise plus a ramp."""
    noise = torch.from_numpy(np.random.default_rng(seed).random((1, 1, size, size)).astype(np.float32))
    blurred = F.gaussian_blur(noise, 3.0)[0, 0].numpy()
    return blurred + np.linspace(0, 0.3, size, dtype=np.float32)[None, :]


def _lag1(m: np.ndarray) -> float:
    """Correlation of horizontally adjacent values: near 1 for a smooth map, near 0 for pixel noise."""
    return float(np.corrcoef(m[:, :-1].ravel(), m[:, 1:].ravel())[0, 1])


def test_smooth_random_map_is_as_smooth_as_its_reference_and_knows_nothing_of_its_layout():
    reference = _smooth(0)
    a, b = F.smooth_random_map(reference, seed=0), F.smooth_random_map(reference, seed=1)
    assert a.shape == reference.shape and a.dtype == np.float32
    np.testing.assert_array_equal(a, F.smooth_random_map(reference, seed=0))  # seeded
    assert not np.allclose(a, b)
    # as smooth as the reference (adjacent values as correlated), unlike pixel noise
    smoothness = [_lag1(F.smooth_random_map(reference, s)) for s in range(40)]
    assert np.mean(smoothness) == pytest.approx(_lag1(reference), abs=0.02) and min(smoothness) > 0.95
    assert abs(_lag1(F.random_map((32, 32), 0))) < 0.1
    rough = np.random.default_rng(9).random((32, 32))  # matched to a rough map, it is rough
    assert abs(np.mean([_lag1(F.smooth_random_map(rough, s)) for s in range(10)])) < 0.1
    # and no layout: over many seeds its rank correlation with the reference averages about zero
    rhos = [F.rank_correlation(reference, F.smooth_random_map(reference, s)) for s in range(300)]
    assert abs(np.mean(rhos)) < 4 * np.std(rhos) / np.sqrt(300) and np.std(rhos) > 0.1
    # a constant reference has no smoothness to match: pixel noise, not NaN
    flat = F.smooth_random_map(np.ones((8, 8)), 0)
    assert np.isfinite(flat).all() and np.ptp(flat) > 0


def test_inverted_map_ranks_the_last_pixels_first():
    reference = _smooth(3)
    inverted = F.inverted_map(reference)
    np.testing.assert_array_equal(F.pixel_order(inverted, (32, 32)), F.pixel_order(reference, (32, 32))[::-1])
    assert inverted.min() == pytest.approx(reference.min()) and inverted.max() == pytest.approx(reference.max())


@pytest.mark.parametrize("n", [2, 3, 10, 101])
def test_derangement_never_gives_an_image_its_own_map(n):
    perm = F.derangement(n, seed=4)
    assert sorted(perm.tolist()) == list(range(n)) and not np.any(perm == np.arange(n))
    position, seen = 0, set()  # one cycle through every image
    for _ in range(n):
        seen.add(position)
        position = int(perm[position])
    assert position == 0 and len(seen) == n
    np.testing.assert_array_equal(perm, F.derangement(n, seed=4))
    if n > 3:
        assert not np.array_equal(perm, F.derangement(n, seed=5))


def test_derangement_needs_two_images():
    with pytest.raises(ValueError, match="at least 2"):
        F.derangement(1)


def test_controls_are_made_from_the_reference_map(tiny_cifar):
    torch.manual_seed(1)
    x, other = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32)
    maps = F.saliency_maps(tiny_cifar, x, 2, stage=2, names=("other", "inverted", "smooth_random", "mask"),
                           other=other, seed=7)
    assert list(maps) == ["other", "inverted", "smooth_random", "mask"]
    np.testing.assert_allclose(maps["other"], F.mask_map(tiny_cifar, other, 2)[0])  # the other image's own mask
    assert not np.allclose(maps["other"], maps["mask"])
    np.testing.assert_array_equal(maps["inverted"], F.inverted_map(maps["mask"]))
    np.testing.assert_array_equal(maps["smooth_random"], F.smooth_random_map(maps["mask"], 7))
    by_gradcam = F.saliency_maps(tiny_cifar, x, 2, stage=2, names=("other", "inverted"), other=other,
                                 reference="gradcam")
    gradcam_other = resattn.attribution.attribute(tiny_cifar, other, 2, "gradcam", stage=2)
    np.testing.assert_allclose(by_gradcam["other"], gradcam_other, atol=1e-6)
    with pytest.raises(ValueError, match="another image"):
        F.saliency_maps(tiny_cifar, x, 2, stage=2, names=("mask", "other"))
    with pytest.raises(ValueError, match="reference"):
        F.saliency_maps(tiny_cifar, x, 2, stage=2, names=("inverted",), reference="random")


def test_on_a_model_with_known_evidence_the_inverted_map_is_worst(toy):  # noqa: F811 - fixture
    model, x = toy
    region = region_first()
    maps = {"region": region, "inverted": F.inverted_map(region + 0.01 * _smooth(2)), "smooth": F.smooth_random_map(region, 0)}
    auc = {n: {k: c.auc for k, c in v.items()} for n, v in F.faithfulness_curves(model, x, 0, maps, steps=16).items()}
    assert auc["region"]["deletion"] < auc["smooth"]["deletion"] < auc["inverted"]["deletion"]
    assert auc["region"]["insertion"] > auc["smooth"]["insertion"] > auc["inverted"]["insertion"]


def test_every_image_gets_its_own_random_maps_and_another_images_map(tiny_cifar):
    """Two identical images: their own maps agree, their random maps must not (the seed is the image's position)."""
    rng = np.random.default_rng(0)
    first, second = (torch.from_numpy(rng.integers(0, 256, (1, 3, 32, 32), dtype=np.uint8)) for _ in range(2))
    images = torch.cat([first, first, second])
    positions = [10, 11, 40]
    result = F.faithfulness_over_dataset(tiny_cifar, META, images, None, stage=2, positions=positions, steps=4,
                                         names=("mask", "random", "smooth_random", "other"), seed=3)
    np.testing.assert_array_equal(result.deletion["mask"][0], result.deletion["mask"][1])
    for name in ("random", "smooth_random"):
        assert not np.array_equal(result.deletion[name][0], result.deletion[name][1]), name
    # each image's curves are those of its own seed, seed + position
    prep = resattn.preprocess.Preprocessing.from_meta(META)
    perm = F.derangement(3, seed=3)
    assert result.other_index.tolist() == [positions[j] for j in perm]
    for i, position in enumerate(positions):
        x = prep.normalize(images[i : i + 1])
        target = int(result.targets[i])
        mask = F.mask_map(tiny_cifar, x, 2)[0]
        direct = F.faithfulness_curves(tiny_cifar, x, target, {
            "random": F.random_map((32, 32), 3 + position), "smooth_random": F.smooth_random_map(mask, 3 + position),
            "other": F.mask_map(tiny_cifar, prep.normalize(images[perm[i] : perm[i] + 1]), 2)[0]}, steps=4)
        for name in ("random", "smooth_random", "other"):
            np.testing.assert_allclose(result.deletion[name][i], direct[name]["deletion"].probabilities, atol=1e-6)
            np.testing.assert_allclose(result.insertion[name][i], direct[name]["insertion"].probabilities, atol=1e-6)


def test_paired_difference_against_scipy():
    rng = np.random.default_rng(0)
    a = rng.random(60)
    b = a - 0.05 + 0.1 * rng.standard_normal(60)
    got = F.paired_difference(a, b)
    t = stats.ttest_rel(a, b)
    assert got.n == 60 and got.mean == pytest.approx(np.mean(a - b))
    assert got.se == pytest.approx(np.std(a - b, ddof=1) / np.sqrt(60))
    assert got.p_t == pytest.approx(t.pvalue) and got.p_wilcoxon == pytest.approx(stats.wilcoxon(a - b).pvalue)
    low, high = t.confidence_interval(0.95)
    assert (got.low, got.high) == (pytest.approx(low), pytest.approx(high))
    assert got.p_t < 0.05 and got.low > 0  # a real gap of 0.05 over 60 pairs with this noise
    same = F.paired_difference(a, a)
    assert (same.mean, same.se, same.p_t, same.p_wilcoxon) == (0, 0, 1, 1)
    with_nan = F.paired_difference(np.append(a, np.nan), np.append(b, 0.3))
    assert with_nan.n == 60 and with_nan.mean == pytest.approx(got.mean)
    assert F.paired_difference(a[:1], b[:1]).n == 1 and np.isnan(F.paired_difference(a[:1], b[:1]).se)
    with pytest.raises(ValueError):
        F.paired_difference(a, b[:5])


def test_paired_rates_agree_with_evaluates_comparison():
    rng = np.random.default_rng(1)
    before, after = rng.random(400) < 0.9, rng.random(400) < 0.8
    got = F.paired_rates(before, after)
    reference = paired_comparison(before, after)  # a = before
    assert (got.only_a, got.only_b) == (reference["only_a"], reference["only_b"])
    assert 100 * got.change == pytest.approx(-reference["gap_points"])
    assert 100 * got.se == pytest.approx(reference["gap_se_points"]) and got.p_mcnemar == pytest.approx(reference["mcnemar_p"])
    assert got.low < got.change < got.high and got.high < 0  # 90% → 80% over 400 images is beyond noise
    assert got.rate_a == pytest.approx(before.mean()) and got.rate_b == pytest.approx(after.mean())
    unchanged = F.paired_rates(before, before)
    assert (unchanged.change, unchanged.se, unchanged.p_mcnemar) == (0, 0, 1)


def test_dataset_paired_table_compares_maps_image_by_image(tiny_cifar):
    images = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (4, 3, 32, 32), dtype=np.uint8))
    result = F.faithfulness_over_dataset(tiny_cifar, META, images, None, stage=2, steps=4,
                                         names=("mask", "other", "inverted", "smooth_random", "random"))
    for kind in ("deletion", "insertion"):
        aucs = result.aucs(kind)
        got = result.paired("mask", "smooth_random", kind)
        assert got.mean == pytest.approx(np.mean(aucs["mask"] - aucs["smooth_random"]))
        assert got == F.paired_difference(aucs["mask"], aucs["smooth_random"])
    assert F.default_pairs(result.names) == [("mask", "other"), ("mask", "inverted"), ("mask", "smooth_random"),
                                             ("mask", "random"), ("smooth_random", "random")]
    table = result.paired_table()
    assert table.count("(Wilcoxon)") == 2 * 5 and "another image's map" in table
    assert "Integrated Gradients' baseline" in result.table() and "random, matched smoothness" in result.table()
