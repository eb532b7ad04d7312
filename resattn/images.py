"""Safe image loading for the explorer, the command lines and the jobs.

Everything a user can hand us goes through :func:`load_image`: it reads only formats we expect, refuses
decompression bombs *before* decoding, applies the EXIF orientation, converts every mode (greyscale, palette,
RGBA, CMYK, 16-bit) to 8-bit RGB, takes the first frame of an animation (and says so: :func:`image_notes`) and
downscales very large images. Any way a file can be wrong, too small or too large included, raises
:class:`ImageError` with a plain sentence a user can act on.

The offline gallery lists sample photos that ship inside installed packages (scikit-image, scikit-learn,
matplotlib) and, when ``RESATTN_GALLERY_DATA`` names a dataset folder or zip with a ``test/`` or ``val/`` split,
a few of its images read straight from the zip (never extracted).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from .data import DataError, class_names, open_split, read_member

__all__ = [
    "ImageError",
    "FORMATS",
    "EXTENSIONS",
    "MAX_BYTES",
    "MAX_PIXELS",
    "MAX_SIDE",
    "MIN_SIDE",
    "load_image",
    "image_notes",
    "image_size",
    "image_hash",
    "fit_to_input",
    "to_tensor",
    "GalleryItem",
    "gallery",
]

#: Formats the explorer accepts (PIL's names; MPO is what phone cameras write for JPEG).
FORMATS: frozenset[str] = frozenset({"PNG", "JPEG", "MPO", "WEBP", "BMP", "GIF", "TIFF"})
#: File extensions offered in the upload dialog.
EXTENSIONS: tuple[str, ...] = ("png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff")
#: Largest file we read (bytes); the app's upload cap in .streamlit/config.toml is the same order.
MAX_BYTES = 50 * 1024 * 1024
#: Largest image we decode (pixels); a larger header is a decompression bomb, refused before decoding.
MAX_PIXELS = 64_000_000
#: Images are downscaled so that their longer side is at most this many pixels before anything else.
MAX_SIDE = 1024
#: Smallest shorter side (pixels) of an image we accept. The smallest model input is 32×32, so a smaller picture
#: is blown up before the model sees it; below 8 pixels each of its pixels becomes a block of 4×4 input pixels or
#: more, and there is nothing left to recognise or for a mask to point at. 8 still takes icons and thumbnails.
MIN_SIDE = 8
#: Key in ``Image.info`` under which :func:`load_image` leaves its notes (see :func:`image_notes`).
NOTES_KEY = "resattn_notes"
#: Largest zip member the gallery reads from a dataset archive.
MAX_MEMBER_BYTES = 8 * 1024 * 1024


class ImageError(ValueError):
    """A file cannot be used as an image; the message says why."""


def _megapixels(pixels: float) -> str:
    """A pixel count in megapixels as a teacher reads it aloud: 3,600 / 64 / 1.5 / 0.01."""
    return f"{pixels / 1e6:,.0f}" if pixels >= 10e6 else f"{pixels / 1e6:.2g}"


def _too_many_pixels(name: str, pixels: int, limit: int, size: tuple[int, int] | None = None) -> ImageError:
    """The refusal of an image with more than ``limit`` pixels, in one plain sentence."""
    what = f"is {size[0]}×{size[1]} pixels ({_megapixels(pixels)} megapixels)" if size else \
        f"has {pixels:,} pixels ({_megapixels(pixels)} megapixels)"
    return ImageError(f"{name} {what}, over the {_megapixels(limit)}-megapixel limit. It was refused before its "
                      "pixels were read, because decoding so many pixels could fill the server's memory (a file "
                      "like this can be a decompression bomb).")


def _bomb(name: str, exc: Exception, max_pixels: int) -> ImageError:
    """Pillow's decompression-bomb refusal (``Image size (N pixels) exceeds limit of L pixels, …``) as
    :func:`_too_many_pixels` says it: the pixel count and the lower of Pillow's limit and ours."""
    counts = [int(n) for n in re.findall(r"(\d+) pixels", str(exc))]
    pixels = counts[0] if counts else max_pixels + 1
    return _too_many_pixels(name, pixels, min([max_pixels, *counts[1:2]]))


