"""What the Dataset page needs beside Streamlit widgets: where datasets come from, the current model without an
image, masks over a dataset collected in cached chunks (with progress), and the hand-over of one dataset image to
the sidebar (``picked_image``), so Explore can open it.

* Datasets: ``RESATTN_DATASETS`` (``name=path,name=path``, the variable the jobs use; each path a folder or zip with
  ``train/`` and ``test/`` or ``val/`` class folders, or ``cifar10``: torchvision's CIFAR-10, the default when the
  variable is unset, listed like a folder by :class:`TorchvisionSplit` once :func:`download_cifar10` has fetched
  it), or an uploaded zip, checked and extracted by :mod:`resattn.archive` into a temporary folder that lives as
  long as its cache entry (``check_and_extract``). The page opens on :func:`default_dataset`, one whose classes
  the sidebar's model knows.
* Masks: :func:`resattn.masks.collect_masks` over ``limit`` images spread evenly through the split
  (:func:`resattn.masks.spread_indices`; splits are sorted by class, so this spreads over classes), decoded and
  cropped exactly as the sidebar's images are (:func:`resattn.images.load_image`, then the checkpoint's
  :class:`~resattn.preprocess.Preprocessing`), so a picked image gives the same prediction in Explore.
  Chunks of :data:`CHUNK` images are ``st.cache_data`` entries keyed by (model key, dataset, split, limit, chunk);
  the page shows progress between chunks.
* Labels: dataset class folders are matched to the model's classes by folder name (``class_folders`` in the
  checkpoint) or display name, so a dataset with some of a model's classes (cat/dog/frog for a CIFAR-10 model)
  works; a class the model does not know is refused with a message.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st
import torch
from PIL import Image

from resattn import archive, images, jobs, masks
from resattn.data import DataError, Decoded, SplitSource, class_names, load_split, open_split, read_member
from resattn.preprocess import Preprocessing

from . import state

#: Images per cached chunk (one progress step, one batched pass).
CHUNK = 50
#: How many images the page collects unless told otherwise, and the most it allows.
DEFAULT_LIMIT = 200
MAX_LIMIT = 5000
#: Longer side at which grid pictures are kept (the model's input, reduced if it is larger).
STORED_SIDE = 128
#: Limits of an uploaded zip (resattn.archive's defaults: CIFAR-10- and Imagenette-sized sets fit).
UPLOAD_LIMITS = archive.Limits()
PICK_KEY = "dataset_pick"


# ----------------------------------------------------------------------------------------------- sources


def configured_datasets() -> dict[str, str]:
    """``RESATTN_DATASETS`` as {name: path} (``{"cifar10": "cifar10"}`` when unset); the jobs' parser, so both
    read the variable the same way."""
    return jobs.configured_datasets()


def source_key(name: str, path: str) -> str:
    """A cache key for a configured dataset that changes when its file or folder changes."""
    if is_torchvision(path):
        return f"{name}={path}|torchvision"
    try:
        stat = os.stat(path)
        return f"{name}={os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}"
    except OSError:
        return f"{name}={path}|missing"


@dataclass
class UploadedDataset:
    """An uploaded zip, checked and extracted into its own temporary folder (removed with this object)."""

    root: Path
    classes: list[str]
    counts: dict[str, int]
    layout: str
    skipped: list[str]
    folder: Any = field(repr=False)  # the tempfile.TemporaryDirectory that owns ``root``


def check_and_extract(zip_path: Path, target: Path) -> archive.Extracted:
    """ADAPTER over :func:`resattn.archive.extract_dataset_apart`: the one place this app calls the zip checks
    (paths that escape, links, special files, file-count, byte and pixel limits, non-images), in a child process
    so the server's own thread never decodes an upload; raises ``resattn.archive.ArchiveError`` with the reason."""
    return archive.extract_dataset_apart(zip_path, target, UPLOAD_LIMITS)


@st.cache_resource(show_spinner=False, max_entries=4, ttl=3600)
def extracted_upload(digest: str, name: str, _data: bytes) -> UploadedDataset:
    """Check and extract an uploaded zip (cached by its SHA-256); raises ``ArchiveError``. Nothing is written
    outside a fresh temporary folder, which is deleted when the cache entry goes."""
    folder = tempfile.TemporaryDirectory(prefix="resattn-dataset-")
    try:
        zip_path = Path(folder.name) / jobs.safe_file_name(name)
        zip_path.write_bytes(_data)
        extracted = check_and_extract(zip_path, Path(folder.name) / "data")
        zip_path.unlink()
    except BaseException:
        folder.cleanup()
        raise
    return UploadedDataset(extracted.root, extracted.classes, extracted.counts, extracted.layout,
                           extracted.skipped, folder)


