"""Safe image loading: every mode and format converts to RGB, every bad file gives a clear ImageError."""

from __future__ import annotations

import io
import pickle
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

try:  # tests/ may or may not be a package
    from .imagefiles import bad_files, encode, photo, png_bomb, single_thread  # noqa: F401 - an autouse fixture
except ImportError:
    from imagefiles import bad_files, encode, photo, png_bomb, single_thread  # noqa: F401
from resattn import images
from resattn.images import ImageError


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF"])
def test_every_supported_format_loads_as_rgb(fmt):
    loaded = images.load_image(encode(photo(48, 32), fmt), f"x.{fmt.lower()}")
    assert loaded.mode == "RGB" and loaded.size == (48, 32)


@pytest.mark.parametrize("mode", ["L", "1", "P", "CMYK", "LA", "I", "F"])
def test_modes_convert_to_rgb(mode):
    source = photo(20, 10).convert(mode) if mode not in ("I", "F") else photo(20, 10).convert("L").convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "TIFF" if mode in ("I", "F") else "PNG"
    loaded = images.load_image(encode(source, fmt))
    assert loaded.mode == "RGB" and loaded.size == (20, 10)


def test_16_bit_keeps_relative_intensity():
    ramp = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)  # up to 63000 of 65535
    loaded = np.asarray(images.load_image(encode(Image.fromarray(ramp), "PNG")))
    grey = loaded[..., 0].astype(int)
    assert grey[0, 0] == 0 and abs(grey[-1, -1] - round(63000 / 65535 * 255)) <= 1
    assert (np.diff(grey.ravel()) >= 0).all()  # monotonic, not wrapped or clipped at 255


def test_transparency_is_composited_on_white():
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red
    assert np.asarray(images.load_image(encode(rgba)))[0, 0].tolist() == [255, 255, 255]
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([0, 0, 0] * 256)
    palette.info["transparency"] = 0
    assert np.asarray(images.load_image(encode(palette, transparency=0)))[0, 0].tolist() == [255, 255, 255]


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    data = encode(photo(40, 20), "JPEG", exif=exif.tobytes())
    assert images.load_image(data).size == (20, 40)


def several_frames(fmt: str, count: int = 3) -> bytes:
    """A file of ``count`` frames (red, then shades of blue): an animation, or pages of a TIFF."""
    frames = [Image.new("RGB", (8, 8), (255, 0, 0))] + [Image.new("RGB", (8, 8), (0, 0, 255 - 40 * i))
                                                        for i in range(count - 1)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format=fmt, save_all=True, append_images=frames[1:])
    return buffer.getvalue()


def test_gif_first_frame_is_used_and_the_user_is_told():
    loaded = images.load_image(several_frames("GIF"), "wave.gif")
    first = np.asarray(loaded)[0, 0]
    assert first[0] > 200 and first[2] < 50
    assert images.image_notes(loaded) == ("wave.gif is animated (3 frames): only its first frame is shown and used.",)
    # the note travels with the image through Streamlit's cache (which pickles what it stores)
    assert images.image_notes(pickle.loads(pickle.dumps(loaded))) == images.image_notes(loaded)


@pytest.mark.parametrize(("fmt", "says"), [("PNG", "animated (2 frames)"), ("WEBP", "animated (2 frames)"),
                                           ("TIFF", "has 2 pages: only its first page")])
def test_every_multi_frame_format_gets_a_note(fmt, says):
    notes = images.image_notes(images.load_image(several_frames(fmt, 2), f"x.{fmt.lower()}"))
    assert len(notes) == 1 and says in notes[0] and notes[0].startswith(f"x.{fmt.lower()} ")


def test_a_single_frame_image_has_no_note():
    assert images.image_notes(images.load_image(encode(photo(32, 32)), "x.png")) == ()
    assert images.image_notes(images.load_image(encode(photo(32, 32), "GIF"), "x.gif")) == ()


@pytest.mark.parametrize("size", [(1, 1), (7, 300), (300, 7)])
def test_a_tiny_image_is_refused_with_its_size_and_the_minimum(size):
    with pytest.raises(ImageError) as info:
        images.load_image(encode(photo(*size)), "dot.png")
    message = str(info.value)
    assert f"dot.png is only {size[0]}×{size[1]} pixels" in message
    assert f"at least {images.MIN_SIDE} pixels on each side" in message


def test_the_smallest_accepted_image():
    assert images.load_image(encode(photo(images.MIN_SIDE, images.MIN_SIDE))).size == (8, 8)


