"""Data sources, the decode-once cache, batch augmentation and the label-noise protocol, on generated data."""

from __future__ import annotations

import io
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from resattn import data as D


def make_tree(root, classes=("cat", "dog", "frog"), per_class=(6, 3), size=16, fmt="PNG"):
    """A tiny ImageFolder tree root/{train,test}/<class>/<i>.png whose colour says the class."""
    rng = np.random.default_rng(0)
    for split, count in zip(("train", "test"), per_class):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
                pixels[..., c % 3] += 180
                Image.fromarray(pixels).save(folder / f"{i:03d}.{fmt.lower()}", fmt)
    return root


def zip_tree(root, target, prefix=""):
    with zipfile.ZipFile(target, "w") as zf:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                zf.write(path, prefix + str(path.relative_to(root)))
    return target


def test_folder_and_zip_give_the_same_split(tmp_path):
    tree = make_tree(tmp_path / "tree")
    for source in (tree, zip_tree(tree, tmp_path / "a.zip"), zip_tree(tree, tmp_path / "b.zip", prefix="top/")):
        listing = D.open_split(source, "train")
        assert listing.classes == ["cat", "dog", "frog"]
        assert len(listing) == 18 and [label for _, label in listing.items].count(2) == 6
        decoded = D.load_split(source, "test")
        assert decoded.images.shape == (9, 3, 16, 16) and decoded.images.dtype == torch.uint8
        assert decoded.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
        # the colour channel that was boosted is the brightest one
        brightest = decoded.images.float().mean(dim=(2, 3)).argmax(1)
        assert brightest.tolist() == decoded.labels.tolist()


