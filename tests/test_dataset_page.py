"""The Dataset page and the faithfulness panels driven headlessly (AppTest) on a tiny generated dataset and tiny
checkpoints: the grid with its masks, sorting and filtering, per-class means, an uploaded zip and a malicious one,
a click that opens an image in Explore; deletion/insertion on the Attribution page and the randomisation sanity
check on the Learn page, checked against direct computations with resattn."""

from __future__ import annotations

import io
import re
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

import resattn
from resattn import faithfulness as F
from resattn.images import load_image
from resattn.preprocess import Preprocessing

from .imagefiles import encode, photo, single_thread  # noqa: F401 - single_thread is an autouse fixture
from .test_app import captions, checkpoints, model_key, no_exceptions, use_model  # noqa: F401 - a module-scoped fixture
from .test_data import make_tree, zip_tree

APP = Path(__file__).resolve().parents[1] / "app"
sys.path.insert(0, str(APP))
CLASSES = ("cat", "dog", "frog")  # three of CIFAR-10's classes: the tiny CIFAR checkpoint knows them


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A zip of 32×32 PNGs, train/ and test/ with cat, dog and frog (4 test images each)."""
    root = tmp_path_factory.mktemp("dataset_page")
    return zip_tree(make_tree(root / "tree", classes=CLASSES, per_class=(2, 4), size=32), root / "tiny.zip")


@pytest.fixture
def app(checkpoints, dataset, monkeypatch):
    """The explorer on the tiny checkpoints with the tiny dataset configured; the gallery photo is chosen."""
    monkeypatch.setenv("RESATTN_CHECKPOINT_DIR", str(checkpoints))
    monkeypatch.setenv("RESATTN_APP_MODELS", "none")
    monkeypatch.setenv("RESATTN_DATASETS", f"tiny={dataset}")
    monkeypatch.delenv("RESATTN_GALLERY_DATA", raising=False)
    return AppTest.from_file(str(APP / "main.py"), default_timeout=300).run()


def dataset_page(at: AppTest, stem: str | None = "a_tiny") -> AppTest:
    if stem:
        use_model(at, stem)
    at.switch_page("views/dataset.py").run()
    no_exceptions(at)
    return at


def grid(at: AppTest) -> list[str]:
    """The captions of the grid's thumbnails, in page order."""
    return [c.value for c in at.main.caption if c.value.startswith("#")]


def positions(at: AppTest) -> list[int]:
    return [int(c[1:].split(" ")[0]) for c in grid(at)]


def shown_values(at: AppTest, stat: str = "mean") -> list[float]:
    return [float(re.search(rf"{stat} (-?[\d.]+)$", c).group(1)) for c in grid(at)]


# ------------------------------------------------------------------------------------------- the Dataset page


def test_grid_shows_every_image_with_its_mask_scale_and_the_models_own_predictions(app, checkpoints, dataset):
    at = dataset_page(app)
    assert positions(at) == list(range(12))  # 12 test images, in split order
    text = captions(at)
    assert "one scale for every thumbnail on this page: stretched to the 1st–99th percentile of the masks" in text
    assert "channel mean of M, stage 1 module 1 (32×32)" in text
    assert any("**12** of the 12 images of **tiny** / test" in m.value for m in at.markdown)
    # what each thumbnail claims is what the model predicts for that file, decoded as the sidebar decodes it
    model, meta = resattn.load_checkpoint(checkpoints / "a_tiny.safetensors")
    prep = Preprocessing.from_meta(meta)
    with zipfile.ZipFile(dataset) as zf:
        files = sorted(n for n in zf.namelist() if n.startswith("test/"))
        with torch.no_grad():
            probs = [torch.softmax(model(prep(load_image(zf.read(n), n))), 1)[0] for n in files]
    for caption, name, p in zip(grid(at), files, probs):
        truth = name.split("/")[1]
        guess = meta["classes"][int(p.argmax())]
        assert f" · {truth} → {guess} " in caption and f"p {float(p.max()):.2f}" in caption, (caption, name)
    # the paper's Fig. 4 quantity over these images: each stage's mean |output|, averaged over the 12 files
    with zipfile.ZipFile(dataset) as zf:
        traces = [resattn.inspect(model, prep(load_image(zf.read(n), n))) for n in files]
    stages = np.mean([[float(s.abs().mean()) for s in t.stage_outputs] for t in traces], axis=0)
    line = next(m.value for m in at.markdown if "the quantity of the paper's Fig. 4" in m.value)
    assert ", ".join(f"stage {s} **{v:.3f}**" for s, v in enumerate(stages, start=1)) in line


