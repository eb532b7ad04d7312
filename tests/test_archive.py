"""The upload checks' limits, each at its boundary and one past it, and each layer of a two-layer defence on its
own (issues 22 and 23): file count, declared and decompressed bytes, and the decoded cost of the images."""

from __future__ import annotations

import dataclasses
import io
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from resattn import archive
from resattn.archive import ArchiveError, Limits, check_zip, extract_dataset


def _png(width: int = 8, height: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height)).save(buffer, "PNG")
    return buffer.getvalue()


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _classes(count: int, data: bytes) -> dict[str, bytes]:
    """``count`` files in two class folders (a layout extract_dataset accepts from 4 files)."""
    return {f"{'cat' if i % 2 else 'dog'}/{i:03d}.png": data for i in range(count)}


# ---------------------------------------------------------------------------------------------- file count


def test_the_file_count_limit_admits_exactly_the_limit_and_refuses_one_more(tmp_path):
    limits = Limits(max_files=6)
    files, _ = check_zip(_zip(tmp_path / "six.zip", _classes(6, _png())), limits)
    assert len(files) == 6
    assert extract_dataset(tmp_path / "six.zip", tmp_path / "six", limits).counts == {"train": 4, "test": 2}
    with pytest.raises(ArchiveError, match="more than 6 files"):
        check_zip(_zip(tmp_path / "seven.zip", _classes(7, _png())), limits)


# ---------------------------------------------------------------------------------------------- bytes, two layers


def _sized_members(tmp_path: Path) -> tuple[Path, int]:
    """Four 400-byte images (a PNG padded after its end): each under a 500-byte member limit, 1,600 together."""
    image = _png()
    return _zip(tmp_path / "bytes.zip", _classes(4, image + b"\0" * (400 - len(image)))), 1600


def test_declared_sizes_are_summed_before_anything_is_written(tmp_path):
    upload, total = _sized_members(tmp_path)
    assert check_zip(upload, Limits(max_member_bytes=500, max_total_bytes=total))[0]  # exactly the limit
    with pytest.raises(ArchiveError, match="expands to more than 1,599 bytes"):
        check_zip(upload, Limits(max_member_bytes=500, max_total_bytes=total - 1))  # one byte over: refused here


def test_decompressed_bytes_are_counted_again_while_extracting(tmp_path, monkeypatch):
    """The second layer alone: with the declared-size check blinded, extraction still stops at the limit and
    leaves nothing behind."""
    upload, total = _sized_members(tmp_path)
    real = archive.check_zip
    monkeypatch.setattr(archive, "check_zip", lambda path, limits: real(
        path, dataclasses.replace(limits, max_total_bytes=10**12)))
    limits = Limits(max_member_bytes=500, max_total_bytes=total - 1)
    with pytest.raises(ArchiveError, match="expands to more than 1,599 bytes"):
        archive.extract_zip(upload, tmp_path / "out", limits)
    assert not (tmp_path / "out").exists()
    written = archive.extract_zip(upload, tmp_path / "fits", dataclasses.replace(limits, max_total_bytes=total))
    assert len(written) == 4 and sum(p.stat().st_size for p in written) == total  # exactly the limit: extracted


# ---------------------------------------------------------------------------------------------- decoded cost


def _count_decodes(monkeypatch) -> list[str]:
    """Record every full decode of the image check."""
    from resattn import images

    calls: list[str] = []
    original = images.load_image
    monkeypatch.setattr(images, "load_image", lambda data, name, **kw: calls.append(name) or original(data, name, **kw))
    return calls


def test_one_images_pixels_are_bounded_from_its_header(tmp_path, monkeypatch):
    decodes = _count_decodes(monkeypatch)
    upload = _zip(tmp_path / "big.zip", {**_classes(4, _png()), "cat/big.png": _png(100, 50)})
    extract_dataset(upload, tmp_path / "fits", Limits(max_pixels=5000))  # 100×50: exactly the limit
    assert len(decodes) == 5
    decodes.clear()
    with pytest.raises(ArchiveError, match="big.png.*over the"):
        extract_dataset(upload, tmp_path / "over", Limits(max_pixels=4999))
    assert decodes == [] and not (tmp_path / "over").exists()  # refused before any image was decoded