def test_val_is_accepted_for_test_and_errors_are_clear(tmp_path):
    tree = make_tree(tmp_path / "tree")
    (tree / "test").rename(tree / "val")
    assert D.open_split(tree, "test").split == "val"
    with pytest.raises(D.DataError, match="no such"):
        D.open_split(tmp_path / "missing", "train")
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(D.DataError, match="not a readable zip"):
        D.open_split(tmp_path / "bad.zip", "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(D.DataError, match="train/<class>"):
        D.open_split(tmp_path / "empty", "train")


def test_corrupt_image_and_oversized_member_are_refused(tmp_path, monkeypatch):
    tree = make_tree(tmp_path / "tree")
    (tree / "train" / "cat" / "000.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(D.DataError, match="cannot be decoded"):
        D.load_split(tree, "train")
    archive = zip_tree(make_tree(tmp_path / "tree2"), tmp_path / "t.zip")
    monkeypatch.setattr(D, "MAX_MEMBER_BYTES", 100)
    with pytest.raises(D.DataError, match="limit"):
        D.load_split(archive, "train")


def test_decode_cache_is_reused(tmp_path, monkeypatch):
    tree = make_tree(tmp_path / "tree")
    first = D.load_split(tree, "train", cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache").rglob("images.npy"))
    monkeypatch.setattr(D, "_decode", lambda *a: (_ for _ in ()).throw(AssertionError("decoded again")))
    second = D.load_split(tree, "train", cache_dir=tmp_path / "cache")
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)


def test_a_zips_cache_outlives_a_copy_and_a_new_mtime_but_not_a_changed_image(tmp_path, monkeypatch):
    """A dataset mounted afresh each session (same bytes, new modification time) keeps its decoded cache."""
    tree = make_tree(tmp_path / "tree")
    (tmp_path / "a").mkdir()
    archive = zip_tree(tree, tmp_path / "a" / "data.zip")
    first = D.load_split(archive, "train", cache_dir=tmp_path / "cache")
    moved = tmp_path / "b" / "data.zip"
    moved.parent.mkdir()
    moved.write_bytes(archive.read_bytes())
    os.utime(moved, (1_000_000, 1_000_000))
    real_decode = D._decode
    monkeypatch.setattr(D, "_decode", lambda *a: (_ for _ in ()).throw(AssertionError("decoded again")))
    again = D.load_split(moved, "train", cache_dir=tmp_path / "cache")
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    # one image changed: another cache, decoded afresh
    Image.new("RGB", (16, 16), (1, 2, 3)).save(tree / "train" / "dog" / "001.png")
    changed = zip_tree(tree, tmp_path / "b" / "data.zip")
    monkeypatch.setattr(D, "_decode", real_decode)
    fresh = D.load_split(changed, "train", cache_dir=tmp_path / "cache")
    assert not torch.equal(first.images, fresh.images)
    assert len(list((tmp_path / "cache").rglob("images.npy"))) == 2


def test_two_writers_of_one_split_cache_do_not_collide(tmp_path, monkeypatch):
    """Two runs started together decode the same split and both write its cache: a writer that finishes while the
    other is between writing and renaming its file leaves that file alone."""
    tree = make_tree(tmp_path / "tree")
    real_save, nested = np.save, {}

    def save_then_let_another_writer_finish(file, value, *args, **kwargs):
        real_save(file, value, *args, **kwargs)
        if "second" not in nested:  # the first writer, paused after its first write: a second runs to the end
            nested["second"] = None
            nested["second"] = D.load_split(tree, "train", cache_dir=tmp_path / "cache")

    monkeypatch.setattr(D.np, "save", save_then_let_another_writer_finish)
    first = D.load_split(tree, "train", cache_dir=tmp_path / "cache")
    assert torch.equal(first.images, nested["second"].images)
    monkeypatch.setattr(D.np, "save", real_save)
    monkeypatch.setattr(D, "_decode", lambda *a: (_ for _ in ()).throw(AssertionError("decoded again")))
    cached = D.load_split(tree, "train", cache_dir=tmp_path / "cache")
    assert torch.equal(first.images, cached.images) and torch.equal(first.labels, cached.labels)
    assert sorted(p.name for p in (tmp_path / "cache").rglob("*") if p.is_file()) == ["images.npy", "labels.npy"]


def test_torchvision_cifar10_source(tmp_path, monkeypatch):
    """The canonical CIFAR-10 path, fed with generated files in torchvision's python format."""
    from torchvision.datasets import CIFAR10

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {"data": rng.integers(0, 255, (4, 3072), dtype=np.uint8), "labels": list(range(4))}
        (folder / name).write_bytes(pickle.dumps(entry))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    import torchvision.datasets.cifar as cifar_module

    monkeypatch.setattr(CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(cifar_module, "check_integrity", lambda *a, **k: True)
    train = D.load_split(f"cifar10:{tmp_path}", "train", download=False)
    test = D.load_split(f"cifar10:{tmp_path}", "test", download=False)
    assert train.images.shape == (20, 3, 32, 32) and test.images.shape == (4, 3, 32, 32)
    assert train.classes[0] == "c0" and test.labels.tolist() == [0, 1, 2, 3]


def test_crop_flip_is_a_shifted_window_of_the_padded_image():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    out = D.augment_crop_flip(x, pad=2, generator=torch.Generator().manual_seed(3))
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for n in range(2):
        windows = [padded[n, :, dy : dy + 8, dx : dx + 8] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[n], w) or torch.equal(out[n], w.flip(-1)) for w in windows)
    # over many draws both flips and several offsets occur
    many = D.augment_crop_flip(x[:1].expand(64, -1, -1, -1), pad=2, generator=torch.Generator().manual_seed(0))
    assert len({tuple(m.flatten()[:5].tolist()) for m in many}) > 5


def test_resized_crop_flip_shape_and_range():
    x = torch.rand(4, 3, 40, 40)
    out = D.augment_resized_crop_flip(x, 24, generator=torch.Generator().manual_seed(0))
    assert out.shape == (4, 3, 24, 24)
    assert out.min() >= 0 and out.max() <= 1
    full = D.augment_resized_crop_flip(x, 40, scale=(1.0, 1.0), ratio=(1.0, 1.0), generator=torch.Generator().manual_seed(0))
    assert all(torch.allclose(full[i], x[i], atol=1e-5) or torch.allclose(full[i], x[i].flip(-1), atol=1e-5) for i in range(4))


def test_label_noise_follows_the_paper_protocol():
    labels = torch.arange(10).repeat(2000)
    noisy = D.label_noise(labels, 0.3, 10, seed=7)
    changed = noisy != labels
    assert abs(changed.float().mean().item() - 0.3) < 0.02  # kept with probability r = 0.7
    assert torch.equal(noisy, D.label_noise(labels, 0.3, 10, seed=7))  # fixed seed
    # a replaced label is one of the *other* classes, chosen uniformly
    offsets = torch.bincount((noisy[changed] - labels[changed]) % 10, minlength=10).float()
    assert offsets[1:].min() / offsets[1:].max() > 0.8
    # and never the label itself: at level 0.99 almost every label changes (a draw over all ten classes,
    # the label's own included, would leave about 10% of the drawn labels unchanged)
    almost_all = D.label_noise(labels, 0.99, 10, seed=3)
    assert (almost_all != labels).float().mean().item() > 0.98
    assert torch.equal(D.label_noise(labels, 0.0, 10, seed=1), labels)


def test_normalizer_per_pixel_and_per_channel():
    images = torch.randint(0, 256, (10, 3, 4, 4), dtype=torch.uint8)
    per_pixel = D.Normalizer.from_images(images, per_pixel=True)
    assert torch.allclose(per_pixel(images).mean(dim=0), torch.zeros(3, 4, 4), atol=1e-5)
    per_channel = D.Normalizer.from_images(images, per_pixel=False)
    z = per_channel(images)
    assert torch.allclose(z.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(z.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-4)
    mean, std = per_pixel.channel_stats()
    assert len(mean) == 3 and std == [1.0, 1.0, 1.0]


def test_batch_iterator_shards_and_resumes():
    decoded = D.Decoded(torch.zeros(10, 1, 1, 1, dtype=torch.uint8), torch.arange(10), ["a"], "x")
    full = D.BatchIterator(decoded, 3, shuffle=True, seed=1)
    batches = [labels.tolist() for _, labels in full.epoch(0)]
    assert sorted(sum(batches, [])) == list(range(10))
    assert [labels.tolist() for _, labels in full.epoch(0, start_batch=2)] == batches[2:]
    r0 = D.BatchIterator(decoded, 5, shuffle=True, seed=1, rank=0, world_size=2).indices(0)
    r1 = D.BatchIterator(decoded, 5, shuffle=True, seed=1, rank=1, world_size=2).indices(0)
    assert set(r0.tolist()).isdisjoint(r1.tolist()) and len(r0) == len(r1) == 5


def _imagenette_zip(path, per_class=(3, 2)):
    """A tiny zip laid out like imagenette-224.zip: train/<wnid>/*.JPEG and val/<wnid>/*.JPEG, one greyscale."""
    wnids = ["n03028079", "n01440764", "n03888257"]  # church, tench, parachute (not in sorted order)
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w") as zf:
        for split, count in zip(("train", "val"), per_class):
            for wnid in wnids:
                for i in range(count):
                    grey = split == "val" and wnid == "n01440764" and i == 0
                    pixels = rng.integers(0, 255, (40, 40) if grey else (40, 40, 3), dtype=np.uint8)
                    buffer = io.BytesIO()
                    Image.fromarray(pixels, "L" if grey else "RGB").save(buffer, "JPEG")
                    zf.writestr(f"{split}/{wnid}/{wnid}_{i}.JPEG", buffer.getvalue())
    return path


def test_an_imagenette_layout_is_read_with_class_names_and_greyscale_as_rgb(tmp_path):
    source = _imagenette_zip(tmp_path / "imagenette.zip")
    train = D.open_split(source, "train")
    assert train.split == "train" and train.classes == ["n01440764", "n03028079", "n03888257"]
    test = D.open_split(source, "test")
    assert test.split == "val" and len(test) == 6  # "test" finds Imagenette's val/
    assert D.class_names(test.classes) == ["tench", "church", "parachute"]
    decoded = D.load_split(source, "test", size=36, crop=32)
    assert decoded.images.shape == (6, 3, 32, 32) and decoded.labels.tolist() == [0, 0, 1, 1, 2, 2]
    grey = decoded.images[0]  # the greyscale tench, converted to RGB: three equal channels
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    assert D.native_size(source) == (40, 40)
