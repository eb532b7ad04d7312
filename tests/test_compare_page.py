"""The Compare page for a projector (issue 24), driven headlessly with AppTest: masks of different natural ranges
(sigmoid 0–1, channel attention −1–1) get a scale and colorbar each and every sigmoid thumbnail stays readable;
the thumbnails are drawn over each model's picture with their names on a line of their own; the heading names
exactly the paper's tables that have rows; the Fig. 4 text names a ResNet baseline only when one is compared."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
import resattn
import torch
from PIL import Image
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.testing.v1 import AppTest

try:
    from .test_app import APP, CIFAR_CLASSES, TINY, _settle_bn, checkpoints, colorbars, no_exceptions  # noqa: F401
except ImportError:
    from test_app import APP, CIFAR_CLASSES, TINY, _settle_bn, checkpoints, colorbars, no_exceptions  # noqa: F401

META = {"classes": CIFAR_CLASSES, "input_size": 32, "mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26],
        "dataset": "cifar10", "metrics": {"test_top1": 0.5}, "recipe": "test"}


def _save(folder, name: str, arch: str, top1: float = 0.5, width: float = 0.25, size: int = 32,
          dataset: str = "cifar10", test_images: int = 10000, **overrides) -> None:
    torch.manual_seed(0)
    model = _settle_bn(resattn.create_model(arch, width_mult=width, **overrides), size)
    recipe = {"recipe": "fast", "epochs": 80.0, "seed": 0}
    resattn.save_checkpoint(folder / f"{name}.safetensors", model, {
        **META, "input_size": size, "dataset": dataset, "epochs": 80.0,
        "metrics": {"test_top1": top1, "test_images": test_images}, "recipe": recipe})


@pytest.fixture(scope="module")
def mixed_row(tmp_path_factory):
    """Quarter-width CIFAR models of every attention type (sigmoid masks and a channel-attention one) and a
    ResNet baseline without attention modules."""
    folder = tmp_path_factory.mktemp("compare_row")
    _save(folder, "m_mixed", "attention56_cifar")
    _save(folder, "m_spatial", "attention56_cifar", attention="spatial")
    _save(folder, "m_channel", "attention56_cifar", attention="channel")
    _save(folder, "r_resnet", "resnet164_cifar")
    return folder


@pytest.fixture(scope="module")
def paper_row(tmp_path_factory):
    """Full-width CIFAR checkpoints of one budget: mixed ARL and channel ARL (Table 1), mixed NAL (Table 3)."""
    folder = tmp_path_factory.mktemp("compare_paper")
    _save(folder, "mixed_arl", "attention56_cifar", top1=0.9045, width=1.0)
    _save(folder, "mixed_nal", "attention56_cifar", top1=0.9027, width=1.0, learning="nal")
    _save(folder, "channel_arl", "attention56_cifar", top1=0.9012, width=1.0, attention="channel")
    return folder


@pytest.fixture(scope="module")
def photo_row(tmp_path_factory):
    """Quarter-width photo models of one budget (64 px, as Imagenette's 3,925 validation images would have
    scored them): mixed ARL and spatial ARL."""
    folder = tmp_path_factory.mktemp("compare_photo")
    for name, top1, attention in (("p_mixed", 0.883, "mixed"), ("p_spatial", 0.861, "spatial")):
        _save(folder, name, "attention56_imagenet", top1=top1, size=64, dataset="imagenette-224",
              test_images=3925, attention=attention, num_classes=10)
    return folder


@pytest.fixture
def media(monkeypatch) -> dict[str, bytes]:
    """The bytes of every picture the app sends, by media id (AppTest drops its media store after each run)."""
    kept: dict[str, bytes] = {}
    original = MemoryMediaFileStorage.load_and_get_id

    def keep(self, path_or_data, mimetype, kind, filename=None):
        file_id = original(self, path_or_data, mimetype, kind, filename)
        kept[file_id] = self._files_by_id[file_id].content
        return file_id

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", keep)
    return kept


def compare_page(folder, monkeypatch) -> AppTest:
    monkeypatch.setenv("RESATTN_CHECKPOINT_DIR", str(folder))
    monkeypatch.setenv("RESATTN_APP_MODELS", TINY)
    monkeypatch.delenv("RESATTN_GALLERY_DATA", raising=False)
    at = AppTest.from_file(str(APP / "main.py"), default_timeout=300).run()
    at = at.switch_page("views/compare.py").run()
    no_exceptions(at)
    return at


def _thumb_names(at) -> list[str]:
    """The model names under the thumbnails, in page order (``<wbr>`` marks where a long name may break)."""
    return [re.sub(r"<[^>]+>", "", re.search(r"<b>(.*?)</b>", m.value).group(1))
            for m in at.markdown if 'class="ra-thumb"' in m.value]


def _ticks(bar: str) -> list[float]:
    return [float(t.replace("−", "-")) for t in re.findall(r'<span class="ra-tick">([^<]*)</span>', bar)]


def _pixels(at, media: dict[str, bytes]) -> list[np.ndarray]:
    """The thumbnails as drawn (RGB arrays), in page order."""
    out = []
    for image in at.main.get("image"):
        (url,) = image.value
        out.append(np.asarray(Image.open(io.BytesIO(media[url.rsplit("/", 1)[-1].split(".")[0]])).convert("RGB")))
    return out


def test_sigmoid_and_channel_masks_never_share_a_scale(mixed_row, monkeypatch, media):
    at = compare_page(mixed_row, monkeypatch)
    at.session_state["alpha"] = 1.0  # the Explore page's opacity: the thumbnails are then the colour maps alone
    at.radio(key="contrast_compare").set_value("shared_stretch").run()
    no_exceptions(at)
    assert _thumb_names(at) == ["m_mixed", "m_spatial", "m_channel"]  # sigmoid masks first; the ResNet has none
    text = "\n".join(m.value for m in at.markdown)
    assert "never share a colour scale" in text and "natural range 0 to 1" in text and "natural range −1 to 1" in text
    bars = colorbars(at)
    (sigmoid,) = [b for b in bars if "sigmoid-mask thumbnails (m_mixed, m_spatial)" in b]
    (channel,) = [b for b in bars if "channel-attention thumbnails (m_channel)" in b]
    assert len(bars) == 2  # one per kind of mask, and no other
    low, middle, high = _ticks(sigmoid)
    assert 0 <= low < middle < high <= 1  # the sigmoid masks' own range, not a scale centred on 0
    assert _ticks(channel) != _ticks(sigmoid)
    pictures = _pixels(at, media)
    assert len(pictures) == 3
    from matplotlib import colormaps

    ends = colormaps["viridis"]([0.0, 1.0])[:, :3] * 255
    pooled = np.concatenate([p.reshape(-1, 3) for p in pictures[:2]]).astype(float)
    for end in ends:  # the two sigmoid masks together span the whole colormap
        assert np.linalg.norm(pooled - end, axis=1).min() < 25
    for picture in pictures[:2]:  # and neither is a flat square
        assert len(np.unique(picture.reshape(-1, 3), axis=0)) > 50 and picture.std(axis=(0, 1)).max() > 10


def test_per_model_scales_give_each_thumbnail_its_colorbar_over_its_picture(mixed_row, monkeypatch, media):
    at = compare_page(mixed_row, monkeypatch)
    at.radio(key="contrast_compare").set_value("per_model").run()
    no_exceptions(at)
    bars = colorbars(at)
    assert len(bars) == 3 and all("stretched to this map" in b for b in bars)
    assert any("own 1st–99th percentile" in c.value for c in at.caption)
    pictures = _pixels(at, media)
    assert len(pictures) == 3 and all(max(p.shape[:2]) == 320 for p in pictures)  # large: three to a row
    at.session_state["alpha"] = 0.0  # no map at all: each thumbnail is the picture its model saw
    at.run()
    from ui import components

    seen = components.picture_of(at.session_state["_context"].image, META)
    assert all(np.array_equal(p, seen) for p in _pixels(at, media))


def test_fig4_names_a_resnet_baseline_only_when_one_is_compared(mixed_row, paper_row, monkeypatch):
    with_baseline = compare_page(mixed_row, monkeypatch)
    (sentence,) = [m.value for m in with_baseline.markdown if m.value.startswith("The mean of |x|")]
    assert "including the ResNet baseline `r_resnet`" in sentence
    without = compare_page(paper_row, monkeypatch)
    (sentence,) = [m.value for m in without.markdown if m.value.startswith("The mean of |x|")]
    assert "baseline" not in sentence and "for every model compared here." in sentence


def _tables_heading(at) -> str:
    (heading,) = [h.value for h in at.subheader if h.value.startswith("The paper's") and "Fig. 4" not in h.value]
    return heading


def test_the_tables_heading_names_exactly_the_tables_with_rows(mixed_row, paper_row, checkpoints, monkeypatch):
    at = compare_page(paper_row, monkeypatch)
    assert _tables_heading(at) == "The paper's Tables 1 and 3 with these checkpoints"
    summary = next(d.value for d in at.dataframe if "paper table" in d.value.columns)
    assert sorted(set(summary["paper table"])) == ["Table 1", "Table 3"]
    lines = "\n".join(m.value for m in at.markdown)
    # the gaps from the recorded accuracies, as the README states them
    assert "`mixed_arl` vs `mixed_nal`; error gap in the paper 0.37 points, here 0.18 points" in lines
    assert "`mixed_arl` vs `channel_arl`; error gap in the paper 0.72 points, here 0.33 points" in lines
    assert any("The paper's Attention-56 gaps are 0.37–0.96 points" in c.value for c in at.caption)
    # quarter-width models: none is the paper's variant (no row), but two pairs differ as Table 1's do
    narrow = compare_page(mixed_row, monkeypatch)
    assert _tables_heading(narrow) == "The paper's Table 1 with these checkpoints"
    assert any("none stands beside the paper's tables" in i.value for i in narrow.info)
    pairs = [m.value for m in narrow.markdown if m.value.startswith("- **Table")]
    assert pairs and all(line.startswith("- **Table 1:") for p in pairs for line in p.splitlines())
    # a mixed CIFAR model and the photo model: no row and no pair, so no table is named
    none = compare_page(checkpoints, monkeypatch)
    assert _tables_heading(none) == "The paper's CIFAR-10 tables"


def test_photo_models_get_the_papers_comparisons_with_the_same_verdict_and_no_paper_figure(photo_row, monkeypatch):
    at = compare_page(photo_row, monkeypatch)
    assert _tables_heading(at) == "The paper's CIFAR-10 tables"  # the paper has no photo table to name
    (line,) = [m.value for m in at.markdown if m.value.startswith("- **Table")]
    # 2 SE of the gap over 3,925 images each: 200·√(.883·.117/3925 + .861·.139/3925) ≈ 1.49 points
    assert line == ("- **Table 1: mixed vs spatial (photos)**: `p_mixed` vs `p_spatial`; the paper compares these "
                    "on CIFAR-10 only (Table 1); error gap here 2.20 points: **same order as the paper, beyond test-set noise; one "
                    "seed each**")


def test_each_models_row_of_parts_has_its_colorbar_as_page_text(mixed_row, monkeypatch):
    at = compare_page(mixed_row, monkeypatch)
    at.toggle(key="compare_parts").set_value(True).run()
    no_exceptions(at)
    factorised = [m.value for m in at.markdown if re.search(r"\d parts explain \d+%", m.value)]
    assert factorised
    assert sum("part weight" in b for b in colorbars(at)) == len(factorised)


def test_recorded_per_image_results_turn_the_verdict_into_mcnemars_test(photo_row, tmp_path, monkeypatch):
    """The same two photo models, with per-image test results recorded beside them (as
    ``scripts/calibrate_confidence.py`` writes them): the line's verdict is McNemar's test on those images, which
    resolves a 2.2-point gap on 3,925 shared images that the mistakes mostly share."""
    import shutil

    from resattn import confidence as C
    from resattn import paper

    folder = tmp_path / "photos"
    shutil.copytree(photo_row, folder)
    rng = np.random.default_rng(0)
    spatial = rng.random(3925) < 0.861
    mixed = spatial.copy()
    mixed[rng.permutation(np.flatnonzero(~spatial))[:86]] = True  # mixed right on 86 more images: +2.2 points
    digest = C.labels_digest(np.arange(3925) % 10)
    for name, correct in (("p_mixed", mixed), ("p_spatial", spatial)):
        path = folder / f"{name}.safetensors"
        C.save_calibration(folder / C.FILE_NAME, C.Calibration(path.name, resattn.file_hash(path), 0.5, 0.05, 3925,
                                                               "imagenette-224 val split", "python …", digest,
                                                               C.pack_correct(correct)))
    at = compare_page(folder, monkeypatch)
    (line,) = [m.value for m in at.markdown if m.value.startswith("- **Table")]
    p = paper.paired_comparison(mixed, spatial)["mcnemar_p"]
    assert p < 1e-6 and line.endswith("here 2.20 points: **same order as the paper, beyond test-set noise (McNemar's "
                                      "p < 0.001); one seed each**")
    assert any("McNemar's exact test" in c.value for c in at.caption)


def test_one_family_at_a_time(mixed_row, photo_row, tmp_path, monkeypatch):
    """"Models trained on" narrows the page (table, thumbnails, the paper's comparisons) to one dataset's models;
    "all" shows every model, and each choice says how many models it holds."""
    import shutil

    folder = tmp_path / "both"
    shutil.copytree(mixed_row, folder)
    for path in photo_row.glob("*.safetensors"):
        shutil.copy(path, folder)
    at = compare_page(folder, monkeypatch)
    choice = at.radio(key="compare_data")
    assert choice.value == "all" and choice.options == ["all (6)", "CIFAR-10 (4)", "Imagenette photos (2)"]
    assert len(_thumb_names(at)) == 5  # the ResNet baseline has no mask
    at = choice.set_value("Imagenette photos").run()
    no_exceptions(at)
    assert sorted(_thumb_names(at)) == ["p_mixed", "p_spatial"]
    assert [r for r in at.dataframe[0].value["model"]] == ["p_mixed", "p_spatial"]
    lines = [m.value for m in at.markdown if m.value.startswith("- **Table")]
    assert len(lines) == 1 and "(photos)" in lines[0]
    at = at.radio(key="compare_data").set_value("CIFAR-10").run()
    no_exceptions(at)
    assert sorted(_thumb_names(at)) == ["m_channel", "m_mixed", "m_spatial"]
    assert "4 of 6 model(s)" in " ".join(m.value for m in at.markdown)


def test_the_explorer_opens_with_the_papers_variant_of_the_photo_family(tmp_path, monkeypatch):
    """Of several photo models (input larger than 64 px) the sidebar starts on mixed ARL, even where another's
    file name sorts first."""
    folder = tmp_path / "family"
    folder.mkdir()
    for name, attention in (("b_mixed", "mixed"), ("a_spatial", "spatial")):
        _save(folder, name, "attention56_imagenet", size=96, dataset="imagenette-224", test_images=3925,
              attention=attention, num_classes=10)
    monkeypatch.setenv("RESATTN_CHECKPOINT_DIR", str(folder))
    monkeypatch.setenv("RESATTN_APP_MODELS", TINY)
    at = AppTest.from_file(str(APP / "main.py"), default_timeout=300).run()
    no_exceptions(at)
    chosen = at.selectbox(key="model")
    assert chosen.options[0].startswith("a_spatial")
    assert chosen.value == f"sha256:{resattn.file_hash(folder / 'b_mixed.safetensors')}"


def test_the_statistics_the_activation_fixes_are_said_beside_the_table(mixed_row, paper_row, checkpoints,
                                                                          monkeypatch):
    """Spatial attention's mean mask and fraction > 0.5 sit near 0.5, channel attention's fraction near 0, by
    construction: the page says so for the kinds it compares (and only for those)."""
    def fixed(at) -> str:
        found = [c.value for c in at.caption if c.value.startswith("What the activation alone fixes")]
        return found[0] if found else ""

    every = compare_page(mixed_row, monkeypatch)
    rows = next(d.value for d in every.dataframe if "fraction > 0.5" in d.value.columns).set_index("model")
    assert abs(rows.loc["m_spatial", "mean mask"] - 0.5) <= 0.034  # as the caption states
    assert "within 0.5 ± 0.034" in fixed(every) and "at most 3/C" in fixed(every) and "fraction > 0.5" in fixed(every)
    assert fixed(every).index("Channel attention") < fixed(every).index("Spatial attention")  # Table 1's order
    no_spatial = fixed(compare_page(paper_row, monkeypatch))
    assert "at most 3/C" in no_spatial and "Spatial attention" not in no_spatial
    assert fixed(compare_page(checkpoints, monkeypatch)) == ""  # mixed models only: nothing is fixed