def upload_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@st.cache_data(show_spinner=False, max_entries=32)
def listing(key: str, path: str, split: str) -> SplitSource:
    """The files of one split (no image decoded), cached by the dataset's key; raises ``DataError`` (for
    torchvision's CIFAR-10 not yet downloaded: one that says how to get it)."""
    return torchvision_split(path, split) if is_torchvision(path) else open_split(path, split)


def dataset_classes(name: str, path: str) -> list[str] | None:
    """A configured dataset's class folders (CIFAR-10's are known before it is downloaded); None if unreadable."""
    if is_torchvision(path):
        return list(CIFAR10_CLASSES)
    try:
        return listing(source_key(name, path), path, "test").classes
    except DataError:
        return None


def fits(name: str, path: str, meta: dict[str, Any]) -> bool:
    """Whether the model (``meta``) knows every class of a configured dataset."""
    try:
        return bool(label_map(dataset_classes(name, path) or [], meta))
    except ValueError:
        return False


def default_dataset(datasets: dict[str, str], meta: dict[str, Any]) -> str | None:
    """The dataset the page opens on: the first of ``datasets`` whose classes the model (``meta``) knows, else
    the first one; None when there is none."""
    return next((name for name, path in datasets.items() if fits(name, path, meta)), next(iter(datasets), None))


# ------------------------------------------------------------------------------ torchvision's CIFAR-10

#: CIFAR-10's classes in torchvision's label order (alphabetical, as a folder listing sorts them).
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"


def is_torchvision(path: str) -> bool:
    """Whether a dataset path means torchvision's CIFAR-10 (``cifar10`` or ``cifar10:<folder>``, as ``--data``
    takes it) rather than a folder or zip."""
    return path == "cifar10" or path.startswith("cifar10:")


def torchvision_root(path: str) -> str:
    """The folder torchvision keeps CIFAR-10 in for ``path`` (the default is resattn.data's)."""
    return os.path.expanduser(path.partition(":")[2] or os.path.join("~", ".cache", "resattn", "cifar10"))


def offline_pointer(path: str) -> str:
    """What to do where this server cannot download CIFAR-10."""
    return (f"Without internet access on this server: copy `{CIFAR10_ARCHIVE}` (from "
            f"https://www.cs.toronto.edu/~kriz/cifar.html) into `{torchvision_root(path)}` and press the button "
            "again (the file is checked and unpacked, nothing is fetched); or put a zip of `train/` and `test/` class "
            "folders on the server and start the app with `RESATTN_DATASETS=name=/path/to/dataset.zip`; or upload "
            "such a zip here.")


@functools.lru_cache(maxsize=2)
def _torchvision_arrays(root: str, split: str) -> tuple[np.ndarray, list[int]]:
    """A CIFAR-10 split in torchvision's folder ``root`` as torchvision unpickled it, N×32×32×3 uint8 and labels,
    kept once per process; nothing is downloaded. Raises ``DataError`` when it is not there."""
    try:
        decoded = load_split(f"cifar10:{root}", split, download=False)
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted"
        raise DataError(f"CIFAR-10 is not downloaded yet: download it on the Dataset page (torchvision keeps it "
                        f"in {root})") from exc
    return decoded.images.permute(0, 2, 3, 1).numpy(), decoded.labels.tolist()


class TorchvisionSplit(SplitSource):
    """A split of torchvision's CIFAR-10 listed as a folder would be (``test/cat/00003.png``, sorted by class);
    :meth:`read` encodes the image from torchvision's arrays as PNG."""

    def read(self, i: int) -> bytes:
        buffer = io.BytesIO()
        position = int(Path(self.items[i][0]).stem)  # the image's index in torchvision's split
        Image.fromarray(_torchvision_arrays(torchvision_root(self.root), self.split)[0][position]).save(buffer, "PNG")
        return buffer.getvalue()

    def iter_bytes(self) -> Iterator[tuple[bytes, int]]:
        for i, (_, label) in enumerate(self.items):
            yield self.read(i), label


