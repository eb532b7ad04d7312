"""The checkpoints that ship in checkpoints/: each loads, carries the metadata the app and evaluation read (class
names, preprocessing, final-epoch accuracy, architecture revision) and has a model card stating that accuracy.

Accuracy itself is reproduced with ``python -m resattn.evaluate`` on the dataset, which CI does not have; this test
checks what can be checked without it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import resattn
from resattn import paper
from resattn.preprocess import Preprocessing

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "checkpoints").glob("*.safetensors"))


def test_there_is_a_photo_model_and_a_cifar_model():
    sizes = {Preprocessing.from_meta(resattn.read_meta(path)).size for path in SHIPPED}
    assert 32 in sizes and max(sizes) >= 128, sizes


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_a_shipped_checkpoint_is_complete_and_its_card_agrees(path: Path):
    meta = resattn.read_meta(path)
    model, loaded = resattn.load_checkpoint(path)
    prep = Preprocessing.from_meta(loaded)
    classes = meta["classes"]
    assert len(classes) == len(set(classes)) and all(isinstance(c, str) and c.strip() for c in classes)
    assert not any(c.startswith("n0") for c in classes), "WordNet ids instead of human class names"
    with torch.no_grad():
        logits = model.eval()(torch.zeros(1, 3, prep.size, prep.size))
    assert logits.shape == (1, len(classes))
    assert all(p.dtype == torch.float32 for p in model.parameters())  # float16 storage loads as float32
    metrics = meta["metrics"]
    assert metrics["final_epoch_reported"] is True and 0.1 < metrics["test_top1"] <= 1
    # revision-1 files (from before the official pooling) still load, but none ships: each was retrained
    assert meta.get("arch_revision") is not None, "trained before the pooling fix; retrain it"
    card = path.with_suffix(".md").read_text()
    assert card.startswith(f"# {path.stem}\n")
    assert f"{100 * metrics['test_top1']:.2f}%" in card
    readme = (ROOT / "checkpoints" / "README.md").read_text()
    assert f"`{path.stem}`" in readme and f"{100 * metrics['test_top1']:.2f}%" in readme
    assert "/root/" not in card and "/home/" not in card and "/work/" not in card  # no machine paths


def test_the_cifar_set_shares_one_recipe_seed_and_budget():
    """Issue 10: the CIFAR-10 checkpoints are the variants of the paper's Tables 1 and 3 and differ only in their
    variant, so the Compare page can put them side by side as the paper does."""
    cifar = [m for m in map(resattn.read_meta, SHIPPED) if paper._is_cifar10(m)]  # what the Compare page compares
    current = [m for m in cifar if m["recipe"]["recipe"] == "fast"]  # the paper-recipe run (issue 27) stands beside
    wanted = {("mixed", "arl"), ("mixed", "nal"), ("channel", "arl"), ("spatial", "arl")}
    assert {paper.variant(m)[1:3] for m in current} >= wanted
    assert len({paper.budget_key(m) for m in current}) == 1, [m.get("epochs") for m in current]
    assert len({m["seed"] for m in current}) == 1
    assert len({paper.variant(m) for m in current}) == len(current)  # one checkpoint per variant
    # every comparison of the paper's among all of them is answered by a pair that differs only in the variant
    rows = paper.contrasts({str(i): m for i, m in enumerate(cifar)})
    assert len(rows) >= 3 and all(r.comparable for r in rows)


def test_the_photo_family_shares_one_recipe_seed_and_budget():
    """Issue 26: the photo models differ only in attention type, so the Compare page, Figure 1's ``--types`` and the
    lecture contrast attention types on photos as the paper does on CIFAR-10 (Table 1)."""
    photos = [m for m in map(resattn.read_meta, SHIPPED) if Preprocessing.from_meta(m).size >= 128]
    assert {paper.variant(m)[:3] for m in photos} >= {("attention56_imagenet", kind, "arl")
                                                      for kind in ("mixed", "channel", "spatial")}
    assert len({paper.budget_key(m) for m in photos}) == 1, [m.get("recipe") for m in photos]
    assert len({m["seed"] for m in photos}) == 1
    assert len({paper.variant(m) for m in photos}) == len(photos)  # one checkpoint per variant
