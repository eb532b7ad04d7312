"""Check an untrusted zip of images *before* using it, and extract it safely into one folder.

A zip uploaded from a browser is refused, with a message that says which member and why, when

* a member's path escapes the target folder: absolute (``/etc/x``, ``C:/x``), with ``..``, with backslashes or
  NUL bytes, or with a path component over 255 bytes;
* a member is a symbolic link or a special file (device, FIFO, socket), read from its Unix mode in
  ``external_attr``, or is encrypted, or appears twice;
* it holds more files, or more uncompressed bytes, than :class:`Limits` allows, or one member is larger than the
  per-file limit — judged from the sizes the archive *declares* before anything is written, and again from the
  bytes actually decompressed (a member that expands beyond its declared size is refused);
* its images would cost too much to decode: one image over ``max_pixels`` or all of them together over
  ``max_total_pixels`` — read from each image's header after it is written and *before* any image is decoded;
* a file is not an image: its extension is not an image extension, or :func:`resattn.images.load_image` (format
  allow-list, decompression-bomb guard, full decode) cannot read it.

OS clutter (``__MACOSX/``, dot files such as ``.DS_Store``, ``Thumbs.db``, ``desktop.ini``) is skipped, not
extracted. Extraction writes only inside the target folder, which must not exist yet (files are created with
``O_EXCL | O_NOFOLLOW``); on any refusal the partly written target is removed, so nothing of a bad archive stays.

:func:`extract_dataset` adds the layout of a training set: ``train/`` and ``test/`` (or ``val/``) class folders,
optionally under one top-level folder, or just class folders, which are then split deterministically: within
each class, files sorted by name, every fifth (the 5th, 10th, …) goes to ``test/`` — and a class of 2–4 images
gives its last one — so the split is stratified and the same for the same archive.

:func:`extract_dataset_apart` runs the same check in a child process at lower priority, so a server (the app)
never spends its own thread or CPU share on an untrusted archive: it waits, asleep, for the verdict, stops a check
that runs past a time limit, and a check whose caller dies stops itself.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .data import IMAGE_EXTENSIONS

__all__ = ["ArchiveError", "Limits", "Extracted", "check_zip", "extract_zip", "extract_dataset", "extract_dataset_apart",
           "SPLIT_NAMES"]

#: Folder names that mark a train / test layout (``val`` is accepted for ``test``, as Imagenette names it).
SPLIT_NAMES = ("train", "test", "val")
_CLUTTER_NAMES = {"thumbs.db", "desktop.ini"}
_CHUNK = 1 << 20


class ArchiveError(ValueError):
    """A zip is refused; the message says which member and why."""


@dataclass(frozen=True)
class Limits:
    """What an uploaded zip may hold. The defaults fit CIFAR-10 (60,000 small images) and Imagenette-sized sets."""

    max_files: int = 70_000
    max_total_bytes: int = 2 * 1024**3  # uncompressed, all members together
    max_member_bytes: int = 16 * 1024**2  # one file, uncompressed
    max_pixels: int = 16_000_000  # one image, decoded (read from its header before decoding)
    #: all images together, decoded: about 20 s of decoding on one core; CIFAR-10 (61 M) and Imagenette at 224 px
    #: (0.9 G) fit, 300 blank 4000×4000 PNGs in a 105 KB zip (4.8 G) do not
    max_total_pixels: int = 1_000_000_000
    check_images: bool = True  # decode every image once (slower, but a file that is not an image is refused)


@dataclass
class Extracted:
    """What :func:`extract_dataset` wrote: ``root/train/<class>/…`` and ``root/test/<class>/…``."""

    root: Path
    classes: list[str]
    counts: dict[str, int]  # images per split
    layout: str  # "split" (train/test folders in the zip) or "class folders" (split here)
    skipped: list[str] = field(default_factory=list)  # OS clutter left out


def _clutter(parts: tuple[str, ...]) -> bool:
    return parts[0] == "__MACOSX" or parts[-1].startswith(".") or parts[-1].lower() in _CLUTTER_NAMES


def _member_path(name: str) -> tuple[str, ...]:
    """The member's path components, or :class:`ArchiveError` if the path could land outside the target."""
    if not name or "\x00" in name:
        raise ArchiveError(f"member {name!r} has an empty name or a NUL byte; refusing the archive")
    if "\\" in name:
        raise ArchiveError(f"member {name!r} uses backslashes in its path; refusing the archive")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise ArchiveError(f"member {name!r} has an absolute path; refusing the archive")
    parts = tuple(p for p in PurePosixPath(name).parts if p not in ("", "."))
    if ".." in parts:
        raise ArchiveError(f"member {name!r} escapes the target folder ('..' in its path); refusing the archive")
    if not parts:
        raise ArchiveError(f"member {name!r} has no file name; refusing the archive")
    if any(len(p.encode()) > 255 for p in parts):
        raise ArchiveError(f"member {name[:80]!r}… has a path component over 255 bytes; refusing the archive")
    return parts


