"""Image files for the tests, generated in memory: good ones in every mode and format, and bad ones of each kind."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image


def photo(width: int = 96, height: int = 64, seed: int = 0) -> Image.Image:
    """A smooth colourful RGB picture with a bright blob (something for the masks to look at)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    cy, cx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width
    blob = np.exp(-(((yy - cy) / (0.2 * height)) ** 2 + ((xx - cx) / (0.2 * width)) ** 2))
    rgb = np.stack([xx / width, yy / height, blob], axis=-1) * 255
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_bomb(width: int = 60_000, height: int = 60_000) -> bytes:
    """A tiny PNG whose header claims width×height pixels: refused before any decoding."""
    data = bytearray(encode(Image.new("L", (8, 8))))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr : ihdr + 17])) & 0xFFFFFFFF
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


def bad_files() -> dict[str, tuple[str, bytes]]:
    """One file of each bad kind: kind → (filename, bytes)."""
    good = encode(photo(64, 64))
    corrupt = bytearray(good)
    idat = corrupt.index(b"IDAT")
    corrupt[idat + 20 : idat + 60] = b"\xff" * 40  # valid header, garbage in the compressed pixels
    return {
        "empty": ("empty.png", b""),
        "truncated": ("truncated.png", good[: len(good) // 2]),
        "corrupt": ("corrupt.png", bytes(corrupt)),
        "non-image": ("notes.png", b"these are lecture notes, not a picture\n" * 20),
        "unsupported": ("picture.png", encode(photo(16, 16), "PPM")),
        "bomb": ("bomb.png", png_bomb()),
    }


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """One intra-op thread while a module's tests run: on a loaded 2-core machine a second OpenMP thread that
    cannot get a core makes every pass wait on it (measured: 6 s instead of 30 ms for one tiny backward pass)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
