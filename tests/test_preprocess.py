"""One preprocessing: the app, the figure script and evaluation give a model the same input for the same image."""

from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import resattn
from resattn.evaluate import evaluation_data
from resattn.preprocess import Preprocessing, resize_center_crop, resize_for_crop
from resattn.train import TrainConfig, train

try:  # tests/ may or may not be a package
    from .test_data import make_tree, zip_tree
except ImportError:
    from test_data import make_tree, zip_tree

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "app"))


def _member_images(source, split):
    listing = resattn.data.open_split(source, split)
    with zipfile.ZipFile(source) as zf:
        return [Image.open(io.BytesIO(zf.read(name))) for name, _ in listing.items]


def _same_inputs(checkpoint, data):
    from ui import state  # the app's model input

    meta = resattn.read_meta(checkpoint)
    decoded, normalizer = evaluation_data(meta, str(data), "test")
    evaluated = normalizer(decoded.images)
    pictures = _member_images(str(data), "test")
    assert len(pictures) == len(evaluated)
    for picture, expected in zip(pictures, evaluated):
        torch.testing.assert_close(state.model_input(picture, meta)[0], expected, rtol=0, atol=1e-6)
    return meta


def test_a_paper_recipe_checkpoint_gets_the_same_input_in_the_app_as_in_evaluation(tmp_path):
    data = zip_tree(make_tree(tmp_path / "tree", per_class=(6, 2)), tmp_path / "tiny.zip")
    out = tmp_path / "run"
    train(TrainConfig(model="attention56_cifar", width_mult=0.125, recipe="paper", epochs=1, batch_size=6,
                      threads=1, progress="none", data=str(data), out=str(out), state_dir=str(tmp_path / "s")))
    meta = _same_inputs(out / "model.safetensors", data)
    mean_image = torch.tensor(meta["mean_image"]).view(3, 16, 16)
    assert mean_image.std(dim=(1, 2)).min() > 0  # a real per-pixel mean, not a per-channel one
    prep = Preprocessing.from_meta(meta)
    assert prep.mean_image is not None and prep.std == (1.0, 1.0, 1.0)


def test_a_photo_checkpoint_gets_the_same_resized_centre_crop_everywhere(tmp_path):
    tree = make_tree(tmp_path / "tree", per_class=(2, 2), size=16)
    for path in sorted((tmp_path / "tree").rglob("*.png")):  # photos of mixed sizes and aspect ratios
        rng = np.random.default_rng(len(str(path)))
        w, h = int(rng.integers(80, 140)), int(rng.integers(80, 140))
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    data = zip_tree(tree, tmp_path / "photos.zip")
    model = resattn.create_model("attention56_imagenet", width_mult=0.0625, num_classes=3)
    meta = {"classes": ["cat", "dog", "frog"], "input_size": 72, "resize": resize_for_crop(72),
            "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}
    resattn.save_checkpoint(tmp_path / "photo.safetensors", model, meta)
    _same_inputs(tmp_path / "photo.safetensors", data)


def test_resize_center_crop_geometry():
    image = Image.new("RGB", (200, 100))
    assert resize_center_crop(image, 82, 72).size == (72, 72)
    assert resize_center_crop(image, 50).size == (50, 50)
    prep = Preprocessing(72, 82, (0.5,) * 3, (0.25,) * 3)
    assert prep.view(image).size == (round(100 * 72 / 82),) * 2  # the same region, at the image's resolution
    x = prep(image)
    assert x.shape == (1, 3, 72, 72)
    torch.testing.assert_close(prep.denormalize(x), torch.zeros_like(x))
    with pytest.raises(ValueError, match="larger"):
        resize_center_crop(image, 10, 20)


def _coordinates(width: int, height: int) -> Image.Image:
    """Red = column, green = row, blue = 0: every pixel says where it came from (both sides at most 256)."""
    rows, cols = np.mgrid[0:height, 0:width]
    return Image.fromarray(np.stack([cols, rows, np.zeros_like(rows)], axis=-1).astype(np.uint8))


@pytest.mark.parametrize("width, height", [(200, 100), (100, 200)], ids=["landscape", "portrait"])
def test_the_centre_crop_is_centred_in_both_directions(width, height):
    """A black test image hides misplaced rows: on a coordinate image, the crop's first pixel names its offsets."""
    crop = np.asarray(resize_center_crop(_coordinates(width, height), 100, 72)).astype(int)  # no resampling: 100 fits
    left, top = (width - 72) // 2, (height - 72) // 2
    assert crop.shape == (72, 72, 3)
    assert crop[0, 0, 0] == left and crop[0, 0, 1] == top and crop[-1, -1, 0] == left + 71 and crop[-1, -1, 1] == top + 71
    # the displayed region is the same square at the image's own resolution
    prep = Preprocessing(72, 82, (0.5,) * 3, (0.25,) * 3)
    view = np.asarray(prep.view(_coordinates(width, height))).astype(int)
    side = round(100 * 72 / 82)
    assert view.shape == (side, side, 3)
    assert view[0, 0, 0] == (width - side) // 2 and view[0, 0, 1] == (height - side) // 2
    # with resampling (the shorter side 100 → 50), the crop of a linear ramp is still centred: its mean is the middle
    small = np.asarray(resize_center_crop(_coordinates(width, height), 50, 40)).astype(float)
    assert small[..., 0].mean() == pytest.approx((width - 1) / 2, abs=1.5)
    assert small[..., 1].mean() == pytest.approx((height - 1) / 2, abs=1.5)
