"""scripts/figure1.py: the paper's Figure 1 for a photo, from a checkpoint, as a PNG of the stated size."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import resattn

ROOT = Path(__file__).resolve().parents[1]


def test_figure_script_writes_a_png_of_the_stated_size(tmp_path):
    torch.manual_seed(0)
    model = resattn.create_model("attention92_imagenet", width_mult=0.0625, num_classes=3).eval()
    meta = {"classes": ["tench", "church", "parachute"], "input_size": 64, "resize": 73, "mean": [0.5] * 3,
            "std": [0.25] * 3}
    checkpoint = tmp_path / "tiny_photo.safetensors"
    resattn.save_checkpoint(checkpoint, model, meta)
    photo = tmp_path / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(photo)
    out = tmp_path / "figure.png"
    proc = subprocess.run([sys.executable, "scripts/figure1.py", str(photo), "--checkpoint", str(checkpoint),
                           "--out", str(out), "--size", "900x700", "--module", "2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    with Image.open(out) as picture:
        assert picture.size == (900, 700)
        assert len(np.unique(np.asarray(picture.convert("L")))) > 50  # not a blank canvas
    bad = subprocess.run([sys.executable, "scripts/figure1.py", str(tmp_path / "missing.png"), "--checkpoint",
                          str(checkpoint), "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0


def test_figure_script_takes_a_gallery_photo_by_its_label(tmp_path):
    """``--gallery grace`` reads matplotlib's sample photo (matplotlib is a dependency); an unknown word is refused
    with the list of gallery photos."""
    torch.manual_seed(0)
    model = resattn.create_model("attention56_imagenet", width_mult=0.0625, num_classes=2).eval()
    checkpoint = tmp_path / "tiny.safetensors"
    resattn.save_checkpoint(checkpoint, model, {"classes": ["tench", "church"], "input_size": 64, "resize": 73})
    no_stats = subprocess.run([sys.executable, "scripts/figure1.py", "--gallery", "grace", "--checkpoint",
                               str(checkpoint)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert no_stats.returncode != 0 and "metadata has no 'mean', 'std'" in no_stats.stderr  # a message, no traceback
    assert "Traceback" not in no_stats.stderr
    resattn.save_checkpoint(checkpoint, model, {"classes": ["tench", "church"], "input_size": 64, "resize": 73,
                                                "mean": [0.5] * 3, "std": [0.25] * 3})
    out = tmp_path / "hopper.png"
    proc = subprocess.run([sys.executable, "scripts/figure1.py", "--gallery", "grace", "--checkpoint", str(checkpoint),
                           "--out", str(out), "--size", "800x600"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    with Image.open(out) as picture:
        assert picture.size == (800, 600)
    bad = subprocess.run([sys.executable, "scripts/figure1.py", "--gallery", "no-such-photo", "--checkpoint",
                          str(checkpoint)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "Grace Hopper" in bad.stderr
    both = subprocess.run([sys.executable, "scripts/figure1.py", str(out), "--gallery", "grace"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert both.returncode != 0 and "either PHOTO or --gallery" in both.stderr


def test_parts_figure_draws_each_stages_parts_and_states_what_they_explain(tmp_path):
    """``--parts``: a PNG of the stated size whose rows state, per stage, the k and explained fraction that
    ``resattn.parts.mask_parts`` gives for that stage's mask of the same photo, with one panel per drawn part."""
    import torch

    from resattn.confidence import calibration_for
    from resattn.parts import mask_parts
    from resattn.preprocess import Preprocessing

    checkpoint = ROOT / "checkpoints" / "attention56_cifar_mixed_arl.safetensors"
    photo = tmp_path / "photo.png"
    y, x = np.mgrid[:48, :64]
    Image.fromarray(np.stack([x * 4, y * 5, (x + y) * 2], axis=-1).astype(np.uint8)).save(photo)
    out = tmp_path / "parts.png"
    proc = subprocess.run([sys.executable, "scripts/figure1.py", str(photo), "--checkpoint", str(checkpoint),
                           "--parts", "--top", "3", "--out", str(out), "--size", "1000x760"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    model, meta = resattn.load_checkpoint(checkpoint)
    trace = resattn.inspect(model, Preprocessing.from_meta(meta)(Image.open(photo)))
    expected = [mask_parts(r.mask[0], attention="mixed") for r in trace.modules]  # one module per stage
    assert len(expected) == 3 and all(p.k >= 2 for p in expected)
    with Image.open(out) as picture:
        assert picture.size == (1000, 760)
        assert len(np.unique(np.asarray(picture.convert("L")))) > 50
        described = picture.text["Description"]
    for stage, parts in enumerate(expected, start=1):
        stated = f"{parts.k} parts explain {parts.explained:.0%}"
        assert stated in described and stated in proc.stdout.splitlines()[stage - 1]
        assert f"stage {stage}, module 1" in described
    drawn = [line for line in described.splitlines() if line.startswith("part ") and "energy" in line]
    assert len(drawn) == sum(min(3, p.k) for p in expected)  # --top 3: at most three parts a stage
    assert f"part 1: {expected[0].energy[0]:.0%} of the parts' energy" in drawn
    # the figure says what the model can name, and whether this prediction is unsure (the explorer's rule)
    assert "the model names only its 10 classes (airplane, automobile," in described
    top = float(torch.softmax(trace.logits, 1).max())
    threshold = calibration_for(checkpoint, resattn.file_hash(checkpoint)).threshold
    assert ("this photo may show none of them" in described) == (top < threshold)


def _tiny_family(folder: Path) -> dict[str, Path]:
    """Quarter-width photo models of one budget that differ only in attention type, one of another budget, and a
    file that is not a checkpoint: ``--types`` must pick the three of the first budget, in Table 1 order."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for attention, epochs in (("spatial", 1), ("mixed", 1), ("channel", 1), ("mixed_longer", 2)):
        torch.manual_seed(0)
        kind = attention.split("_")[0]
        model = resattn.create_model("attention56_imagenet", width_mult=0.0625, num_classes=3, attention=kind).eval()
        meta = {"classes": ["tench", "church", "parachute"], "input_size": 64, "resize": 73, "mean": [0.5] * 3,
                "std": [0.25] * 3, "model": "attention56_imagenet", "dataset": "imagenette-224", "epochs": epochs,
                "overrides": {"attention": kind, "learning": "arl", "width_mult": 0.0625, "num_classes": 3},
                "recipe": {"epochs": epochs, "seed": 0, "attention": kind, "learning": "arl"}}
        paths[attention] = folder / f"p_{attention}.safetensors"
        resattn.save_checkpoint(paths[attention], model, meta)
    (folder / "broken.safetensors").write_bytes(b"not a checkpoint")
    return paths


def _photo(tmp_path: Path) -> Path:
    photo = tmp_path / "photo.png"
    y, x = np.mgrid[:60, :80]
    Image.fromarray(np.stack([x * 3, y * 4, (x + y) * 2], axis=-1).astype(np.uint8)).save(photo)
    return photo


def test_types_figure_has_one_row_per_attention_type_of_the_family_with_shared_sigmoid_scales(tmp_path):
    """``--types``: the checkpoint's family (same model and budget, in its folder) in Table 1 order, one row each,
    per stage the channel-mean mask whose range the script states is that of the mask ``resattn.inspect``
    computes; the two sigmoid masks of a stage share a scale, channel attention's gets its own."""
    from resattn.preprocess import Preprocessing

    paths = _tiny_family(tmp_path / "family")
    photo, out = _photo(tmp_path), tmp_path / "types.png"
    proc = subprocess.run([sys.executable, "scripts/figure1.py", str(photo), "--checkpoint", str(paths["mixed"]),
                           "--types", "--out", str(out), "--size", "1200x900"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()[:-1]
    assert [line.split(",")[0] for line in lines[::3]] == ["p_mixed (mixed ARL)", "p_channel (channel ARL)",
                                                           "p_spatial (spatial ARL)"]  # not p_mixed_longer
    for line, (attention, stage) in zip(lines, [(a, s) for a in ("mixed", "channel", "spatial") for s in (1, 2, 3)]):
        model, meta = resattn.load_checkpoint(paths[attention])
        trace = resattn.inspect(model, Preprocessing.from_meta(meta)(Image.open(photo)))
        mask = [r for r in trace.modules if r.stage == stage][-1].mask[0].mean(0).numpy()
        assert line.endswith(f"stage {stage}: channel-mean mask {mask.min():.3f}–{mask.max():.3f}, "
                             f"mean {mask.mean():.3f}")
    with Image.open(out) as picture:
        assert picture.size == (1200, 900)
        described = picture.text["Description"]
    # the Description lists each distinct label once: mixed and spatial share, channel attention stands alone
    assert "shared by 2 rows" in described and "this row's own" in described and "shared by 3 rows" not in described
    assert "channel attention, channel mean" in described and "the model names only its 3 classes" in described
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "p.safetensors").write_bytes(paths["mixed"].read_bytes())
    single = subprocess.run([sys.executable, "scripts/figure1.py", str(photo), "--checkpoint",
                             str(alone / "p.safetensors"), "--types"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert single.returncode != 0 and "no other attention type" in single.stderr and "Traceback" not in single.stderr
    two = subprocess.run([sys.executable, "scripts/figure1.py", str(photo), "--checkpoint", str(paths["mixed"]),
                          "--checkpoint", str(paths["spatial"])], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert two.returncode != 0 and "needs --types" in two.stderr


def test_types_parts_figure_states_each_models_parts_of_the_chosen_stage(tmp_path):
    """``--types --parts --stage 2`` with the rows given by ``--checkpoint``: per model, what
    ``resattn.parts.mask_parts`` finds in stage 2's mask of the same photo."""
    from resattn.parts import mask_parts
    from resattn.preprocess import Preprocessing

    paths = _tiny_family(tmp_path / "family")
    photo, out = _photo(tmp_path), tmp_path / "parts.png"
    chosen = ["spatial", "channel"]
    proc = subprocess.run([sys.executable, "scripts/figure1.py", str(photo), "--types", "--parts", "--stage", "2",
                           "--top", "2", "--out", str(out), "--size", "1000x700",
                           *[a for name in chosen for a in ("--checkpoint", str(paths[name]))]],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()[:-1]
    assert len(lines) == 2
    for line, attention in zip(lines, chosen):
        model, meta = resattn.load_checkpoint(paths[attention])
        trace = resattn.inspect(model, Preprocessing.from_meta(meta)(Image.open(photo)))
        parts = mask_parts([r for r in trace.modules if r.stage == 2][-1].mask[0], attention=attention)
        assert line.startswith(f"p_{attention} ({attention} ARL), stage 2, module 1")
        assert f"{parts.k} parts explain {parts.explained:.0%} of the mask's spatial variation" in line
    with Image.open(out) as picture:
        assert picture.size == (1000, 700)
        assert picture.text["Description"].count("of the parts' energy") == 4  # two parts drawn for each model
    # without --size the figure is as tall as its rows need: the title, then one band per model
    sys.path.insert(0, str(ROOT / "scripts"))
    import figure1

    tall = subprocess.run([sys.executable, "scripts/figure1.py", str(photo), "--types", "--parts", "--top", "1",
                           "--out", str(tmp_path / "tall.png"),
                           *[a for name in chosen for a in ("--checkpoint", str(paths[name]))]],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert tall.returncode == 0, tall.stderr
    with Image.open(tmp_path / "tall.png") as picture:
        assert picture.size == (1600, figure1.TYPES_TITLE_PX + 2 * figure1.TYPES_ROW_PX)
    missing = subprocess.run([sys.executable, "scripts/figure1.py", str(photo), "--types", "--parts", "--stage", "7",
                              "--checkpoint", str(paths["mixed"])], cwd=ROOT, capture_output=True, text=True,
                             timeout=300)
    assert missing.returncode != 0 and "has no stage 7" in missing.stderr


def test_the_default_photo_model_is_the_mixed_arl_one_whatever_the_file_names(tmp_path):
    """With the photo family shipped, ``a_channel`` sorts before ``b_mixed``: the default is still mixed ARL (the
    README's figures are of it); CIFAR-sized models never are."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import figure1

    for name, attention, size in (("a_channel", "channel", 96), ("b_mixed", "mixed", 96), ("0_cifar", "mixed", 32)):
        model = resattn.create_model("attention56_imagenet", width_mult=0.0625, num_classes=2, attention=attention)
        resattn.save_checkpoint(tmp_path / f"{name}.safetensors", model, {
            "classes": ["a", "b"], "input_size": size, "resize": size, "mean": [0.5] * 3, "std": [0.25] * 3,
            "model": "attention56_imagenet", "overrides": {"attention": attention}})
    assert figure1.default_checkpoint(tmp_path).name == "b_mixed.safetensors"
    (tmp_path / "b_mixed.safetensors").unlink()
    assert figure1.default_checkpoint(tmp_path).name == "a_channel.safetensors"


def test_a_figure_of_a_cat_says_the_photo_model_is_unsure():
    """scikit-image's cat through the shipped photo model (which knows no cats): the title names the ten classes
    and says the prediction is below the model's measured threshold; the types figure's rows carry the flag."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import figure1

    from resattn.confidence import calibration_for

    checkpoint = figure1.default_checkpoint()
    data, name = figure1.gallery_photo("cat")
    seen = figure1.see(data, name, checkpoint)
    threshold = calibration_for(checkpoint, resattn.file_hash(checkpoint)).threshold
    assert seen.unsure and float(seen.predicted.split("p = ")[1].rstrip(")")) < threshold
    assert seen.title.endswith(f"; unsure: p below {threshold:.2f}, this photo may show none of them")
    assert seen.knows.startswith("the model names only its 10 classes (tench, English springer,")
    assert figure1._row_label(seen, checkpoint).endswith("unsure: may show none of its classes")