def test_large_images_are_downscaled():
    loaded = images.load_image(encode(photo(3000, 600), "JPEG"), max_side=512)
    assert max(loaded.size) == 512 and loaded.size[0] / loaded.size[1] == pytest.approx(5, rel=0.02)


@pytest.mark.parametrize("kind", list(bad_files()))
def test_bad_files_raise_clear_errors(kind):
    name, data = bad_files()[kind]
    expected = {"empty": "empty", "truncated": "truncated", "corrupt": "corrupt", "non-image": "not an image",
                "unsupported": "not supported", "bomb": "decompression bomb"}[kind]
    with pytest.raises(ImageError, match=expected) as info:
        images.load_image(data, name)
    assert name in str(info.value)


def test_oversized_file_is_refused(monkeypatch):
    monkeypatch.setattr(images, "MAX_BYTES", 1000)
    with pytest.raises(ImageError, match="limit"):
        images.load_image(encode(photo(64, 64), "BMP"), "big.bmp")


def test_pixel_limit_is_checked_before_decoding():
    with pytest.raises(ImageError) as info:
        images.load_image(encode(photo(200, 200)), "x.png", max_pixels=10_000)
    assert str(info.value).startswith("x.png is 200×200 pixels (0.04 megapixels), over the 0.01-megapixel limit.")


@pytest.mark.parametrize(("side", "pixels"), [(60_000, "3,600,000,000 pixels (3,600 megapixels)"),  # Pillow: error
                                              (10_000, "100,000,000 pixels (100 megapixels)")])  # Pillow: warning
def test_pillows_bomb_refusal_becomes_a_plain_sentence(side, pixels):
    with pytest.raises(ImageError) as info:
        images.load_image(png_bomb(side, side), "bomb.png")
    message = str(info.value)
    assert message.startswith(f"bomb.png has {pixels}, over the 64-megapixel limit.")
    assert "decompression bomb" in message and "DOS" not in message and "exceeds" not in message
    with pytest.raises(ImageError, match="over the 64-megapixel limit"):
        images.image_size(png_bomb(side, side), "bomb.png")  # the header-only reader says the same


def test_to_tensor_normalises_with_meta():
    image = Image.new("RGB", (50, 40), (128, 64, 255))
    x = images.to_tensor(image, 32, mean=(0.5, 0.25, 1.0), std=(0.5, 0.25, 0.5))
    assert x.shape == (1, 3, 32, 32)
    expected = torch.tensor([(128 / 255 - 0.5) / 0.5, (64 / 255 - 0.25) / 0.25, (1.0 - 1.0) / 0.5])
    torch.testing.assert_close(x[0, :, 5, 5], expected, atol=1e-5, rtol=0)


def test_fit_to_input_crops_to_the_input_aspect():
    assert images.fit_to_input(photo(300, 100), 32).size == (100, 100)
    assert images.fit_to_input(photo(300, 100), [3, 32, 64]).size == (200, 100)


def test_image_hash_depends_on_pixels_only():
    a = photo(32, 32, seed=1)
    assert images.image_hash(a) == images.image_hash(images.load_image(encode(a)))
    assert images.image_hash(a) != images.image_hash(photo(32, 32, seed=2))


def test_package_gallery_photos_load():
    items = images.gallery(dataset=None)
    assert len(items) >= 3
    for item in items[:3]:
        assert images.load_image(item.read(), item.label).mode == "RGB"


def _dataset_zip(path, big_member: bool = False):
    with zipfile.ZipFile(path, "w") as archive:
        for label in ("cat", "dog"):
            for split in ("train", "test"):
                for i in range(2):
                    archive.writestr(f"{split}/{label}/{i:04d}.png", encode(photo(32, 32, seed=i)))
        if big_member:
            archive.writestr("test/zebra/0000.png", b"\0" * (images.MAX_MEMBER_BYTES + 1))
    return path


def test_dataset_samples_from_zip_one_per_class_of_the_test_split(tmp_path):
    items = images.dataset_samples(_dataset_zip(tmp_path / "d.zip", big_member=True))
    assert [i.label.split(" ")[0] for i in items] == ["cat", "dog"]  # the oversized member is skipped
    assert images.load_image(items[0].read()).size == (32, 32)


def test_dataset_samples_from_folder_and_env(tmp_path, monkeypatch):
    for label in ("a", "b"):
        (tmp_path / "val" / label).mkdir(parents=True)
        photo(16, 16).save(tmp_path / "val" / label / "x.png")
    monkeypatch.setenv("RESATTN_GALLERY_DATA", str(tmp_path))
    labels = [i.label for i in images.gallery()]
    assert "a (x.png)" in labels and "b (x.png)" in labels
