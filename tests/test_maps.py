"""Channel reductions, range- and sign-keeping scales, NaN/constant flags, overlays and mask statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

try:  # tests/ may or may not be a package
    from .imagefiles import single_thread  # noqa: F401 - single_thread is an autouse fixture
except ImportError:
    from imagefiles import single_thread  # noqa: F401

from resattn import maps


@pytest.fixture
def tensor():
    rng = np.random.default_rng(0)
    return rng.normal(size=(6, 5, 7)).astype(np.float32)


def test_reductions_match_numpy(tensor):
    np.testing.assert_allclose(maps.reduce_channels(tensor, "mean"), tensor.mean(0), rtol=1e-6)
    np.testing.assert_allclose(maps.reduce_channels(tensor, "max"), tensor.max(0))
    np.testing.assert_array_equal(maps.reduce_channels(tensor, "channel", channel=4), tensor[4])
    np.testing.assert_allclose(maps.reduce_channels(tensor, "topk", channels=[1, 3]), tensor[[1, 3]].mean(0))


def test_reduction_accepts_batched_tensors(tensor):
    batched = torch.from_numpy(tensor)[None]
    np.testing.assert_allclose(maps.reduce_channels(batched, "mean"), tensor.mean(0), rtol=1e-6)


def test_bad_reduction_arguments(tensor):
    with pytest.raises(ValueError, match="out of range"):
        maps.reduce_channels(tensor, "channel", channel=6)
    with pytest.raises(ValueError, match="channel indices"):
        maps.reduce_channels(tensor, "topk")
    with pytest.raises(ValueError, match="reduction"):
        maps.reduce_channels(tensor, "median")


def test_topk_ranks_channels_by_mask_energy():
    mask = np.zeros((5, 4, 4), np.float32)
    mask[3] = 0.9
    mask[1] = 0.5
    mask[4, 0, 0] = 1.0
    assert maps.topk_channels(mask, 3) == [3, 1, 4]
    assert len(maps.topk_channels(mask, 99)) == 5


def test_upsample_to_image_resolution_keeps_constant_maps():
    up = maps.upsample(np.full((4, 4), 0.3, np.float32), (32, 48))
    assert up.shape == (32, 48)
    np.testing.assert_allclose(up, 0.3, rtol=1e-6)


def test_describe_reports_range_and_sign():
    stats = maps.describe(np.array([[-2.0, 1.0], [0.5, 3.0]]))
    assert (stats.minimum, stats.maximum, stats.sign, stats.ok) == (-2.0, 3.0, "mixed", True)
    assert maps.describe(np.array([[0.0, 1.0]])).sign == "non-negative"
    assert maps.describe(np.array([[-1.0, -0.5]])).sign == "negative"


@pytest.mark.parametrize("values, problem", [
    (np.full((3, 3), 0.7), "constant"),
    (np.array([[0.1, np.nan]]), "NaN"),
    (np.array([[0.1, np.inf]]), "NaN or infinite"),
])
def test_degenerate_maps_are_flagged(values, problem):
    stats = maps.describe(values)
    assert not stats.ok and problem in stats.problem and problem in stats.summary()


def test_view_map_draws_flagged_maps_flat():
    picture = np.zeros((16, 16, 3), np.uint8)
    view = maps.view_map(np.full((4, 2, 2), 0.5, np.float32), "M", picture, quantity="mask", contrast="stretch")
    assert not view.stats.ok
    assert np.unique(view.heat).tolist() == [128]  # no stretched contrast


def test_module_views_share_topk_channels_and_resolution():
    rng = np.random.default_rng(1)
    mask, trunk, out = (rng.random((8, 4, 4)).astype(np.float32) for _ in range(3))
    picture = np.full((20, 30, 3), 100, np.uint8)
    views = maps.module_views(mask, trunk, out, picture, how="topk", k=3)
    assert views["M"].channels == views["T"].channels == views["H"].channels == maps.topk_channels(mask, 3)
    for view in views.values():
        assert view.upsampled.shape == (20, 30) and view.overlay.shape == picture.shape
        assert view.grid is not None and view.grid.dtype == np.uint8


def test_colorize_overlay_and_tile():
    heat = maps.colorize(np.array([[0.0, 1.0]]), 0.0, 1.0, "gray")
    assert heat[0, 0].tolist() == [0, 0, 0] and heat[0, 1].tolist() == [255, 255, 255]
    image = np.full((1, 2, 3), 200, np.uint8)
    np.testing.assert_array_equal(maps.overlay(image, heat, 0.0), image)
    np.testing.assert_array_equal(maps.overlay(image, heat, 1.0), heat)
    grid = maps.tile([heat] * 5, columns=2, gap=1)
    assert grid.shape == (3 * 1 + 2, 2 * 2 + 1, 3)


def test_to_png_roundtrip():
    import io

    from PIL import Image

    picture = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(maps.to_png(picture)))), picture)


def test_mask_statistics_and_response():
    mask = np.array([[[0.2, 0.6], [0.8, 0.4]]], np.float32)
    stats = maps.mask_statistics(mask)
    assert stats["mean mask"] == pytest.approx(0.5) and stats["fraction > 0.5"] == pytest.approx(0.5)
    assert maps.mean_abs_response(np.array([[-2.0, 2.0]])) == pytest.approx(2.0)


def test_module_views_draw_each_quantity_on_its_own_scale():
    """Masks on [0, 1] (or [−1, 1] for channel attention), T and H symmetric around 0, in each quantity's
    colormap; the colours really follow the scale."""
    rng = np.random.default_rng(2)
    mask = (0.45 + 0.05 * rng.random((6, 5, 5))).astype(np.float32)  # a flat-ish sigmoid mask, as trained ones are
    trunk = rng.normal(0.5, 1.0, (6, 5, 5)).astype(np.float32)
    out = (trunk * (1 + mask)).astype(np.float32)
    picture = np.zeros((10, 10, 3), np.uint8)
    views = maps.module_views(mask, trunk, out, picture, mask_cmap="magma", feature_cmap="coolwarm")
    assert (views["M"].low, views["M"].high, views["M"].diverging) == (0.0, 1.0, False)
    for key in ("T", "H"):
        v = views[key]
        assert v.diverging and v.low == -v.high == pytest.approx(-np.abs(v.reduced).max())
        assert v.cmap == "coolwarm" and v.scale.contrast == "fixed"
    assert views["M"].cmap == "magma"
    # the heat of M is the colormap at the mask value on the fixed 0–1 scale
    expected = maps.colorize(views["M"].upsampled, 0.0, 1.0, "magma")
    np.testing.assert_array_equal(views["M"].heat, expected)
    channel = maps.module_views(mask * 2 - 1, trunk, out, picture, mask_scale="channel_mask")["M"]
    assert (channel.low, channel.high, channel.diverging) == (-1.0, 1.0, True)
    # stretched: the map's own percentiles, and it says so
    stretched = maps.module_views(mask, trunk, out, picture, contrast="stretch")
    m = stretched["M"]
    assert m.scale.stretched and "stretched" in m.scale.description
    assert m.low == pytest.approx(np.percentile(m.reduced, 1)) and m.high == pytest.approx(np.percentile(m.reduced, 99))
    assert stretched["T"].low == -stretched["T"].high  # still centred on 0


def test_colorbar_is_drawn_under_each_panel():
    scale = maps.scale_for(np.array([0.0, 1.0]), "mask")
    bar = maps.colorbar(scale, "gray", 100)
    assert bar.shape[1] == 100 and bar.dtype == np.uint8
    assert bar[0, 0].tolist() == [0, 0, 0] and bar[0, -1].tolist() == [255, 255, 255]
    panel = maps.with_colorbar(np.zeros((50, 100, 3), np.uint8), scale, "gray")
    assert panel.shape[0] > 50 + 14 and panel.shape[1] == 100
    with pytest.raises(ValueError, match="contrast"):
        maps.scale_for(np.zeros(3), "mask", "auto")


def test_enlarge_nearest_keeps_pixels_square():
    small = np.arange(2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 3)
    big = maps.enlarge_nearest(small, 8)
    assert big.shape == (8, 8, 3)
    np.testing.assert_array_equal(big[:4, :4], np.broadcast_to(small[0, 0], (4, 4, 3)))


@pytest.mark.parametrize("quantity", ["feature", "attribution"])
def test_the_scale_and_colormap_follow_the_sign_of_the_data(quantity):
    """Both signs: centred on 0 with a diverging colormap; one sign: 0–max (or min–0) with a sequential one,
    so an all-positive map uses the whole colour range and a signed map shows its sign (issue 24)."""
    rng = np.random.default_rng(0)
    positive = rng.random((8, 8)) * 3 + 0.1
    negative = -positive
    signed = positive - 1.5
    for contrast in ("fixed", "stretch"):
        up = maps.scale_for(positive, quantity, contrast)
        assert not up.diverging and up.low >= 0 and up.high <= positive.max() + 1e-9
        assert maps.cmap_for(up, "RdBu_r", quantity) not in maps.DIVERGING_CMAPS
        down = maps.scale_for(negative, quantity, contrast)
        assert not down.diverging and down.high <= 0 and down.low >= negative.min() - 1e-9
        both = maps.scale_for(signed, quantity, contrast)
        assert both.diverging and both.low == -both.high
        assert maps.cmap_for(both, "inferno", quantity) in maps.DIVERGING_CMAPS
    fixed = maps.scale_for(positive, quantity, "fixed")
    assert (fixed.low, fixed.high) == (0.0, pytest.approx(positive.max()))
    # a chosen colormap that fits the scale is kept
    assert maps.cmap_for(maps.scale_for(signed, quantity), "coolwarm", quantity) == "coolwarm"
    assert maps.cmap_for(maps.scale_for(positive, quantity), "viridis", quantity) == "viridis"


def test_mask_natural_scales_do_not_follow_one_map():
    """Masks keep their natural fixed scales; a channel mask (signed by nature) is drawn diverging."""
    flat = np.full((4, 4), 0.5) + np.linspace(0, 0.01, 16).reshape(4, 4)
    assert (maps.scale_for(flat, "mask").low, maps.scale_for(flat, "mask").high) == (0.0, 1.0)
    channel = maps.scale_for(flat, "channel_mask")
    assert (channel.low, channel.high, channel.diverging) == (-1.0, 1.0, True)
    assert maps.cmap_for(channel, "viridis", "channel_mask") in maps.DIVERGING_CMAPS
    assert maps.ticks(channel) == ("-1", "0", "1")


def test_topk_tiles_get_a_scale_of_their_own():
    """Single channels span more than their mean: the top-k tiles are drawn on their own shared scale, not
    clipped to the mean map's."""
    rng = np.random.default_rng(1)
    trunk = rng.normal(0, 1, (6, 4, 4)).astype(np.float32)
    trunk[5] *= 20  # a strong channel among the mask's top 3 (channels 5, 4, 3)
    mask = np.linspace(0.1, 0.9, 6 * 16, dtype=np.float32).reshape(6, 4, 4)
    picture = np.zeros((8, 8, 3), np.uint8)
    view = maps.module_views(mask, trunk, trunk, picture, how="topk", k=3)["T"]
    assert view.channels == [5, 4, 3]
    tiles = trunk[view.channels]
    assert view.grid_scale is not None and view.grid_scale.high == pytest.approx(np.abs(tiles).max())
    assert view.grid_scale.high > view.scale.high  # the mean map's scale would clip the strong tile


