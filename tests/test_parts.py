"""resattn.parts: a mask's parts are recovered when planted, deterministic, and honest about flat masks and
channel attention's range; the command line prints them and draws them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from scipy.optimize import linear_sum_assignment
from scipy.stats import spearmanr

from resattn import parts as P

SIDE = 16


def _bump(cy: float, cx: float, radius: float) -> np.ndarray:
    """A smooth bump that is exactly zero beyond ``radius``: a region with a place, as a part should be."""
    y, x = np.mgrid[:SIDE, :SIDE]
    r = np.sqrt((y - cy) ** 2 + (x - cx) ** 2) / radius
    return np.where(r < 1, np.cos(np.minimum(r, 1) * np.pi / 2) ** 2, 0.0)


PLANTED = np.stack([_bump(4, 4, 4.5), _bump(12, 4, 4.0), _bump(8, 12, 5.0)])  # three places, 3×16×16


def _planted_mask(channels: int = 48, noise: float = 0.01, level: float = 0.45, seed: int = 0):
    """A sigmoid-like mask: a common level, three planted parts with sparse non-negative loadings, and noise."""
    rng = np.random.default_rng(seed)
    loadings = rng.uniform(0, 0.4, (channels, 3)) ** 2 / 0.4  # dense, skewed: a few channels carry each part
    mask = level + np.einsum("ck,khw->chw", loadings, PLANTED) + rng.normal(0, noise, (channels, SIDE, SIDE))
    return np.clip(mask, 0.001, 0.999), loadings


def _match(recovered: np.ndarray, planted: np.ndarray) -> np.ndarray:
    """For each planted map, the recovered one that matches it (one-to-one, by correlation)."""
    r = np.array([[np.corrcoef(p.ravel(), q.ravel())[0, 1] for q in recovered] for p in planted])
    rows, cols = linear_sum_assignment(-r)
    return cols[np.argsort(rows)]


def _matched(recovered: np.ndarray, planted: np.ndarray) -> list[float]:
    """Correlation of each planted map with its matched recovered map: is each part in its place?"""
    match = _match(recovered, planted)
    return [float(np.corrcoef(p.ravel(), recovered[m].ravel())[0, 1]) for p, m in zip(planted, match)]


def test_planted_parts_and_their_loadings_are_recovered():
    mask, loadings = _planted_mask()
    found = P.mask_parts(mask, k=3)
    assert found.k == 3 and found.maps.shape == (3, SIDE, SIDE) and found.loadings.shape == (48, 3)
    match = _match(found.maps, PLANTED)
    assert sorted(match) == [0, 1, 2]
    for j, m in enumerate(match):  # rank correlations after matching each planted part to a recovered one
        inside = PLANTED[j] > 0  # within the part's region (outside, both are zero up to the noise)
        assert spearmanr(PLANTED[j][inside], found.maps[m][inside])[0] > 0.9
        assert spearmanr(loadings[:, j], found.loadings[:, m])[0] > 0.9  # the same channels form it
    assert min(_matched(found.maps, PLANTED)) > 0.95  # the common level took none of the three parts
    assert found.explained > 0.9
    assert np.all(np.diff(found.energy) <= 0) and found.energy.sum() == pytest.approx(1.0)
    assert found.maps.max(axis=(1, 2)) == pytest.approx(np.ones(3))
    assert list(found.order()) == [0, 1, 2]


def test_a_plain_factorisation_would_spend_a_part_on_the_common_level():
    """The reason for subtracting each channel's floor: without it, one of three parts is the flat level."""
    from sklearn.decomposition import NMF

    mask, _ = _planted_mask()
    raw = NMF(3, init="nndsvd", random_state=0, max_iter=5000).fit(mask.reshape(48, -1)).components_  # converged
    assert min(_matched(raw.reshape(3, SIDE, SIDE), PLANTED)) < 0.9
    assert min(_matched(P.mask_parts(mask, k=3).maps, PLANTED)) > 0.9


def test_k_none_takes_the_smallest_k_that_explains_the_target():
    mask, _ = _planted_mask(noise=0.02)
    found = P.mask_parts(mask)
    assert found.explained >= P.TARGET_EXPLAINED
    assert P.K_RANGE[0] <= found.k <= P.K_RANGE[1]
    smaller = [v for k, v in found.explained_by_k.items() if k < found.k]
    assert all(v < P.TARGET_EXPLAINED for v in smaller)
    assert found.explained_by_k[found.k] == pytest.approx(found.explained, abs=1e-9)


@pytest.mark.parametrize("shape", [(48, SIDE, SIDE), (300, 4, 4)], ids=["fewer-channels", "fewer-positions"])
def test_k_none_starts_at_the_smallest_k_the_svd_bound_allows(shape: tuple[int, int, int]):
    """The automatic k skips only the k whose best rank-k fit (the SVD of the centred mask) cannot reach the
    target, whichever side of the mask is smaller (the bound comes from the smaller Gram matrix)."""
    rng = np.random.default_rng(3)
    c, h, w = shape
    mask = 0.45 + 0.3 * rng.random((c, 6)) @ rng.random((6, h * w)) / 6 + rng.normal(0, 0.012, (c, h * w))
    x = mask.reshape(c, -1)
    s2 = np.linalg.svd(x - x.mean(axis=1, keepdims=True), compute_uv=False) ** 2
    bound = np.cumsum(s2) / s2.sum()
    first = next(n for n in range(P.K_RANGE[0], P.K_RANGE[1] + 1) if bound[n - 1] >= P.TARGET_EXPLAINED)
    assert first > P.K_RANGE[0]  # the bound does skip some k here
    found = P.mask_parts(mask.reshape(shape))
    assert min(found.explained_by_k) == first