def test_sorting_and_filtering_change_the_order_and_the_count(app):
    at = dataset_page(app)
    at.selectbox(key="dataset_sort").set_value("mean").run()
    no_exceptions(at)
    values = shown_values(at)
    assert values == sorted(values, reverse=True) and positions(at) != list(range(12))
    at.toggle(key="dataset_descending").set_value(False).run()
    assert shown_values(at) == sorted(values)
    correct = sum("✓" in c for c in grid(at))
    at.radio(key="dataset_filter").set_value("wrong").run()
    no_exceptions(at)
    assert len(grid(at)) == 12 - correct and all("✗" in c for c in grid(at))
    at.radio(key="dataset_filter").set_value("all").run()
    box = next(m for m in at.multiselect if str(m.key).startswith("dataset_classes|"))
    box.set_value([3]).run()  # CIFAR index 3: cat
    assert len(grid(at)) == 4 and all(" · cat → " in c for c in grid(at))
    box = next(m for m in at.multiselect if str(m.key).startswith("dataset_classes|"))
    box.set_value([]).run()
    slider = next(s for s in at.slider if str(s.key).startswith("dataset_stat_range|mean|"))
    middle = float(np.median(values))
    slider.set_value((middle, slider.max)).run()
    no_exceptions(at)
    kept = shown_values(at)
    assert 0 < len(kept) < 12 and all(v >= middle - 1e-3 for v in kept)
    at.slider(key="dataset_confidence").set_value((0.99, 1.0)).run()
    assert len(grid(at)) <= len(kept)


def test_per_class_mean_masks_with_counts_and_a_stated_scale(app):
    at = dataset_page(app)
    text = captions(at)
    for cls in CLASSES:
        assert f"{cls} (n = 4, top-1 " in text
    assert "one scale for every class mean: stretched to the 1st–99th percentile of the class means: " in text
    at.radio(key="dataset_contrast").set_value("fixed").run()
    no_exceptions(at)
    text = captions(at)
    assert "one scale for every class mean: fixed scale 0–1 (sigmoid mask) (viridis)" in text
    assert "one scale for every thumbnail on this page: fixed scale 0–1 (sigmoid mask) (viridis)" in text
    at.number_input(key="dataset_limit").set_value(6).run()  # spread over the split: 2 per class
    no_exceptions(at)
    assert len(grid(at)) == 6 and all(f"{cls} (n = 2, " in captions(at) for cls in CLASSES)


def test_a_model_without_these_classes_is_refused_with_the_models_that_have_them(app):
    at = dataset_page(app, stem="b_photo")  # tench / church / parachute
    warnings = "\n".join(e.value for e in at.warning)
    assert "cannot be shown with this model" in warnings and "no class cat, dog, frog" in warnings
    assert "a_tiny" in warnings and not grid(at) and not at.error


@pytest.fixture
def two_datasets(checkpoints, dataset, tmp_path, monkeypatch):
    """The tiny CIFAR-class dataset first, then Imagenette-style folders (WordNet ids) of the photo model's
    classes (tench, church, parachute); the app as it opens, with the photo model."""
    folders = ("n01440764", "n03028079", "n03888257")
    photos = zip_tree(make_tree(tmp_path / "tree", classes=folders, per_class=(1, 2), size=32), tmp_path / "p.zip")
    monkeypatch.setenv("RESATTN_CHECKPOINT_DIR", str(checkpoints))
    monkeypatch.setenv("RESATTN_APP_MODELS", "none")
    monkeypatch.setenv("RESATTN_DATASETS", f"tiny={dataset},photos={photos}")
    monkeypatch.delenv("RESATTN_GALLERY_DATA", raising=False)
    return AppTest.from_file(str(APP / "main.py"), default_timeout=300).run()


def test_the_page_opens_on_a_dataset_the_model_knows_and_follows_the_model(two_datasets):
    at = dataset_page(two_datasets, stem=None)
    assert at.selectbox(key="model").value == model_key(at, "b_photo")  # the app's default model for photos
    assert at.selectbox(key="dataset_source").value == "photos"  # not tiny, the first, whose classes it lacks
    assert not at.error and not at.warning
    assert sorted(c.split(" · ")[1].split(" → ")[0] for c in grid(at)) == ["church"] * 2 + ["parachute"] * 2 + \
        ["tench"] * 2  # class names, not the WordNet ids of the folders
    box = next(m for m in at.multiselect if str(m.key).startswith("dataset_classes|"))
    assert box.options == ["tench", "church", "parachute"]
    use_model(at, "a_tiny")  # another model in the sidebar: the page moves to a dataset it knows
    no_exceptions(at)
    assert at.selectbox(key="dataset_source").value == "tiny" and len(grid(at)) == 12
    at.selectbox(key="dataset_source").set_value("photos").run()  # a choice of the user's is kept, and explained
    warning = "\n".join(w.value for w in at.warning)
    assert "photos cannot be shown with this model: the model has no class church, parachute, tench " in warning
    assert "n0" not in warning.split("(its classes")[0] and "b_photo" in warning and not grid(at)


