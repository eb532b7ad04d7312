"""Training data: one interface over torchvision's CIFAR-10, ImageFolder trees and zips of such trees.

The fast input path decodes every image once into a uint8 tensor (kept in memory and, optionally, cached on disk
as ``.npy``), then augments whole batches on the training device, so on a GPU the CPU never bounds the step rate:

* CIFAR-style (small images): zero-pad 4, random crop, horizontal flip (paper §4.1), done with one gather;
* larger images: random-resized crop (scale 0.08–1, ratio 3/4–4/3) and flip, done with one ``grid_sample``.

Zips are read in place (no extraction step); member sizes are bounded so a malicious archive cannot exhaust
memory, and decoding uses Pillow's decompression-bomb guard.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from .preprocess import resize_center_crop

__all__ = [
    "KNOWN_CLASS_NAMES",
    "class_names",
    "native_size",
    "IMAGE_EXTENSIONS",
    "DataError",
    "SplitSource",
    "open_split",
    "Decoded",
    "load_split",
    "split_labels",
    "Normalizer",
    "augment_crop_flip",
    "augment_resized_crop_flip",
    "label_noise",
    "BatchIterator",
    "read_member",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
MAX_MEMBER_BYTES = 64 * 1024 * 1024  # one image file inside a zip; a larger member is refused, not read


class DataError(ValueError):
    """A data source cannot be used; the message says why."""


@dataclass
class SplitSource:
    """The images of one split (``train``, ``test``/``val``) of a class-per-folder tree, in a folder or a zip."""

    root: str
    split: str
    classes: list[str]
    items: list[tuple[str, int]]  # (path or zip member, class index), sorted

    def __len__(self) -> int:
        return len(self.items)

    def read(self, i: int) -> bytes:
        """The encoded bytes of image ``i``."""
        name = self.items[i][0]
        if self.root.endswith(".zip"):
            with zipfile.ZipFile(self.root) as zf:
                return read_member(zf, name)
        return Path(name).read_bytes()

    def iter_bytes(self) -> Iterator[tuple[bytes, int]]:
        """All images in order, opening a zip only once."""
        if self.root.endswith(".zip"):
            with zipfile.ZipFile(self.root) as zf:
                for name, label in self.items:
                    yield read_member(zf, name), label
        else:
            for name, label in self.items:
                yield Path(name).read_bytes(), label


def read_member(zf: zipfile.ZipFile, name: str, limit: int | None = None) -> bytes:
    """One member of an open zip, refusing members over ``limit`` bytes (default ``MAX_MEMBER_BYTES``) whether
    the archive admits their size or lies about it (a zip bomb)."""
    limit = MAX_MEMBER_BYTES if limit is None else limit
    info = zf.getinfo(name)
    if info.file_size > limit:
        raise DataError(f"zip member {name} claims {info.file_size} bytes, over the {limit}-byte limit")
    with zf.open(info) as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise DataError(f"zip member {name} expands beyond the {limit}-byte limit; refusing it")
    return data


def _split_names(split: str) -> tuple[str, ...]:
    return ("test", "val") if split in ("test", "val") else (split,)


def open_split(root: str | os.PathLike[str], split: str) -> SplitSource:
    """List one split of an ImageFolder-style tree: ``root/<split>/<class>/<image>``.

    ``root`` is a folder or a ``.zip`` holding that tree (optionally under one top-level folder). ``test`` falls
    back to ``val`` (Imagenette's name for it). Class indices follow sorted class-folder names, as ImageFolder.
    """
    root = os.fspath(root)
    if root.endswith(".zip"):
        if not zipfile.is_zipfile(root):
            raise DataError(f"{root} is not a readable zip file")
        with zipfile.ZipFile(root) as zf:
            names = [i.filename for i in zf.infolist() if not i.is_dir()]
        files = names
    else:
        if not os.path.isdir(root):
            raise DataError(f"{root}: no such dataset folder or zip")
        files = [str(p) for p in Path(root).rglob("*") if p.is_file()]
    for split_name in _split_names(split):
        per_class: dict[str, list[str]] = {}
        for name in files:
            rel = os.path.relpath(name, root) if not root.endswith(".zip") else name
            parts = Path(rel).parts
            # accept root/split/class/file or root/top/split/class/file
            for offset in (0, 1):
                if len(parts) == offset + 3 and parts[offset] == split_name:
                    if parts[-1].lower().endswith(IMAGE_EXTENSIONS) and ".." not in parts:
                        per_class.setdefault(parts[offset + 1], []).append(name)
                    break
        if per_class:
            classes = sorted(per_class)
            items = [(n, c) for c, cls in enumerate(classes) for n in sorted(per_class[cls])]
            return SplitSource(root, split_name, classes, items)
    raise DataError(f"{root} has no '{'/'.join(_split_names(split))}/<class>/<image>' tree")


@dataclass
class Decoded:
    """A split decoded once: uint8 images N×C×H×W, int64 labels N, and the class names."""

    images: Tensor
    labels: Tensor
    classes: list[str]
    source: str


def _decode(data: bytes, size: int | None, crop: int | None = None) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        img = img.convert("RGB")
        if size is not None:
            img = resize_center_crop(img, size, crop)
        return np.asarray(img, dtype=np.uint8)


def _cache_key(listing: SplitSource, size: int | None, crop: int | None) -> str:
    """Which decoded cache a split uses. A zip's split is named by its members' names, CRC-32s and sizes (read
    from the zip's directory, not its bytes), so the cache outlives a copy, a move or a new modification time of
    the same archive (a dataset mounted afresh each session) and misses when any image changes. A folder is
    named by its path, size and modification time."""
    if listing.root.endswith(".zip"):
        with zipfile.ZipFile(listing.root) as zf:
            members = [zf.getinfo(name) for name, _ in listing.items]
        identity = "\n".join(f"{m.filename}|{m.CRC}|{m.file_size}|{label}"
                              for m, (_, label) in zip(members, listing.items))
        text = f"zip|{identity}|{'/'.join(listing.classes)}"
    else:
        st = os.stat(listing.root)
        text = f"{os.path.abspath(listing.root)}|{st.st_size}|{st.st_mtime_ns}"
    return hashlib.sha256(f"{text}|{listing.split}|{size}|{crop}|v2".encode()).hexdigest()[:16]


def _save_atomically(folder: Path, name: str, value: np.ndarray) -> None:
    """Write ``folder/name`` through a temporary file of this writer's own, so that two processes decoding the same
    split at once (two training runs started together) each replace the file whole instead of racing for one
    temporary name."""
    with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{name}.", suffix=".tmp", delete=False) as fh:
        np.save(fh, value)
    os.replace(fh.name, folder / name)


#: Human class names for dataset folders named by ImageNet WordNet ids (Imagenette's ten classes).
KNOWN_CLASS_NAMES: dict[str, str] = {
    "n01440764": "tench",
    "n02102040": "English springer",
    "n02979186": "cassette player",
    "n03000684": "chain saw",
    "n03028079": "church",
    "n03394916": "French horn",
    "n03417042": "garbage truck",
    "n03425413": "gas pump",
    "n03445777": "golf ball",
    "n03888257": "parachute",
}


def class_names(folders: list[str]) -> list[str]:
    """Display names for class folders: known WordNet ids become their names, other folder names stay."""
    return [KNOWN_CLASS_NAMES.get(f, f) for f in folders]


def native_size(source: str | os.PathLike[str], split: str = "train") -> tuple[int, int]:
    """(width, height) of the first image of a split, without decoding the rest (32×32 for torchvision CIFAR-10)."""
    source = os.fspath(source)
    if source == "cifar10" or source.startswith("cifar10:"):
        return 32, 32
    listing = open_split(source, split)
    if not len(listing):
        raise DataError(f"{source}: the {split} split is empty")
    with Image.open(io.BytesIO(listing.read(0))) as img:
        return img.size


def _cifar10(source: str, split: str, download: bool):  # noqa: ANN202 - torchvision's dataset
    from torchvision.datasets import CIFAR10

    root = source.partition(":")[2] or os.path.join(os.path.expanduser("~"), ".cache", "resattn", "cifar10")
    return CIFAR10(root, train=split == "train", download=download)


def split_labels(source: str | os.PathLike[str], split: str, download: bool = True) -> tuple[Tensor, list[str]]:
    """(labels, class folders) of a split, from its listing: no image is decoded. Indices into these labels are
    what :func:`load_split` takes as ``items``."""
    source = os.fspath(source)
    if source == "cifar10" or source.startswith("cifar10:"):
        ds = _cifar10(source, split, download)
        return torch.tensor(ds.targets, dtype=torch.int64), list(ds.classes)
    listing = open_split(source, split)
    return torch.tensor([label for _, label in listing.items], dtype=torch.int64), listing.classes


def load_split(
    source: str | os.PathLike[str],
    split: str,
    size: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    progress: bool = False,
    crop: int | None = None,
    items: Sequence[int] | None = None,
) -> Decoded:
    """Decode a split into uint8 tensors: all of it, or only ``items`` (indices into its listing, in that order),
    so memory follows what a run uses, not what the source holds.

    ``source`` is ``"cifar10"`` or ``"cifar10:<root>"`` (torchvision's canonical CIFAR-10, downloaded when
    ``download`` and not present), a folder, or a zip. ``size`` resizes every image so its shorter side is ``size``
    and keeps the centre ``crop``×``crop`` square (``crop=None``: ``size``×``size``), as
    :func:`resattn.preprocess.resize_center_crop`; needed when sizes differ. With ``cache_dir`` the decoded arrays
    of a whole split are stored as ``.npy`` and reused next time (a cached split serves ``items`` too, read
    through a memory map; ``items`` alone are never cached). The torchvision source ignores ``size`` and ``crop``.
    """
    source = os.fspath(source)
    pick = None if items is None else torch.as_tensor(list(items), dtype=torch.int64)
    if source == "cifar10" or source.startswith("cifar10:"):
        ds = _cifar10(source, split, download)
        images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2)
        labels = torch.tensor(ds.targets, dtype=torch.int64)
        if pick is not None:
            images, labels = images[pick], labels[pick]
        return Decoded(images.contiguous(), labels, list(ds.classes), "cifar10")
    listing = open_split(source, split)
    cache: Path | None = None
    if cache_dir is not None:
        cache = Path(cache_dir) / f"{Path(source).stem}-{listing.split}-{_cache_key(listing, size, crop)}"
        if (cache / "images.npy").exists() and (cache / "labels.npy").exists():
            mapped = np.load(cache / "images.npy", mmap_mode="r")
            labels = torch.from_numpy(np.load(cache / "labels.npy"))
            if len(labels) == len(listing):
                if pick is None:
                    return Decoded(torch.from_numpy(np.array(mapped)), labels, listing.classes, source)
                rows = np.ascontiguousarray(mapped[pick.numpy()])
                return Decoded(torch.from_numpy(rows), labels[pick], listing.classes, source)
    if pick is not None:
        listing = SplitSource(listing.root, listing.split, listing.classes, [listing.items[i] for i in pick.tolist()])
        cache = None
    arrays: list[np.ndarray] = []
    labels_list: list[int] = []
    iterator = listing.iter_bytes()
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, total=len(listing), desc=f"decode {listing.split}", unit="img")
    first_shape = None
    for data, label in iterator:
        try:
            array = _decode(data, size, crop)
        except (OSError, Image.DecompressionBombError) as exc:
            raise DataError(f"{source}: image {len(arrays)} of {listing.split} cannot be decoded: {exc}") from exc
        first_shape = first_shape or array.shape
        if array.shape != first_shape:
            raise DataError(f"{source}: images have different sizes ({first_shape} and {array.shape}); pass a size")
        arrays.append(array)
        labels_list.append(label)
    if not arrays:
        raise DataError(f"{source}: no {listing.split} images to decode")
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor(labels_list, dtype=torch.int64)
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        for name, value in (("images.npy", images.numpy()), ("labels.npy", labels.numpy())):
            _save_atomically(cache, name, value)
    return Decoded(images, labels, listing.classes, source)


class Normalizer(torch.nn.Module):
    """uint8 → float: x/255, minus the mean (per channel or per pixel), divided by the std (per channel)."""

    def __init__(self, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        mean = torch.as_tensor(mean, dtype=torch.float32)
        std = torch.as_tensor(std, dtype=torch.float32)
        self.register_buffer("mean", mean.view(-1, 1, 1) if mean.dim() == 1 else mean)
        self.register_buffer("std", std.view(-1, 1, 1))

    @classmethod
    def from_images(cls, images: Tensor, per_pixel: bool) -> "Normalizer":
        """Statistics of a uint8 N×C×H×W training set: the per-pixel mean image (the paper's CIFAR recipe,
        std 1) or the per-channel mean and std."""
        x = images.float().div_(255)
        if per_pixel:
            return cls(x.mean(dim=0), torch.ones(images.shape[1]))
        return cls(x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3)))

    def forward(self, x: Tensor) -> Tensor:
        return (x.float() / 255 - self.mean) / self.std

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std for inference-time preprocessing (checkpoint meta)."""
        mean = self.mean.mean(dim=(-2, -1)) if self.mean.dim() == 3 and self.mean.shape[-1] > 1 else self.mean.flatten()
        return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in self.std.flatten()]


def augment_crop_flip(
    x: Tensor, pad: int = 4, generator: torch.Generator | None = None, rank: int = 0, world_size: int = 1
) -> Tensor:
    """Zero-pad by ``pad``, take a random crop of the original size, flip horizontally with probability ½.

    ``x`` is a normalised float batch N×C×H×W, so the zero padding is the mean colour, as in the paper.
    Every sample gets its own crop and flip; the work is one gather on ``x``'s device. Under DDP each process
    draws the parameters of the whole global batch (N·``world_size``) and keeps samples ``rank::world_size``
    (:class:`BatchIterator`'s split), so the augmentation does not depend on the number of processes.
    """
    n, _, h, w = x.shape
    device = x.device
    padded = F.pad(x, (pad, pad, pad, pad))
    total, mine = n * world_size, slice(rank, None, world_size)
    dy = torch.randint(0, 2 * pad + 1, (total,), generator=generator, device="cpu")[mine].to(device, non_blocking=True)
    dx = torch.randint(0, 2 * pad + 1, (total,), generator=generator, device="cpu")[mine].to(device, non_blocking=True)
    flip = torch.rand(total, generator=generator, device="cpu")[mine].to(device, non_blocking=True) < 0.5
    rows = dy[:, None] + torch.arange(h, device=device)  # N×H
    cols = dx[:, None] + torch.arange(w, device=device)  # N×W
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    idx_n = torch.arange(n, device=device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]]  # N×H×W×C
    return out.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format)