def _open(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Open the header only, check format and size; decoding happens later, once we know it is safe."""
    if not data:
        raise ImageError(f"{name} is empty (0 bytes)")
    if len(data) > MAX_BYTES:
        raise ImageError(f"{name} is {len(data) / 2**20:.1f} MiB; the limit is {MAX_BYTES // 2**20} MiB")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb(name, exc, max_pixels) from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{name} is not an image, or its format is not recognised") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"{name} is corrupt: {exc}") from exc
    if image.format not in FORMATS:
        raise ImageError(
            f"{name} is a {image.format} image, which is not supported; use one of {', '.join(sorted(FORMATS - {'MPO'}))}"
        )
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageError(f"{name} has no pixels ({width}×{height})")
    if width * height > max_pixels:
        raise _too_many_pixels(name, width * height, max_pixels, (width, height))
    return image


def _frames_note(image: Image.Image, name: str) -> str | None:
    """The note for a file of several frames (an animation, a multi-page TIFF), of which only the first is used;
    None for one frame. An MPO's further frames are the camera's previews, not pictures: no note."""
    frames = getattr(image, "n_frames", 1) if image.format != "MPO" else 1
    if frames <= 1:
        return None
    what = f"has {frames} pages" if image.format == "TIFF" else f"is animated ({frames} frames)"
    return f"{name} {what}: only its first {'page' if image.format == 'TIFF' else 'frame'} is shown and used."


def _to_8bit(array: np.ndarray) -> np.ndarray:
    """Map a 16/32-bit integer or float image to uint8, keeping its relative intensities."""
    array = array.astype(np.float64)
    finite = array[np.isfinite(array)]
    if finite.size == 0:
        return np.zeros(array.shape, np.uint8)
    lo, hi = float(finite.min()), float(finite.max())
    if lo >= 0 and hi <= 1.0:
        scale = 1.0  # float image in [0, 1]
    elif lo >= 0 and hi <= 255:
        scale = 255.0
    elif lo >= 0 and hi <= 65535:
        scale = 65535.0  # 16-bit
    else:
        array, scale = array - lo, max(hi - lo, 1e-12)
    return np.clip(np.nan_to_num(array) / scale * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB. Transparency is composited on white, so it does not turn black."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return Image.fromarray(_to_8bit(np.asarray(image)), "L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def load_image(
    source: bytes | str | os.PathLike[str],
    name: str | None = None,
    *,
    max_side: int = MAX_SIDE,
    max_pixels: int = MAX_PIXELS,
) -> Image.Image:
    """Read an image file (bytes or path) safely and return it as 8-bit RGB, oriented and at most ``max_side``.

    Raises :class:`ImageError` for empty, oversized, corrupt, truncated, non-image and unsupported files, and for
    images under :data:`MIN_SIDE` pixels on their shorter side. What the caller should tell the user about an image
    it accepted (only the first frame of an animation is used) is read with :func:`image_notes`.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, name = bytes(source), name or "the file"
    else:
        path = Path(source)
        name = name or path.name
        if not path.is_file():
            raise ImageError(f"{name}: no such file")
        if path.stat().st_size > MAX_BYTES:
            raise ImageError(f"{name} is larger than {MAX_BYTES // 2**20} MiB")
        data = path.read_bytes()
    image = _open(data, name, max_pixels)
    if min(image.size) < MIN_SIDE:
        width, height = image.size
        raise ImageError(f"{name} is only {width}×{height} pixels, too small to show anything: an image needs at "
                         f"least {MIN_SIDE} pixels on each side (the models look at 32×32 pixels or more).")
    try:
        note = _frames_note(image, name)
        image.seek(0)  # first frame of a GIF / multi-page TIFF
        if image.format in ("JPEG", "MPO"):
            image.draft("RGB", (max_side, max_side))  # decode big JPEGs at a reduced scale directly
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
        image = ImageOps.exif_transpose(image) or image
        image = _to_rgb(image)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb(name, exc, max_pixels) from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageError(f"{name} is truncated or corrupt: {exc}") from exc
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    if note:
        image.info[NOTES_KEY] = (note,)
    return image


def image_notes(image: Image.Image) -> tuple[str, ...]:
    """What a page should tell the user about an image :func:`load_image` accepted, one sentence each (empty for
    most images): e.g. that an animated GIF is used by its first frame only. The notes travel in ``image.info``,
    so they survive Streamlit's caching of the decoded image."""
    return tuple(image.info.get(NOTES_KEY, ()))


def image_size(data: bytes, name: str = "the file", *, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """(width, height) of an encoded image read from its header only, nothing decoded: what decoding it would
    cost is known first. Raises :class:`ImageError` as :func:`load_image` does for a file it would refuse before
    decoding (not an image, an unsupported format, more than ``max_pixels`` pixels)."""
    with _open(data, name, max_pixels) as image:
        return image.size


def image_hash(image: Image.Image) -> str:
    """SHA-256 of the decoded RGB pixels and size: the cache key for every map derived from an image."""
    digest = hashlib.sha256(f"{image.mode}{image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def _size_pair(size: int | Sequence[int]) -> tuple[int, int]:
    """``input_size`` from checkpoint meta as (height, width); accepts 32, [32, 32] or [3, 32, 32]."""
    if isinstance(size, int):
        return size, size
    values = [int(v) for v in size]
    return (values[-2], values[-1]) if len(values) >= 2 else (values[0], values[0])


def fit_to_input(image: Image.Image, input_size: int | Sequence[int]) -> Image.Image:
    """Centre-crop ``image`` to the aspect ratio of the model input, keeping its resolution.

    This is the region the model sees, so maps upsampled to it line up with the picture.
    """
    height, width = _size_pair(input_size)
    return ImageOps.fit(image, _fit_size(image.size, width / height), Image.Resampling.BICUBIC)


def _fit_size(size: tuple[int, int], aspect: float) -> tuple[int, int]:
    w, h = size
    return (w, max(1, round(w / aspect))) if w / h < aspect else (max(1, round(h * aspect)), h)


def to_tensor(
    image: Image.Image,
    input_size: int | Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
) -> Tensor:
    """Preprocess as the checkpoint was trained: crop to the input aspect, resize, scale to [0, 1], normalise.

    Returns a 1×3×H×W float tensor.
    """
    height, width = _size_pair(input_size)
    fitted = fit_to_input(image, (height, width)).resize((width, height), Image.Resampling.BILINEAR)
    x = torch.from_numpy(np.asarray(fitted, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return ((x - mean_t) / std_t).unsqueeze(0)


# ---------------------------------------------------------------------------------------------------------------
# Gallery
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GalleryItem:
    """One gallery photo: a label for the picker, where it comes from, how to read its bytes, and what it shows
    (class names, so a page can say whether a model knows any of them)."""

    label: str
    source: str
    read: Callable[[], bytes]
    shows: tuple[str, ...] = ()

    def shown_in(self, classes: Sequence[str]) -> str | None:
        """The first of ``classes`` (folder or display names) that this photo shows, or None."""
        known = {c.lower() for c in classes}
        return next((s for s in self.shows if s.lower() in known), None)


def _package_photos() -> list[GalleryItem]:
    """Photos shipped inside installed packages; a package that is missing is skipped."""
    found: list[tuple[str, str, Path, tuple[str, ...]]] = []
    try:
        import skimage

        root = Path(skimage.__file__).parent / "data"
        for stem, label, shows in (("astronaut.png", "astronaut", ("person",)), ("chelsea.png", "cat (Chelsea)", ("cat",)),
                                   ("coffee.png", "coffee cup", ("coffee mug", "cup")), ("rocket.jpg", "rocket", ("rocket",)),
                                   ("motorcycle_left.png", "motorcycle", ("motorcycle",)),
                                   ("camera.png", "cameraman (greyscale)", ("person", "camera"))):
            found.append((label, "scikit-image", root / stem, shows))
    except ImportError:
        pass
    try:
        import sklearn.datasets

        root = Path(sklearn.datasets.__file__).parent / "images"
        found += [("china (temple)", "scikit-learn", root / "china.jpg", ("palace", "temple")),
                  ("flower", "scikit-learn", root / "flower.jpg", ("flower",))]
    except ImportError:
        pass
    try:
        import matplotlib

        found.append(("Grace Hopper", "matplotlib", Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg",
                      ("person",)))
    except ImportError:
        pass
    return [GalleryItem(label, source, path.read_bytes, shows) for label, source, path, shows in found if path.is_file()]


def _zip_reader(path: Path, member: str) -> Callable[[], bytes]:
    def read() -> bytes:
        with zipfile.ZipFile(path) as archive:
            try:
                return read_member(archive, member, MAX_MEMBER_BYTES)
            except DataError as exc:
                raise ImageError(f"{path.name}: {exc}") from exc

    return read


def dataset_samples(location: str | os.PathLike[str], limit: int = 10) -> list[GalleryItem]:
    """Up to ``limit`` images from the test/val split of a dataset folder or zip (the first one per class).

    The split is listed by :func:`resattn.data.open_split`, the same reader training uses; a zip member larger
    than ``MAX_MEMBER_BYTES`` is skipped rather than offered."""
    try:
        split = open_split(location, "test")
    except DataError:
        return []
    first: dict[int, str] = {}
    for member, label in split.items:
        first.setdefault(label, member)
    picks = sorted(first.items())
    path = Path(location)
    if split.root.endswith(".zip"):
        with zipfile.ZipFile(path) as archive:
            picks = [(c, m) for c, m in picks if archive.getinfo(m).file_size <= MAX_MEMBER_BYTES]
        readers = [_zip_reader(path, m) for _, m in picks]
    else:
        readers = [Path(m).read_bytes for _, m in picks]
    return [
        GalleryItem(f"{class_names([split.classes[c]])[0]} ({Path(m).name})", path.name, read,
                    (split.classes[c], class_names([split.classes[c]])[0]))
        for (c, m), read in zip(picks[:limit], readers[:limit])
    ]


def gallery(dataset: str | os.PathLike[str] | None = None) -> list[GalleryItem]:
    """The offline gallery: package sample photos, then dataset samples if ``dataset`` (or the
    ``RESATTN_GALLERY_DATA`` environment variable) names a folder or zip."""
    items = _package_photos()
    dataset = dataset or os.environ.get("RESATTN_GALLERY_DATA")
    if dataset:
        try:
            items += dataset_samples(dataset)
        except (OSError, zipfile.BadZipFile):
            pass  # a misconfigured dataset must not take the gallery down
    return items