def torchvision_split(path: str, split: str) -> TorchvisionSplit:
    """One split of torchvision's CIFAR-10 (``test`` for test/val); raises ``DataError`` if not downloaded."""
    split = "train" if split == "train" else "test"
    _, labels = _torchvision_arrays(torchvision_root(path), split)
    items = sorted(((f"{split}/{CIFAR10_CLASSES[c]}/{i:05d}.png", c) for i, c in enumerate(labels)),
                   key=lambda item: (item[1], item[0]))
    return TorchvisionSplit(path, split, list(CIFAR10_CLASSES), items)


def download_cifar10(path: str) -> str:
    """Have torchvision download CIFAR-10 for ``path`` (or unpack the archive already in its folder), then load
    both splits to check them; returns what is there. Raises ``DataError`` with the reason and
    :func:`offline_pointer`: nothing is reported downloaded unless it loads."""
    source = f"cifar10:{torchvision_root(path)}"
    try:
        load_split(source, "test", download=True)
        counts = [len(load_split(source, split, download=False).labels) for split in ("train", "test")]
    except (OSError, RuntimeError, ValueError, EOFError) as exc:  # URLError is an OSError
        raise DataError(f"CIFAR-10 could not be downloaded ({exc}). {offline_pointer(path)}") from exc
    _torchvision_arrays.cache_clear()
    return f"CIFAR-10 is in {torchvision_root(path)}: {counts[0]:,} training and {counts[1]:,} test images."


def offer_download(path: str, key: str, container: Any = st) -> None:
    """Say that CIFAR-10 is not downloaded, with a button that downloads it (rerunning the page once it loads,
    with a note of what is there) and, when that fails, why and what to do instead."""
    container.info(f"CIFAR-10 is not downloaded yet. torchvision can fetch it (about 170 MB, from the University "
                   f"of Toronto) into `{torchvision_root(path)}`.")
    if container.button("Download CIFAR-10", key=key, icon=":material/download:"):
        try:
            with st.spinner("Downloading and checking CIFAR-10 (about 170 MB)…"):
                st.session_state["_cifar10_note"] = download_cifar10(path)
        except DataError as exc:
            container.error(str(exc))
            return
        listing.clear()
        st.rerun()


def downloaded_note(container: Any = st) -> None:
    """The note :func:`offer_download` left for the run after a download, shown once."""
    if note := st.session_state.pop("_cifar10_note", None):
        container.success(f"Downloaded and checked: {note}")


# ------------------------------------------------------------------------------------------------- model


@dataclass
class ModelChoice:
    """The sidebar's model, stage and module, with or without an image chosen."""

    entry: state.ModelEntry
    model: torch.nn.Module
    meta: dict[str, Any]
    stage: int
    index: int


def current_model() -> ModelChoice:
    """The model the sidebar chose: from the run's context when there is an image, else loaded from the
    catalogue by ``st.session_state["model"]``; raises ``resattn.CheckpointError`` or ``LookupError``."""
    ctx = st.session_state.get("_context")
    if ctx is not None:
        return ModelChoice(ctx.entry, ctx.model, ctx.meta, ctx.stage, ctx.index)
    key = st.session_state.get("model")
    entry = next((e for e in state.catalogue(include_random=True) if e.key == key), None)
    if entry is None:
        raise LookupError("no model is chosen in the sidebar")
    model, meta = state.load_entry(entry)
    return ModelChoice(entry, model, meta, int(st.session_state.get("stage", 1)),
                       int(st.session_state.get("module", 1)))


def module_name(model: torch.nn.Module, stage: int, index: int) -> str | None:
    """The qualified name (e.g. ``stage2.module1``) of attention module (stage, index), or None."""
    for name, module in model.named_modules():
        if getattr(module, "stage", None) == stage and getattr(module, "index", None) == index and name:
            return name
    return None


