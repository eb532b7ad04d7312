"""What the model knows, on every page that shows predictions (issue 26): the class list, and the unsure-prediction
notice on scikit-image's cat (the photo model knows no cat) but not on an Imagenette validation image of one of its
classes. Uses the shipped photo model and its measured threshold (checkpoints/confidence.json)."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app"
PHOTO = "attention56_imagenette_mixed_arl.safetensors"
IMAGENETTE = ROOT.parent / "shared" / "data" / "imagenette-224.zip"
NOTICE = "may show none of the classes this model knows"


@pytest.fixture
def photo_app(tmp_path, monkeypatch):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / PHOTO).symlink_to(ROOT / "checkpoints" / PHOTO)
    (folder / "confidence.json").symlink_to(ROOT / "checkpoints" / "confidence.json")
    monkeypatch.setenv("RESATTN_CHECKPOINT_DIR", str(folder))
    monkeypatch.setenv("RESATTN_APP_MODELS", "none")
    if IMAGENETTE.exists():
        monkeypatch.setenv("RESATTN_GALLERY_DATA", str(IMAGENETTE))
    else:
        monkeypatch.delenv("RESATTN_GALLERY_DATA", raising=False)
    return AppTest.from_file(str(APP / "main.py"), default_timeout=300).run()


def _gallery(at: AppTest, start: str) -> AppTest:
    box = at.selectbox(key="gallery")
    choice = next(k for k in _keys(at) if k.startswith(start))
    return box.set_value(choice).run()


def _keys(at: AppTest) -> list[str]:
    import sys

    sys.path.insert(0, str(APP))
    from ui import components

    return list(components._gallery_items())


def _warnings(at: AppTest) -> str:
    return "\n".join(w.value for w in at.warning)


def _captions(at: AppTest) -> str:
    return "\n".join(c.value for c in at.caption)


@pytest.mark.parametrize("page", ["explore", "attribution", "compare", "learn"])
def test_the_cat_gets_the_notice_and_the_class_list_on_every_page(photo_app, page):
    at = _gallery(photo_app, "cat (Chelsea)")
    if page != "explore":
        at.switch_page(f"views/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    if page == "compare":
        assert "may show none of the classes these models know" in _warnings(at)
        assert "attention56_imagenette_mixed_arl (p = 0.40, below 0.46)" in _warnings(at)
        assert "can name 10 classes, and only these: tench" in _captions(at)
    else:
        assert NOTICE in _warnings(at)
        assert "This model can name 10 classes, and only these: tench, English springer" in _captions(at)


def test_the_gallery_marks_no_photo_of_a_model_class_among_the_package_photos(photo_app):
    labels = photo_app.selectbox(key="gallery").options  # AppTest lists the labels the picker shows
    cat = next(label for label in labels if label.startswith("cat (Chelsea)"))
    assert "none of this model's classes" in cat


@pytest.mark.skipif(not IMAGENETTE.exists(), reason="needs ../shared/data/imagenette-224.zip")
def test_a_validation_image_of_a_model_class_gets_no_notice_and_is_marked(photo_app):
    at = _gallery(photo_app, "church (")
    assert not at.exception, [e.value for e in at.exception]
    assert NOTICE not in _warnings(at)
    label = at.selectbox(key="gallery").options[_keys(at).index(at.selectbox(key="gallery").value)]
    assert label.startswith("✓ church") and "a class of this model" in label