def augment_resized_crop_flip(
    x: Tensor,
    size: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> Tensor:
    """Random-resized crop (Inception-style scale and aspect augmentation, paper §4.2) and flip, batched.

    One affine ``grid_sample`` per batch: each sample gets its own area fraction, aspect ratio, position and flip.
    ``rank`` / ``world_size``: as :func:`augment_crop_flip`.
    """
    n = x.shape[0]
    total, mine = n * world_size, slice(rank, None, world_size)
    area = torch.empty(total).uniform_(*scale, generator=generator)[mine]
    log_r = torch.empty(total).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)[mine]
    aspect = torch.exp(log_r)
    sw = torch.sqrt(area * aspect).clamp(max=1.0)  # crop width / image width
    sh = torch.sqrt(area / aspect).clamp(max=1.0)
    tx = (torch.rand(total, generator=generator)[mine] * 2 - 1) * (1 - sw)
    ty = (torch.rand(total, generator=generator)[mine] * 2 - 1) * (1 - sh)
    flip = torch.where(torch.rand(total, generator=generator)[mine] < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = sw * flip
    theta[:, 0, 2] = tx
    theta[:, 1, 1] = sh
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta.to(x.device, x.dtype), [n, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def label_noise(labels: Tensor, level: float, num_classes: int, seed: int) -> Tensor:
    """The paper's Table 5 protocol (Sukhbaatar et al.): keep each label with probability r = 1 − ``level``,
    otherwise replace it by one of the *other* classes chosen uniformly. Deterministic for a seed."""
    if not 0 <= level < 1:
        raise ValueError(f"label noise must be in [0, 1), got {level}")
    if level == 0:
        return labels.clone()
    g = torch.Generator().manual_seed(seed)
    flip = torch.rand(len(labels), generator=g) < level
    shift = torch.randint(1, num_classes, (len(labels),), generator=g)
    return torch.where(flip, (labels + shift) % num_classes, labels)


class BatchIterator:
    """Shuffled (or ordered) mini-batches of a decoded split, resumable from a position within an epoch.

    With ``rank``/``world_size`` (DDP) process r takes positions r, r + W, r + 2W, … of every epoch's order, so
    batch b of all processes together is batch b of one process with a W-times larger batch. Training
    (``drop_last``) gives every process the same number of images; evaluation (no ``drop_last``) gives every
    image to exactly one process, none dropped.
    """

    def __init__(
        self,
        data: Decoded,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.data, self.batch_size, self.shuffle = data, batch_size, shuffle
        self.seed, self.drop_last, self.rank, self.world_size = seed, drop_last, rank, world_size

    def indices(self, epoch: int) -> Tensor:
        n = len(self.data.labels)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + epoch)) if self.shuffle else torch.arange(n)
        if self.world_size == 1:
            return order
        if self.drop_last:
            order = order[: n - n % self.world_size]
        return order[self.rank :: self.world_size]

    def batches_per_epoch(self) -> int:
        n = len(self.indices(0))
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """uint8 image batches and labels for ``epoch``, from batch ``start_batch`` on."""
        order = self.indices(epoch)
        for b in range(start_batch, self.batches_per_epoch()):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield self.data.images[idx], self.data.labels[idx]
