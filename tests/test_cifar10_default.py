"""The datasets a new user has without configuring any: with ``RESATTN_DATASETS`` unset, torchvision's CIFAR-10,
downloaded from the Dataset or Train page on request, and a plain pointer where the server cannot download it.
torchvision's own CIFAR-10 code runs; only its download (no network here) and its MD5 checks (the files are
small fakes) are replaced."""

from __future__ import annotations

import os
import pickle
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torchvision.datasets.cifar as tv_cifar
from streamlit.testing.v1 import AppTest

from resattn import jobs

from .test_app import APP, CIFAR_CLASSES, checkpoints, no_exceptions, use_model  # noqa: F401 - a module fixture
from .test_dataset_page import grid

PER_BATCH = 10  # images in each fake batch file: five training batches and one test batch


def fake_cifar10(root: Path) -> None:
    """torchvision's CIFAR-10 folder with PER_BATCH random 32×32 images per batch, labels cycling over classes."""
    folder = root / tv_cifar.CIFAR10.base_folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, _ in tv_cifar.CIFAR10.train_list + tv_cifar.CIFAR10.test_list:
        batch = {"data": rng.integers(0, 256, (PER_BATCH, 3 * 32 * 32), dtype=np.uint8),
                 "labels": [i % 10 for i in range(PER_BATCH)]}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": CIFAR_CLASSES}))


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A new user's machine: no RESATTN_DATASETS, an empty home (so an empty ~/.cache/resattn/cifar10), the tiny
    checkpoints, and torchvision's MD5 checks reduced to "the file is there"."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RESATTN_DATASETS", raising=False)
    monkeypatch.delenv("RESATTN_GALLERY_DATA", raising=False)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))
    from ui import dataset_tools

    dataset_tools._torchvision_arrays.cache_clear()  # arrays another test's fake home left in this process
    yield tmp_path / ".cache" / "resattn" / "cifar10"
    dataset_tools._torchvision_arrays.cache_clear()


@pytest.fixture
def app(home, checkpoints, monkeypatch):
    monkeypatch.setenv("RESATTN_CHECKPOINT_DIR", str(checkpoints))
    monkeypatch.setenv("RESATTN_APP_MODELS", "none")
    return AppTest.from_file(str(APP / "main.py"), default_timeout=300).run()


def offline(monkeypatch) -> list[str]:
    """torchvision's download fails as it does without network; returns the URLs it was asked for."""
    asked: list[str] = []

    def fail(url, *args, **kwargs):
        asked.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", fail)
    return asked


def online(monkeypatch) -> list[str]:
    """torchvision's download succeeds, writing (fake) CIFAR-10 where torchvision asked."""
    asked: list[str] = []

    def fetch(url, root, *args, **kwargs):
        asked.append(url)
        fake_cifar10(Path(root))

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", fetch)
    return asked


def test_unset_means_torchvisions_cifar10_and_set_replaces_it(monkeypatch):
    monkeypatch.delenv("RESATTN_DATASETS", raising=False)
    assert jobs.configured_datasets() == {"cifar10": "cifar10"}  # what --data cifar10 already means: torchvision's
    monkeypatch.setenv("RESATTN_DATASETS", "")
    assert jobs.configured_datasets() == {}  # set, even empty: exactly what it says
    monkeypatch.setenv("RESATTN_DATASETS", "pets=/data/pets.zip")
    assert jobs.configured_datasets() == {"pets": "/data/pets.zip"}


def test_without_internet_the_dataset_page_says_what_to_do_and_claims_nothing(app, home, monkeypatch):
    asked = offline(monkeypatch)
    at = use_model(app, "a_tiny")
    at.switch_page("views/dataset.py").run()
    no_exceptions(at)
    assert at.selectbox(key="dataset_source").value == "cifar10"
    assert any("CIFAR-10 is not downloaded yet" in i.value and str(home) in i.value for i in at.info)
    assert not asked and not at.error  # opening the page downloads nothing
    at.button(key="dataset_download").click().run()
    no_exceptions(at)
    assert asked == [tv_cifar.CIFAR10.url]
    error = "\n".join(e.value for e in at.error)
    assert "CIFAR-10 could not be downloaded" in error and "Temporary failure in name resolution" in error
    assert "copy `cifar-10-python.tar.gz`" in error and str(home) in error  # where to put the archive
    assert "RESATTN_DATASETS=name=/path/to/dataset.zip" in error and "upload such a zip" in error
    assert not at.success and not grid(at) and not (home / tv_cifar.CIFAR10.base_folder).exists()


def test_with_internet_one_click_downloads_checks_and_shows_cifar10(app, home, monkeypatch):
    asked = online(monkeypatch)
    at = use_model(app, "a_tiny")
    at.switch_page("views/dataset.py").run()
    assert not asked
    at.button(key="dataset_download").click().run()
    no_exceptions(at)
    assert asked == [tv_cifar.CIFAR10.url]
    assert [s.value for s in at.success] == [f"Downloaded and checked: CIFAR-10 is in {home}: "
                                             f"{5 * PER_BATCH} training and {PER_BATCH} test images."]
    assert len(grid(at)) == PER_BATCH  # every test image, with the model's prediction and its mask
    assert any(f"**{PER_BATCH}** of the {PER_BATCH} images of **cifar10** / test" in m.value for m in at.markdown)
    at.button(key="dataset_open_3").click().run()  # torchvision's image 3 (a cat), opened in Explore
    no_exceptions(at)
    assert at.session_state["dataset_pick"]["name"] == "cifar10/test/cat/00003.png"


def test_the_train_page_offers_cifar10_and_its_classes_before_any_download(app, monkeypatch):
    offline(monkeypatch)
    at = app.switch_page("views/train.py").run()
    no_exceptions(at)
    assert at.selectbox(key="train_data").value == "cifar10"
    assert at.multiselect(key="train_classes").options == CIFAR_CLASSES
    assert any("CIFAR-10 is not downloaded yet" in i.value for i in at.info)
    at.button(key="train_download").click().run()
    assert any("CIFAR-10 could not be downloaded" in e.value for e in at.error)