def test_heat_is_the_one_drawing_of_a_map_with_the_scale_and_colormap_its_colorbar_states():
    rng = np.random.default_rng(0)
    values = rng.random((7, 7)).astype(np.float32)
    drawn = maps.heat(values, "mask", "stretch", "magma", (28, 28))
    scale = maps.scale_for(values, "mask", "stretch")
    assert drawn.scale == scale and drawn.cmap == "magma" and drawn.picture.shape == (28, 28, 3)
    assert np.array_equal(drawn.picture, maps.colorize(maps.upsample(values, (28, 28)), scale.low, scale.high, "magma"))
    # a signed map on a sequential colormap gets a diverging one, so its sign can be read from the colours
    signed = maps.heat(values - 0.5, "attribution", "fixed", "inferno", (7, 7))
    assert signed.cmap in maps.DIVERGING_CMAPS and signed.scale.low == -signed.scale.high
    # a shared scale is used as given; over a picture the map is blended with the given opacity
    shared = maps.Scale(0.0, 2.0, False, "fixed", "0 to 2, shared by every model")
    photo = np.full((28, 28, 3), 200, np.uint8)
    over = maps.heat(values, "mask", "stretch", "viridis", (28, 28), scale=shared, over=photo, alpha=0.25)
    alone = maps.colorize(maps.upsample(values, (28, 28)), 0.0, 2.0, "viridis")
    assert over.scale is shared and np.array_equal(over.picture, maps.overlay(photo, alone, 0.25))
