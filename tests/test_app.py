"""The explorer driven headlessly with streamlit.testing (AppTest): every page and every main control path,
on tiny randomly initialised models and a tiny checkpoint written to tmp_path, plus one test per bad input."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

import resattn
try:  # tests/ may or may not be a package
    from .imagefiles import bad_files, encode, photo, single_thread  # noqa: F401 - single_thread is an autouse fixture
except ImportError:
    from imagefiles import bad_files, encode, photo, single_thread  # noqa: F401

APP = Path(__file__).resolve().parents[1] / "app"
TINY = "attention56_cifar:width_mult=0.25;attention=spatial;learning=nal"
sys.path.insert(0, str(APP))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A tiny mixed/ARL checkpoint and a broken one (which must fall back)."""
    folder = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    model = resattn.create_model("attention56_cifar", width_mult=0.25)
    meta = {"classes": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
            "input_size": 32, "mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26], "dataset": "cifar10",
            "metrics": {"test_top1": 0.5}, "recipe": "test"}
    resattn.save_checkpoint(folder / "a_tiny.safetensors", model, meta)
    (folder / "z_broken.safetensors").write_bytes(b"\x80\x04 not a checkpoint")
    return folder


@pytest.fixture
def app(checkpoints, monkeypatch):
    monkeypatch.setenv("RESATTN_CHECKPOINT_DIR", str(checkpoints))
    monkeypatch.setenv("RESATTN_APP_MODELS", TINY)
    monkeypatch.delenv("RESATTN_GALLERY_DATA", raising=False)
    at = AppTest.from_file(str(APP / "main.py"), default_timeout=300)  # generous: first imports are slow on a loaded 2-core machine
    return at.run()