def test_the_factorisation_runs_on_one_blas_thread(monkeypatch):
    """NMF's small products run on one BLAS thread: a second one waiting for a busy core made them 10× slower."""
    from threadpoolctl import threadpool_info

    seen: list[int] = []
    factorise = P._factorise

    def recording(y, k):
        seen.extend(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")
        return factorise(y, k)

    monkeypatch.setattr(P, "_factorise", recording)
    P.mask_parts(_planted_mask()[0], k=3)
    assert seen and set(seen) == {1}


def test_the_same_mask_gives_the_same_parts():
    mask, _ = _planted_mask(noise=0.05)
    a, b = P.mask_parts(mask, k=4), P.mask_parts(mask.copy(), k=4)
    np.testing.assert_array_equal(a.maps, b.maps)
    np.testing.assert_array_equal(a.loadings, b.loadings)


@pytest.mark.parametrize("mask", [np.full((8, 6, 6), 0.45), np.zeros((8, 6, 6)),
                                  np.broadcast_to(np.linspace(0.1, 0.9, 8)[:, None, None], (8, 6, 6))],
                         ids=["constant", "zero", "one-level-per-channel"])
def test_a_mask_without_spatial_variation_has_no_parts(mask):
    found = P.mask_parts(mask)
    assert found.flat and found.k == 0 and found.explained == 1.0
    np.testing.assert_allclose(found.reconstruction(), mask)
    assert "no parts" in P._summary(found, "x")


def test_channel_attention_is_factorised_on_one_plus_m_over_two():
    mask, _ = _planted_mask()
    signed = mask * 2 - 1  # a channel-attention-like mask in [-1, 1]
    as_channel = P.mask_parts(signed, k=3, attention="channel")
    inferred = P.mask_parts(signed, k=3)  # negative values: taken for channel attention
    as_mixed = P.mask_parts(mask, k=3, attention="mixed")
    assert as_channel.transform == inferred.transform == "(1 + M) / 2" and as_mixed.transform == "none"
    np.testing.assert_allclose(as_channel.maps, as_mixed.maps, atol=1e-6)
    np.testing.assert_allclose(inferred.maps, as_mixed.maps, atol=1e-6)
    rebuilt = as_channel.reconstruction()  # back in the mask's own units, [-1, 1]
    assert rebuilt.min() < 0 and np.abs(rebuilt - signed).mean() < 0.05


def test_explained_fraction_spans_nothing_to_everything():
    mask, _ = _planted_mask()
    assert P.explained_fraction(mask, mask) == pytest.approx(1.0)
    means = np.broadcast_to(mask.mean(axis=(1, 2), keepdims=True), mask.shape)
    assert P.explained_fraction(mask, means) == pytest.approx(0.0)
    assert P.explained_fraction(mask, mask + 3.0) == pytest.approx(1.0)  # a level is not variation


def test_concentration_of_a_flat_and_of_a_peaked_map():
    assert P.concentration(np.ones((10, 10))) == pytest.approx(0.2)
    peak = np.zeros((10, 10))
    peak[4, 4] = 1.0
    assert P.concentration(peak) == pytest.approx(1.0)


def test_dataset_examples_rank_the_image_where_a_part_is_most_concentrated_first():
    mask, _ = _planted_mask()
    found = P.mask_parts(mask, k=3)
    rng = np.random.default_rng(1)
    others = [np.clip(0.45 + rng.normal(0, 0.05, mask.shape), 0, 1) for _ in range(5)]
    dataset = np.stack(others[:3] + [mask] + others[3:])  # the planted image at index 3
    for j in range(found.k):
        index, scores = P.dataset_examples(P.part_images(found, dataset, part=j), count=3)
        assert index[0] == 3 and np.all(np.diff(scores) <= 0)
    one = P.part_images(found, dataset, channel=0)
    np.testing.assert_array_equal(one, dataset[:, 0])
    with pytest.raises(ValueError, match="exactly one"):
        P.part_images(found, dataset)


def test_bad_masks_are_refused_with_a_message():
    with pytest.raises(ValueError, match="C×H×W"):
        P.mask_parts(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="non-finite"):
        P.mask_parts(np.full((2, 4, 4), np.nan))
    with pytest.raises(ValueError, match="k must be"):
        P.mask_parts(np.random.default_rng(0).random((4, 4, 4)), k=0)


SHIPPED = "checkpoints/attention56_cifar_mixed_arl.safetensors"


def _photo(tmp_path):
    y, x = np.mgrid[:32, :32]
    pixels = np.stack([x * 8, y * 8, (x + y) * 4], axis=-1).astype(np.uint8)
    path = tmp_path / "gradient.png"
    Image.fromarray(pixels).save(path)
    return path


def test_the_command_line_prints_json_and_draws_the_parts(tmp_path, capsys):
    png = tmp_path / "parts.png"
    code = P.main(["--checkpoint", SHIPPED, "--image", str(_photo(tmp_path)), "--stage", "2", "--k", "3",
                   "--json", "--png", str(png)])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["k"] == 3 and out["stage"] == 2 and len(out["parts"]) == 3
    assert 0 < out["explained"] <= 1 and sum(p["energy"] for p in out["parts"]) == pytest.approx(1.0, abs=1e-3)
    assert all(len(p["top_channels"]) == 5 for p in out["parts"])
    picture = Image.open(png)
    assert picture.width >= 3 * 320 and picture.height > 320


def test_the_command_line_names_a_module_that_does_not_exist(tmp_path, capsys):
    assert P.main(["--checkpoint", SHIPPED, "--image", str(_photo(tmp_path)), "--stage", "7"]) == 2
    assert "stage 7" in capsys.readouterr().err