def test_an_uploaded_zip_of_class_folders_works(app, tmp_path):
    tree = tmp_path / "upload"
    for c, cls in enumerate(("cat", "dog")):
        (tree / cls).mkdir(parents=True)
        for i in range(5):  # 48 px: resized to the model's 32 px input
            (tree / cls / f"{i}.png").write_bytes(encode(photo(48, 48, seed=10 * c + i)))
    data = zip_tree(tree, tmp_path / "classes.zip").read_bytes()
    at = dataset_page(app)
    at.selectbox(key="dataset_source").set_value("Upload a zip of class folders…").run()
    at.file_uploader(key="dataset_upload").set_value(("classes.zip", data, "application/zip")).run()
    no_exceptions(at)
    assert any("8 training and 2 test images in 2 classes" in c.value for c in at.caption)
    assert len(grid(at)) == 2 and "cat (n = 1" in captions(at) and "dog (n = 1" in captions(at)


def test_a_zip_with_path_traversal_is_refused_and_nothing_is_left(app, tmp_path):
    good = encode(photo(32, 32))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for split in ("train", "test"):
            for cls in ("cat", "dog"):
                zf.writestr(f"{split}/{cls}/0.png", good)
        zf.writestr("../evil.png", good)
    temp = Path(tempfile.gettempdir())
    before = set(temp.glob("resattn-dataset-*"))
    at = dataset_page(app)
    at.selectbox(key="dataset_source").set_value("Upload a zip of class folders…").run()
    at.file_uploader(key="dataset_upload").set_value(("evil.zip", buffer.getvalue(), "application/zip")).run()
    no_exceptions(at)
    errors = "\n".join(e.value for e in at.error)
    assert "The zip was refused" in errors and "../evil.png" in errors and "escapes" in errors
    assert not grid(at)
    assert set(temp.glob("resattn-dataset-*")) == before  # its temporary folder is gone
    assert not (temp / "evil.png").exists() and not (temp.parent / "evil.png").exists()


def test_a_click_opens_the_image_in_explore_and_the_sidebar_can_go_back(app):
    at = dataset_page(app)
    at.button(key="dataset_open_9").click().run()  # frog/001.png
    no_exceptions(at)
    assert at.title[0].value == "Explore the soft masks"
    assert at.session_state["dataset_pick"]["name"] == "tiny/test/frog/001.png"
    ctx = at.session_state["_context"]
    assert ctx.image_name == "tiny/test/frog/001.png" and ctx.entry.path.stem == "a_tiny"
    assert any("Image from the Dataset page" in i.value for i in at.sidebar.info)
    at.button(key="dataset_pick_clear").click().run()
    no_exceptions(at)
    assert "dataset_pick" not in at.session_state and at.session_state["_context"].image_name != ctx.image_name


def test_the_page_works_without_an_image(app):
    at = use_model(app, "a_tiny")
    at.radio(key="source").set_value("Upload").run()  # nothing uploaded: no image, no context
    at.switch_page("views/dataset.py").run()
    no_exceptions(at)
    assert "_context" not in at.session_state
    assert len(grid(at)) == 12 and "a_tiny" in at.markdown[0].value


# ---------------------------------------------------------------------------------------- faithfulness panels


def _gallery_image(label: str):
    """The gallery photo the app lists under ``label`` ("NAME [SOURCE]"), decoded as the app decodes it."""
    item = next(i for i in resattn.images.gallery() if f"{i.label} [{i.source}]" == label)
    return load_image(item.read(), label)