Member = tuple[zipfile.ZipInfo, tuple[str, ...]]  # an entry and its safe path components


def check_zip(path: str | os.PathLike[str], limits: Limits = Limits()) -> tuple[list[Member], list[str]]:
    """Check every member of a zip from its central directory, before anything is extracted.

    Returns ``(files, skipped)``: each regular file with its safe path components, and the names of OS clutter
    left out. Raises :class:`ArchiveError` for a path that escapes, a link or special file, an encrypted or
    duplicate member, or more files or declared bytes than ``limits``.
    """
    if not zipfile.is_zipfile(path):
        raise ArchiveError(f"{Path(path).name} is not a zip file")
    files: list[Member] = []
    skipped: list[str] = []
    seen: set[tuple[str, ...]] = set()
    total = 0
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArchiveError(f"{Path(path).name} is a corrupt zip file: {exc}") from exc
    for info in infos:
        parts = _member_path(info.filename)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise ArchiveError(f"member {info.filename!r} is a symbolic link; links are not accepted")
        if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise ArchiveError(f"member {info.filename!r} is a special file (device, FIFO or socket); not accepted")
        if info.flag_bits & 0x1:
            raise ArchiveError(f"member {info.filename!r} is encrypted; upload an unencrypted zip")
        if info.is_dir() or stat.S_ISDIR(mode):
            continue
        if _clutter(parts):
            skipped.append(info.filename)
            continue
        if parts in seen:
            raise ArchiveError(f"member {info.filename!r} appears twice in the archive; refusing it")
        seen.add(parts)
        if len(files) + 1 > limits.max_files:
            raise ArchiveError(f"the archive holds more than {limits.max_files:,} files, the limit; refusing it")
        if info.file_size > limits.max_member_bytes:
            raise ArchiveError(f"member {info.filename!r} is {info.file_size:,} bytes uncompressed, over the "
                               f"{limits.max_member_bytes:,}-byte limit for one file")
        total += info.file_size
        if total > limits.max_total_bytes:
            raise ArchiveError(f"the archive expands to more than {limits.max_total_bytes:,} bytes, the limit; "
                               "refusing it")
        files.append((info, parts))
    if not files:
        raise ArchiveError(f"{Path(path).name} holds no files")
    return files, skipped


def _is_image_name(parts: tuple[str, ...]) -> bool:
    return parts[-1].lower().endswith(IMAGE_EXTENSIONS)


