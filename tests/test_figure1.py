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