def test_deletion_insertion_panel_on_the_attribution_page_matches_the_library(app):
    at = use_model(app, "a_tiny")
    at.switch_page("views/attribution.py").run()
    at.toggle(key="faithful_deletion").set_value(True).run()
    no_exceptions(at)
    assert len(at.get("plotly_chart")) == 1
    table = at.dataframe[-1].value
    assert list(table["map"]) == [F.MAP_NAMES[n] for n in F.DELETION_MAPS]  # every map and every control
    ctx = at.session_state["_context"]
    other_label = at.selectbox(key="faithful_other").value
    assert other_label != ctx.image_name
    target = int(np.argmax(ctx.trace().probs))
    prep = Preprocessing.from_meta(ctx.meta)
    x, other = prep(ctx.image), prep(_gallery_image(other_label))
    maps = F.saliency_maps(ctx.model, x, target, ctx.stage, ctx.index, other=other)
    direct = F.faithfulness_curves(ctx.model, x, target, maps)
    np.testing.assert_allclose(table["deletion AUC (lower is better)"], [direct[n]["deletion"].auc for n in maps],
                               atol=1e-6)
    np.testing.assert_allclose(table["insertion AUC (higher is better)"],
                               [direct[n]["insertion"].auc for n in maps], atol=1e-6)
    text = captions(at)
    assert "**Choices.** 32 equal steps" in text and "σ = 2 px" in text and "**Caveats.**" in text
    assert "**Baseline**" in text and "favours IG" in text and other_label in text
    scored = [c for c in text.splitlines() if c.startswith(tuple(F.MAP_NAMES.values()))]
    # every drawn map states its range, and has a colorbar (page text) that states its scale
    assert len(scored) >= 4 and all("range [" in c for c in scored)
    assert text.count("colours: ") >= len(scored)
    # another "other" image gives another control map, and only that control changes
    labels = at.selectbox(key="faithful_other").options
    at.selectbox(key="faithful_other").set_value(next(l for l in labels if l not in (other_label, ctx.image_name))).run()
    no_exceptions(at)
    again = at.dataframe[-1].value
    changed = [m for m, a, b in zip(again["map"], again["deletion AUC (lower is better)"],
                                    table["deletion AUC (lower is better)"]) if abs(a - b) > 1e-9]
    assert changed == [F.MAP_NAMES["other"]]


def test_dataset_panel_scores_every_map_and_tests_pairs_image_by_image(app, dataset):
    at = use_model(app, "a_tiny")
    at.switch_page("views/attribution.py").run()
    at.number_input(key="faithful_dataset_limit").set_value(6).run()
    at.toggle(key="faithful_dataset_run").set_value(True).run()
    no_exceptions(at)
    summary, pairs = at.dataframe[-2].value, at.dataframe[-1].value
    assert list(summary["map"]) == [F.MAP_NAMES[n] for n in F.DELETION_MAPS]
    assert pairs["A − B"].iloc[0] == f"{F.MAP_NAMES['mask']} − {F.MAP_NAMES['other']}"  # the chosen pair first
    # the same run with the library on the same six images (spread over the class-sorted split)
    ctx = at.session_state["_context"]
    from resattn.data import load_split

    decoded = load_split(str(dataset), "test", 32, crop=32)
    chosen = resattn.masks.spread_indices(len(decoded.labels), 6)
    labels = torch.tensor([ctx.classes.index(CLASSES[int(i)]) for i in decoded.labels[chosen]])
    direct = F.faithfulness_over_dataset(ctx.model, ctx.meta, decoded.images[chosen], labels, ctx.stage, ctx.index,
                                         positions=chosen)
    np.testing.assert_allclose(summary["deletion AUC (lower is better)"],
                               [direct.summary()[n]["deletion_mean"] for n in F.DELETION_MAPS], atol=1e-5)
    paired = direct.paired("mask", "other", "insertion")
    assert pairs["insertion: mean A − B"].iloc[0] == pytest.approx(paired.mean, abs=1e-5)
    assert pairs["insertion: p (Wilcoxon)"].iloc[0] == pytest.approx(paired.p_wilcoxon, abs=1e-5)
    assert "6 images of the test split of tiny" in captions(at)


def test_sanity_panel_on_the_learn_page(app):
    at = use_model(app, "a_tiny")
    ctx = at.session_state["_context"]
    before = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    at.switch_page("views/learn.py").run()
    assert at.multiselect(key="sanity_maps").value == ["mask", "gradcam", "integrated_gradients"]
    at.toggle(key="sanity_run").set_value(True).run()
    no_exceptions(at)
    assert any("explains the architecture, not what was learned" in m.value for m in at.markdown)
    assert len(at.get("plotly_chart")) == 1
    table = at.dataframe[-1].value
    assert list(table["re-initialised to"]) == ["trained", "fc", "norm", "stage3", "stage2", "stage1", "stem"]
    assert "Grad-CAM ρ |·|" in table and "IG SSIM" in table
    rho = list(table["mask M ρ"])
    assert rho[:5] == pytest.approx([1.0] * 5)  # stage 1's mask cannot change before stage 1 is re-initialised
    assert rho[5] < 0.99
    assert table["Grad-CAM ρ"].iloc[0] == pytest.approx(1.0)
    steps = [c for c in captions(at).splitlines() if c.startswith(("trained · ", "→ "))]
    assert len(steps) == 3 * 7 and all("range [" in c for c in steps)
    for k, v in ctx.model.state_dict().items():  # the shared model is untouched
        assert torch.equal(v, before[k]), k