def test_all_images_pixels_together_are_bounded_before_any_is_decoded(tmp_path, monkeypatch):
    decodes = _count_decodes(monkeypatch)
    upload = _zip(tmp_path / "many.zip", _classes(6, _png(40, 25)))  # 6 × 1,000 pixels
    assert extract_dataset(upload, tmp_path / "fits", Limits(max_total_pixels=6000)).counts["train"] == 4
    assert len(decodes) == 6
    decodes.clear()
    with pytest.raises(ArchiveError, match="more than 5,999 pixels together"):
        extract_dataset(upload, tmp_path / "over", Limits(max_total_pixels=5999))
    assert decodes == [] and not (tmp_path / "over").exists()


def test_a_tiny_zip_of_huge_blank_images_is_refused_in_a_moment(tmp_path):
    """The review's bomb, scaled: blank 4000×4000 PNGs compress to almost nothing; the defaults refuse 63 of them
    (1.01 G pixels) from their headers instead of spending minutes decoding them."""
    import time

    huge = _png(4000, 4000)
    upload = _zip(tmp_path / "bomb.zip", _classes(63, huge))
    assert upload.stat().st_size < 100_000
    start = time.process_time()
    with pytest.raises(ArchiveError, match="pixels together"):
        extract_dataset(upload, tmp_path / "out")
    assert time.process_time() - start < 5


# ---------------------------------------------------------------------------------------------- apart from the caller


def _children_nice(parent: int) -> dict[int, int]:
    """{pid: niceness} of the live children of ``parent``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                text = (entry / "stat").read_text()
            except OSError:
                continue
            fields = text[text.rindex(")") + 2:].split()
            if int(fields[1]) == parent:
                found[int(entry.name)] = int(fields[16])
    return found


def test_a_check_apart_runs_in_a_lower_priority_child_and_the_caller_only_waits(tmp_path):
    import os
    import threading
    import time

    upload = _zip(tmp_path / "photos.zip", _classes(8, _png(1500, 1500)))  # some decoding to do
    seen: dict[int, int] = {}
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.update(_children_nice(os.getpid()))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    start = time.thread_time()
    try:
        apart = archive.extract_dataset_apart(upload, tmp_path / "apart")
    finally:
        done.set()
        watcher.join()
    assert time.thread_time() - start < 0.5  # the caller's thread spent (almost) nothing on it
    here = extract_dataset(upload, tmp_path / "here")
    assert (apart.classes, apart.counts, apart.layout) == (here.classes, here.counts, here.layout)
    assert apart.root == tmp_path / "apart" and len(list(apart.root.rglob("*.png"))) == 8
    assert seen and set(seen.values()) == {os.nice(0) + archive.CHECK_NICENESS}


def test_a_check_apart_refuses_as_the_check_does_and_stops_at_its_time_limit(tmp_path):
    bad = _zip(tmp_path / "bad.zip", {**_classes(4, _png()), "cat/../../escape.png": _png()})
    with pytest.raises(ArchiveError, match="escapes the target folder"):
        archive.extract_dataset_apart(bad, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    good = _zip(tmp_path / "good.zip", _classes(4, _png()))
    with pytest.raises(ArchiveError, match="took over 0.5 s"):
        archive.extract_dataset_apart(good, tmp_path / "slow", timeout_s=0.5)  # the child needs seconds to start
    assert not (tmp_path / "slow").exists()


def test_one_members_bytes_are_bounded_at_the_limit(tmp_path):
    upload, _ = _sized_members(tmp_path)  # four 400-byte members
    assert len(check_zip(upload, Limits(max_member_bytes=400))[0]) == 4  # exactly the limit
    with pytest.raises(ArchiveError, match="is 400 bytes uncompressed, over the 399-byte limit for one file"):
        check_zip(upload, Limits(max_member_bytes=399))