def _copy_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path, limit: int) -> bytes:
    """Stream one member to ``dest`` (created, never overwritten or followed), counting the bytes really
    decompressed; returns them for the image check (at most ``limit`` bytes)."""
    allowed = min(info.file_size, limit)
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    chunks: list[bytes] = []
    written = 0
    try:
        with os.fdopen(fd, "wb") as out, zf.open(info) as src:
            while chunk := src.read(_CHUNK):
                written += len(chunk)
                if written > allowed:
                    raise ArchiveError(f"member {info.filename!r} expands beyond its declared size of "
                                       f"{info.file_size:,} bytes; refusing the archive")
                out.write(chunk)
                chunks.append(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise ArchiveError(f"member {info.filename!r} is corrupt or lies about its size ({exc}); "
                           "refusing the archive") from exc
    return b"".join(chunks)


def extract_zip(
    path: str | os.PathLike[str],
    target: str | os.PathLike[str],
    limits: Limits = Limits(),
    place: Callable[[list[tuple[str, ...]]], list[tuple[str, ...]]] | None = None,
) -> list[Path]:
    """Check ``path`` (:func:`check_zip`), then extract its image files into the new folder ``target``.

    ``place`` maps the members' path components to where they go inside ``target`` (default: as they are); it
    may raise :class:`ArchiveError` to refuse a layout. Every file must have an image extension and, with
    ``limits.check_images``, decode with :func:`resattn.images.load_image`. On any refusal ``target`` is removed
    and :class:`ArchiveError` raised; nothing is written outside ``target``. Returns the files written.
    """
    return _extract(path, target, limits, place)[0]


def _extract(
    path: str | os.PathLike[str],
    target: str | os.PathLike[str],
    limits: Limits,
    place: Callable[[list[tuple[str, ...]]], list[tuple[str, ...]]] | None,
) -> tuple[list[Path], list[str]]:
    from .images import ImageError, load_image

    files, skipped = check_zip(path, limits)
    for info, parts in files:
        if not _is_image_name(parts):
            raise ArchiveError(f"member {info.filename!r} is not an image file (expected one of "
                               f"{', '.join(IMAGE_EXTENSIONS)}); refusing the archive")
    places = place([parts for _, parts in files]) if place else [parts for _, parts in files]
    target = Path(target)
    if target.exists():
        raise ArchiveError(f"{target} already exists; extraction needs a new folder")
    target.mkdir(parents=True)
    root = target.resolve()
    written: list[Path] = []
    total = pixels = 0
    try:
        with zipfile.ZipFile(path) as zf:
            for (info, _), where in zip(files, places):
                dest = root.joinpath(*where)
                if os.path.commonpath([root, dest.resolve()]) != str(root):  # belt and braces after _member_path
                    raise ArchiveError(f"member {info.filename!r} would be written outside the target folder")
                dest.parent.mkdir(parents=True, exist_ok=True)
                data = _copy_member(zf, info, dest, limits.max_member_bytes)
                total += len(data)
                if total > limits.max_total_bytes:
                    raise ArchiveError(f"the archive expands to more than {limits.max_total_bytes:,} bytes, the limit")
                pixels += _header_pixels(data, info.filename, limits.max_pixels)
                if pixels > limits.max_total_pixels:
                    raise ArchiveError(f"the archive's images hold more than {limits.max_total_pixels:,} pixels "
                                       "together, the limit (read from their headers; nothing was decoded)")
                written.append(dest)
        if limits.check_images:  # every header is within the limits: now decoding costs what they say
            for (info, _), dest in zip(files, written):
                try:
                    load_image(dest.read_bytes(), info.filename, max_pixels=limits.max_pixels)
                except ImageError as exc:
                    raise ArchiveError(f"member {info.filename!r} is not a usable image: {exc}") from exc
    except ArchiveError:
        shutil.rmtree(target, ignore_errors=True)
        raise
    except (OSError, zipfile.BadZipFile) as exc:
        shutil.rmtree(target, ignore_errors=True)
        raise ArchiveError(f"cannot extract {Path(path).name}: {exc}") from exc
    return written, skipped


def _header_pixels(data: bytes, name: str, max_pixels: int) -> int:
    """The pixels of one image as its header declares them (nothing decoded); :class:`ArchiveError` if it is not
    an image this package reads, or holds more than ``max_pixels``."""
    from .images import ImageError, image_size

    try:
        width, height = image_size(data, name, max_pixels=max_pixels)
    except ImageError as exc:
        raise ArchiveError(f"member {name!r} is not a usable image: {exc}") from exc
    return width * height


def _dataset_places(paths: list[tuple[str, ...]]) -> tuple[list[tuple[str, ...]], str]:
    """Where each member goes in a ``train/`` + ``test/`` tree, and which layout the archive had."""
    if len({p[0] for p in paths}) == 1 and paths[0][0] not in SPLIT_NAMES and all(len(p) >= 3 for p in paths):
        paths = [p[1:] for p in paths]  # one top-level folder around everything
    if any(p[0] in SPLIT_NAMES for p in paths):
        splits = {p[0] for p in paths}
        if "test" in splits and "val" in splits:
            raise ArchiveError("the archive has both test/ and val/ folders; keep one of them")
        for p in paths:
            if len(p) != 3 or p[0] not in SPLIT_NAMES:
                raise ArchiveError(f"{'/'.join(p)} is not in a <train|test|val>/<class>/<image> place")
        if "train" not in splits or not splits & {"test", "val"}:
            raise ArchiveError("the archive needs both a train/ folder and a test/ (or val/) folder of class folders")
        train = {p[1] for p in paths if p[0] == "train"}
        test = {p[1] for p in paths if p[0] != "train"}
        if train != test:
            raise ArchiveError(f"train/ and test/ hold different classes (only in train: {sorted(train - test)}; "
                               f"only in test: {sorted(test - train)})")
        if len(train) < 2:
            raise ArchiveError("a classifier needs at least two class folders")
        return [("train" if p[0] == "train" else "test", p[1], p[2]) for p in paths], "split"
    for p in paths:
        if len(p) != 2:
            raise ArchiveError(f"{'/'.join(p)} is not in a <class>/<image> place (or use train/ and test/ folders)")
    per_class: dict[str, list[str]] = {}
    for cls, name in paths:
        per_class.setdefault(cls, []).append(name)
    if len(per_class) < 2:
        raise ArchiveError("a classifier needs at least two class folders")
    small = [c for c, names in per_class.items() if len(names) < 2]
    if small:
        raise ArchiveError(f"class folders {sorted(small)} hold fewer than 2 images (one is needed for testing)")
    test: set[tuple[str, str]] = set()
    for cls, names in per_class.items():
        ordered = sorted(names)
        picks = ordered[4::5] or ordered[-1:]
        test.update((cls, n) for n in picks)
    return [("test" if (c, n) in test else "train", c, n) for c, n in paths], "class folders"


def extract_dataset(
    path: str | os.PathLike[str], target: str | os.PathLike[str], limits: Limits = Limits()
) -> Extracted:
    """Check and extract an uploaded training set into ``target/train/<class>/`` and ``target/test/<class>/``.

    Accepts ``train/`` + ``test/`` (or ``val/``) class folders, or only class folders (split deterministically:
    see the module docstring), either optionally inside one top-level folder. Raises :class:`ArchiveError`.
    """
    layout = {}

    def place(paths: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
        places, layout["kind"] = _dataset_places(paths)
        return places

    written, skipped = _extract(path, target, limits, place)
    root = Path(target).resolve()
    relative = [w.relative_to(root).parts for w in written]
    classes = sorted({r[1] for r in relative})
    counts = {split: sum(r[0] == split for r in relative) for split in ("train", "test")}
    return Extracted(Path(target), classes, counts, layout["kind"], skipped)


# ---------------------------------------------------------------------------------------------- in a child process

#: The child's program: ``resattn`` importable from this checkout, then :func:`_child` with the request.
_CHILD = "import sys; sys.path.insert(0, sys.argv[1]); from resattn.archive import _child; _child(sys.argv[2])"
#: Niceness of the checking process: the server's own work comes first.
CHECK_NICENESS = 10


def extract_dataset_apart(
    path: str | os.PathLike[str], target: str | os.PathLike[str], limits: Limits = Limits(), *,
    timeout_s: float = 600.0, niceness: int = CHECK_NICENESS,
) -> Extracted:
    """:func:`extract_dataset` in a child process at niceness ``niceness``: the caller's thread only waits, so a
    server never decodes an untrusted archive itself. Raises :class:`ArchiveError` as :func:`extract_dataset`
    does, and for a check that runs past ``timeout_s`` seconds (the child is killed and ``target`` removed)."""
    request = json.dumps({"path": os.fspath(path), "target": os.fspath(target), "niceness": niceness,
                          "limits": dataclasses.asdict(limits)})
    command = [sys.executable, "-c", _CHILD, str(Path(__file__).resolve().parents[1]), request]
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        shutil.rmtree(target, ignore_errors=True)
        raise ArchiveError(f"checking {Path(path).name} took over {timeout_s:g} s; refusing it") from None
    try:
        answer = json.loads(out.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        shutil.rmtree(target, ignore_errors=True)
        last = (err.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise ArchiveError(f"{Path(path).name} could not be checked ({last})") from None
    if "refused" in answer:
        raise ArchiveError(answer["refused"])
    return Extracted(Path(answer["root"]), answer["classes"], answer["counts"], answer["layout"], answer["skipped"])


def _stop_with(parent: int) -> None:
    """Exit at once when the process that asked for the check is gone (its parent pid changes)."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(3)


def _child(request_json: str) -> None:
    """The child of :func:`extract_dataset_apart`: check and extract, print the answer as one JSON line."""
    request = json.loads(request_json)
    try:
        os.nice(int(request["niceness"]))
    except OSError:
        pass
    threading.Thread(target=_stop_with, args=(os.getppid(),), daemon=True).start()
    try:
        done = extract_dataset(request["path"], request["target"], Limits(**request["limits"]))
    except ArchiveError as exc:
        print(json.dumps({"refused": str(exc)}), flush=True)
        return
    print(json.dumps({"root": str(done.root), "classes": done.classes, "counts": done.counts,
                      "layout": done.layout, "skipped": done.skipped}), flush=True)