def label_map(dataset_classes: list[str], meta: dict[str, Any]) -> list[int]:
    """For each dataset class folder, the model's class index (by folder name, then by display name); raises
    ``ValueError`` naming the classes the model does not have."""
    names = list(meta.get("classes") or [])
    folders = list(meta.get("class_folders") or names)
    mapping, unknown = [], []
    for folder, shown in zip(dataset_classes, class_names(dataset_classes)):
        if folder in folders:
            mapping.append(folders.index(folder))
        elif shown in names:
            mapping.append(names.index(shown))
        else:
            unknown.append(shown)  # "tench", not the WordNet id n01440764 it is filed under
    if unknown:
        raise ValueError(f"the model has no class {', '.join(sorted(unknown))} (its classes: "
                         f"{', '.join(names[:12])}{' …' if len(names) > 12 else ''})")
    return mapping


def matching_models(dataset_classes: list[str]) -> list[str]:
    """Short labels of the catalogue's models that know every class of the dataset."""
    found = []
    for entry in state.catalogue(include_random=st.session_state.get("show_random", False)):
        if entry.error is None:
            try:
                label_map(dataset_classes, entry.meta)
            except ValueError:
                continue
            found.append(state.short_label(entry))
    return found


# --------------------------------------------------------------------------------------------- collection


@dataclass
class DatasetMasks:
    """Masks over the chosen images of a split, what the grid shows of each image, and where it came from."""

    masks: masks.MaskSet  # labels in the model's class indices; ``index`` = positions in the split
    pictures: np.ndarray  # N×h×w×3 uint8: the model's input region (reduced to STORED_SIDE if larger)
    names: list[str]  # each image's path inside the dataset ("test/cat/003.png")
    total: int  # images in the split
    skipped: list[str] = field(default_factory=list)  # files that could not be decoded (name: reason)
    seconds: float = 0.0  # time spent computing chunks on this run (0 when all were cached)


def _relative(name: str) -> str:
    return "/".join(Path(name).parts[-3:])


def read_positions(split: SplitSource, positions: np.ndarray) -> list[tuple[str, bytes | Exception]]:
    """The encoded bytes of the images at ``positions``, opening a zip once."""
    out: list[tuple[str, bytes | Exception]] = []
    if split.root.endswith(".zip"):
        with zipfile.ZipFile(split.root) as zf:
            for p in positions:
                name = split.items[p][0]
                try:
                    out.append((name, read_member(zf, name)))
                except (DataError, OSError, zipfile.BadZipFile) as exc:
                    out.append((name, exc))
    else:  # a folder (read from disk), or torchvision's CIFAR-10 (encoded from its arrays)
        for p in positions:
            name = split.items[p][0]
            try:
                out.append((name, split.read(int(p))))
            except (OSError, DataError) as exc:
                out.append((name, exc))
    return out


def _stored(picture: Image.Image) -> np.ndarray:
    if max(picture.size) > STORED_SIDE:
        picture = picture.resize((STORED_SIDE, STORED_SIDE), Image.Resampling.BILINEAR)
    return np.asarray(picture, dtype=np.uint8)


@st.cache_data(show_spinner=False, max_entries=512)
def collect_chunk(model_key: str, dataset_key: str, split: str, limit: int, chunk: int,
                  _model: torch.nn.Module, _meta: dict[str, Any], _listing: SplitSource) -> dict[str, Any]:
    """Chunk ``chunk`` of the ``limit`` images spread over the split: decode and crop them, then one
    :func:`resattn.masks.collect_masks` pass. Cached by (model key, dataset, split, limit, chunk)."""
    positions = masks.spread_indices(len(_listing), limit)[chunk * CHUNK : (chunk + 1) * CHUNK]
    prep = Preprocessing.from_meta(_meta)
    mapping = label_map(_listing.classes, _meta)
    kept, pictures, labels, names, skipped = [], [], [], [], []
    for p, (name, data) in zip(positions, read_positions(_listing, positions)):
        try:
            if isinstance(data, Exception):
                raise data
            picture = prep.crop(images.load_image(data, _relative(name)))
        except (images.ImageError, DataError, OSError, ValueError) as exc:
            skipped.append(f"{_relative(name)}: {exc}")
            continue
        kept.append(int(p))
        pictures.append(picture)
        labels.append(mapping[_listing.items[p][1]])
        names.append(_relative(name))
    out: dict[str, Any] = {"positions": np.array(kept, np.int64), "names": names, "skipped": skipped,
                           "pictures": np.stack([_stored(p) for p in pictures]) if pictures else None}
    if not kept:
        return out
    batch = torch.from_numpy(np.stack([np.asarray(p, np.uint8) for p in pictures])).permute(0, 3, 1, 2).contiguous()
    decoded = Decoded(batch, torch.tensor(labels, dtype=torch.int64), list(_meta.get("classes") or []), dataset_key)
    result = masks.collect_masks(_model, _meta, decoded, batch_size=CHUNK, channels_last=False)
    out.update(modules=result.modules, masks=result.masks, labels=result.labels, predictions=result.predictions,
               confidence=result.confidence, stage_response=result.stage_response, info=result.meta)
    return out


