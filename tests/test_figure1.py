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