def no_exceptions(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def upload(at: AppTest, *files: tuple[str, bytes]) -> AppTest:
    at.radio(key="source").set_value("Upload").run()
    at.file_uploader(key="upload").set_value([(name, data, "image/png") for name, data in files])
    return at.run()


def captions(at: AppTest) -> str:
    return "\n".join(c.value for c in at.caption)


def test_explore_gallery_shows_predictions_and_mask_panels(app):
    no_exceptions(app)
    assert len(app.dataframe) == 1 and len(app.dataframe[0].value) == 5  # top-5
    assert len(app.image) >= 4  # the model's view + M, T, H
    text = captions(app)
    assert "range [" in text and "sign:" in text and "⏱" in text
    assert "a_tiny" in app.selectbox(key="model").value
    assert any("stage 1, module 1" in s.value.lower() for s in app.subheader)


def test_upload_several_images_and_pick_one(app):
    at = upload(app, ("one.png", encode(photo(64, 48, seed=1))), ("two.jpg", encode(photo(80, 80, seed=2), "JPEG")))
    no_exceptions(at)
    assert at.selectbox(key="image_choice").options == ["one.png", "two.jpg"]
    at.selectbox(key="image_choice").set_value("two.jpg").run()
    no_exceptions(at)
    assert len(at.image) >= 4 and "two.jpg" in "".join(" ".join(i.captions) for i in at.image)


@pytest.mark.parametrize("kind", list(bad_files()))
def test_bad_upload_is_reported_and_the_app_goes_on(app, kind):
    name, data = bad_files()[kind]
    at = upload(app, (name, data), ("good.png", encode(photo(40, 40))))
    no_exceptions(at)
    assert any(name in e.value and "Cannot use" in e.value for e in at.error)
    assert len(at.image) >= 4  # the good image is still explored


def test_camera_input_path(app):
    at = app.radio(key="source").set_value("Camera").run()
    no_exceptions(at)
    assert len(at.camera_input) == 1 and any("Upload an image" in i.value for i in at.info)


def test_model_switch_to_random_and_broken_checkpoint_falls_back(app):
    labels = app.selectbox(key="model").options
    random_label = next(label for label in labels if label.startswith("RANDOM"))
    at = app.selectbox(key="model").set_value(random_label).run()
    no_exceptions(at)
    assert any("RANDOM" in w.value for w in at.warning)
    broken = next(label for label in labels if "z_broken" in label)
    at.selectbox(key="model").set_value(broken).run()
    no_exceptions(at)
    assert any("Falling back" in e.value and "pickle" in e.value for e in at.error)
    assert len(at.image) >= 4


def test_stage_and_module_switch(app):
    at = app.selectbox(key="stage").set_value(3).run()
    no_exceptions(at)
    assert any("Stage 3, module 1" in s.value for s in at.subheader)
    assert "8×8" in captions(at)  # stage 3 of the CIFAR topology works at 8×8


@pytest.mark.parametrize("reduction", ["mean", "max", "channel", "topk"])
def test_each_reduction(app, reduction):
    at = app.radio(key="reduction").set_value(reduction).run()
    if reduction == "channel":
        at.slider(key="channel").set_value(3).run()
    if reduction == "topk":
        at.slider(key="topk").set_value(4).run()
    no_exceptions(at)
    markdown = "\n".join(m.value for m in at.markdown)
    expected = {"mean": "channel mean", "max": "channel max", "channel": "channel 3", "topk": "top-4"}[reduction]
    assert expected in markdown
    if reduction == "topk":
        assert sum("top-4 channels by mask energy" in c for i in at.image for c in i.captions) == 3


def test_overlay_controls_and_panel_exports(app):
    at = app.toggle(key="overlay").set_value(False).run()
    at.selectbox(key="cmap").set_value("magma")
    at.slider(key="alpha").set_value(0.8).run()
    no_exceptions(at)
    keys = {b.key for b in at.get("download_button")}
    assert {"png_M", "png_T", "png_H", "export_npz", "export_json"} <= keys


def test_export_npz_and_manifest_content(app):
    import components

    ctx = app.session_state["_context"]
    manifest = components.manifest(ctx, reduction="mean", method="soft mask", predicted_class="cat")
    data = np.load(io.BytesIO(components.npz_bytes({"M_raw": np.ones((2, 3, 3))}, manifest)))
    stored = json.loads(str(data["manifest"]))
    assert stored["image_hash"] == ctx.image_hash and stored["checkpoint_hash"] == ctx.entry.key
    assert {"stage", "module", "reduction", "method", "versions"} <= set(stored)
    assert stored["versions"]["torch"] == torch.__version__
    assert data["M_raw"].shape == (2, 3, 3)


@pytest.mark.parametrize("method", ["gradcam", "guided_gradcam", "integrated_gradients", "occlusion"])
def test_attribution_page_each_method(app, method):
    app.switch_page("views/attribution.py").run()
    at = app.multiselect(key="methods").set_value([method]).run()
    no_exceptions(at)
    assert len(at.image) >= 2  # mask + attribution
    assert len(at.dataframe) == 1 and len(at.dataframe[0].value) == 1  # agreement row
    assert any("agreement" in i.value.lower() for i in at.info)
    assert "⏱" in captions(at)


def test_attribution_other_class(app):
    app.switch_page("views/attribution.py").run()
    second = app.selectbox(key="target").options[1]
    at = app.selectbox(key="target").set_value(second).run()
    no_exceptions(at)
    assert len(at.image) >= 2


def test_compare_page_lists_every_loadable_model(app):
    at = app.switch_page("views/compare.py").run()
    no_exceptions(at)
    rows = at.dataframe[0].value
    assert len(rows) == 2  # the tiny checkpoint and the random model; the broken one is reported instead
    assert {"mean mask", "fraction > 0.5", "mean |H| stage 1"} <= set(rows.columns)
    assert any("z_broken" in e.value for e in at.error)


def test_learn_page_equations_architecture_path_and_knockout(app):
    at = app.switch_page("views/learn.py").run()
    no_exceptions(at)
    assert len(at.latex) >= 5
    assert any("unverified" in w.value for w in at.warning)
    assert len(at.get("graphviz_chart")) == 1
    results = {}
    for mode in ("zero", "one", "mean"):
        at.radio(key="knockout").set_value(mode).run()
        no_exceptions(at)
        results[mode] = tuple(at.dataframe[-1].value["after"])
    assert len(set(results.values())) == 3  # each knock-out changes the prediction differently


def test_train_slot(app):
    at = app.switch_page("views/train.py").run()
    no_exceptions(at)
    assert at.title[0].value == "Train"