def collect(model_key: str, dataset_key: str, split: str, limit: int, model: torch.nn.Module,
            meta: dict[str, Any], source: SplitSource,
            progress: Callable[[int, int], None] | None = None) -> DatasetMasks:
    """Masks over ``limit`` images of ``source`` (cached chunk by chunk); ``progress(done, total)`` is called
    before each chunk and at the end. Raises ``ValueError`` when the dataset's classes are not the model's."""
    label_map(source.classes, meta)  # refuse a class mismatch before any work
    total = len(source)
    count = len(masks.spread_indices(total, limit))
    chunks = -(-count // CHUNK)
    start = time.perf_counter()
    parts = []
    for chunk in range(chunks):
        if progress is not None:
            progress(chunk * CHUNK, count)
        parts.append(collect_chunk(model_key, dataset_key, split, int(limit), chunk, model, meta, source))
    if progress is not None:
        progress(count, count)
    seconds = time.perf_counter() - start
    used = [p for p in parts if len(p["positions"])]
    skipped = [s for p in parts for s in p["skipped"]]
    classes = list(meta.get("classes") or [])
    if not used:
        raise ValueError("no image of this split could be decoded" + (f" ({skipped[0]})" if skipped else ""))
    modules = used[0]["modules"]
    result = masks.MaskSet(
        classes, modules, {n: np.concatenate([p["masks"][n] for p in used]) for n in modules},
        np.concatenate([p["labels"] for p in used]), np.concatenate([p["predictions"] for p in used]),
        np.concatenate([p["confidence"] for p in used]), np.concatenate([p["positions"] for p in used]),
        meta={**used[0]["info"], "split": source.split, "total_in_split": total},
        stage_response=np.concatenate([p["stage_response"] for p in used]),
    ).derive()
    return DatasetMasks(result, np.concatenate([p["pictures"] for p in used]),
                        [n for p in used for n in p["names"]], total, skipped, seconds)


# ----------------------------------------------------------------------------------- hand-over to Explore


def pick(data: bytes, name: str, detail: str = "") -> None:
    """Remember one dataset image for the sidebar (see :func:`picked_image`); the caller then switches page."""
    st.session_state[PICK_KEY] = {"bytes": data, "name": name, "detail": detail,
                                  "source": st.session_state.get("source")}


def _drop_pick() -> None:
    st.session_state.pop(PICK_KEY, None)


@st.cache_data(show_spinner=False, max_entries=16)
def _decode(data: bytes, name: str) -> tuple[Image.Image, str]:
    image = images.load_image(data, name)
    return image, images.image_hash(image)


def picked_image(source: str | None = None) -> tuple[Image.Image, str, str] | None:
    """The image picked on the Dataset page as (image, name, hash), for the sidebar's image input, or None.

    Drawn in the sidebar while a pick is active: where the image comes from, and a button back to the sidebar's
    own image. The pick is dropped when the user switches the image source (``source``, the radio's value) or
    presses that button, or when its bytes do not decode (reported)."""
    chosen = st.session_state.get(PICK_KEY)
    if not chosen:
        return None
    if source is not None and chosen.get("source") not in (None, source):
        _drop_pick()
        return None
    try:
        image, digest = _decode(chosen["bytes"], chosen["name"])
    except images.ImageError as exc:
        _drop_pick()
        st.sidebar.error(f"Cannot use the image picked on the Dataset page: {exc}")
        return None
    st.session_state["_image_errors"] = []
    st.sidebar.info(f"Image from the Dataset page: **{chosen['name']}**"
                    + (f" ({chosen['detail']})" if chosen.get("detail") else ""))
    st.sidebar.button("Back to the sidebar's image", key="dataset_pick_clear", on_click=_drop_pick,
                      icon=":material/undo:")
    return image, chosen["name"], digest