# --------------------------------------------------------- the panels and the hand-over without the wiring


SCRIPT = """
import inspect
import sys
sys.path.insert(0, {app!r})
import streamlit as st
from ui import components, dataset_tools, faithful_panels

components.keep_widget_state()
st.session_state.pop("_context", None)
ctx = components.sidebar()
faithful_panels.deletion_insertion_panel(ctx, {target})
faithful_panels.sanity_panel(ctx)
if "picked_image" in inspect.getsource(components._image_input):  # wired: the sidebar used the pick
    picked = (ctx.image, ctx.image_name, ctx.image_hash) if "dataset_pick" in st.session_state else None
else:
    picked = dataset_tools.picked_image(st.session_state.get("source"))
st.markdown(f"picked: {{picked[1] if picked else None}}")
"""


def test_panels_and_picked_image_in_a_small_script(checkpoints, monkeypatch):
    monkeypatch.setenv("RESATTN_CHECKPOINT_DIR", str(checkpoints))
    monkeypatch.setenv("RESATTN_APP_MODELS", "none")
    at = AppTest.from_string(SCRIPT.format(app=str(APP), target=2), default_timeout=300).run()
    no_exceptions(at)
    at.selectbox(key="model").set_value(model_key(at, "a_tiny")).run()
    at.toggle(key="faithful_deletion").set_value(True).run()
    at.multiselect(key="sanity_maps").set_value(["mask"]).run()
    at.toggle(key="sanity_run").set_value(True).run()
    no_exceptions(at)
    assert len(at.get("plotly_chart")) == 2 and "p(bird)" in str(at.get("plotly_chart")[0].proto.spec)
    assert len(at.dataframe[0].value) == len(F.DELETION_MAPS) and len(at.dataframe[1].value) == 7
    assert any(m.value == "picked: None" for m in at.markdown)
    at.session_state["dataset_pick"] = {"bytes": encode(photo(40, 30)), "name": "tiny/test/cat/000.png",
                                        "detail": "true class cat", "source": at.session_state["source"]}
    at.run()
    assert any(m.value == "picked: tiny/test/cat/000.png" for m in at.markdown)
    at.session_state["dataset_pick"] = {"bytes": b"not an image", "name": "bad.png", "source": None}
    at.run()
    assert any("Cannot use the image picked" in e.value for e in at.sidebar.error)
    assert "dataset_pick" not in at.session_state


def test_sanity_with_progress_equals_the_librarys_sanity_check(tiny_cifar):
    from ui import faithful_panels

    x = torch.randn(1, 3, 32, 32)
    calls = []
    ours = faithful_panels.sanity_with_progress(tiny_cifar, x, 3, 2, 1, ["mask", "gradcam"],
                                                progress=lambda done, total, text: calls.append((done, total)))
    theirs = F.sanity_check(tiny_cifar, x, 3, 2, 1, ["mask", "gradcam"])
    assert [s.block for s in ours.steps] == [s.block for s in theirs.steps]
    for a, b in zip(ours.steps, theirs.steps):
        assert a.probability == pytest.approx(b.probability) and a.prediction == b.prediction
        for n in ("mask", "gradcam"):
            np.testing.assert_allclose(a.maps[n], b.maps[n], atol=1e-6)
            assert a.spearman[n] == pytest.approx(b.spearman[n], nan_ok=True)
            assert a.ssim[n] == pytest.approx(b.ssim[n], nan_ok=True)
    assert calls[0] == (0, 7) and calls[-1] == (7, 7)


def test_label_map_matches_folders_and_names_and_refuses_unknown_classes():
    from ui import dataset_tools

    meta = {"classes": ["tench", "church"], "class_folders": ["n01440764", "n03028079"]}
    assert dataset_tools.label_map(["n03028079", "n01440764"], meta) == [1, 0]
    assert dataset_tools.label_map(["church"], {"classes": ["tench", "church"]}) == [1]
    with pytest.raises(ValueError, match="no class cat"):
        dataset_tools.label_map(["cat", "church"], meta)
