"""resattn.paper: the paper's figures, and its comparisons among checkpoints (which pairs are comparable, how large a
gap test-set noise explains, what the verdict says)."""

from __future__ import annotations

import math

import pytest

from resattn import paper

RECIPE = {"recipe": "fast", "model": "attention56_cifar", "epochs": 80.0, "lr": 0.2, "batch_size": 128, "seed": 0,
          "attention": "mixed", "learning": "arl", "threads": 2, "data": "somewhere/cifar10-jpeg.zip"}


def meta(attention="mixed", learning="arl", top1=0.9, mask="hourglass", **changes):
    """CIFAR-10 checkpoint metadata as the trainer writes it; ``changes`` update the recipe (or top-level keys)."""
    recipe = {**RECIPE, "attention": attention, "learning": learning, "mask": mask}
    top = {k: changes.pop(k) for k in ("dataset", "arch_revision") if k in changes}
    recipe.update(changes)
    return {"model": "attention56_cifar", "dataset": top.get("dataset", "cifar10-jpeg"),
            "arch_revision": top.get("arch_revision", 2), "epochs": recipe["epochs"],
            "overrides": {"attention": attention, "learning": learning, "mask": mask},
            "metrics": {"test_top1": top1}, "recipe": recipe}


def test_figures_are_the_papers_tables():
    assert paper.paper_result("attention56_cifar").error == 5.52
    assert paper.paper_result("attention56_cifar", "channel").error == 6.24
    assert paper.paper_result("attention56_cifar", "spatial").error == 6.33
    assert paper.paper_result("attention56_cifar", "mixed", "nal").error == 5.89
    assert paper.paper_result("attention56_cifar", "mixed", "arl", "local").error == 6.48
    assert paper.paper_result("attention164_cifar", "mixed", "nal").error == 7.18
    assert paper.paper_result("attention56_cifar", "channel", "nal") is None  # the paper has no such figure
    assert paper.paper_result("attention56_cifar").describe() == "94.48% (Table 1: 5.52% error)"
    # in every comparison the paper's first variant is its better one
    gaps = {(c.model, c.question): c.paper_gap() for c in paper.CONTRASTS}
    assert gaps[("attention56_cifar", "mixed vs channel")] == 0.72
    assert gaps[("attention56_cifar", "ARL vs NAL")] == 0.37
    assert gaps[("attention164_cifar", "ARL vs NAL")] == 2.87
    assert all(g > 0 for g in gaps.values()) and len(gaps) == 7


def test_one_budget_is_comparable_and_the_verdict_follows_the_gap_and_the_noise():
    # two accuracies near 90% on 10,000 images each: 2 SE = 200·√(2·0.09/10⁴) ≈ 0.85 points
    close = paper.contrasts({"arl": meta(top1=0.905), "nal": meta(learning="nal", top1=0.90)})
    (row,) = close
    assert row.contrast.question == "ARL vs NAL" and (row.a, row.b) == ("arl", "nal") and row.comparable
    assert row.gap == pytest.approx(0.5)
    assert row.noise == pytest.approx(200 * math.sqrt(0.905 * 0.095 / 1e4 + 0.9 * 0.1 / 1e4))
    assert row.verdict().startswith("within test-set noise")
    (far,) = paper.contrasts({"arl": meta(top1=0.92), "nal": meta(learning="nal", top1=0.90)})
    assert far.verdict().startswith("same order as the paper") and "one seed" in far.verdict()
    (flipped,) = paper.contrasts({"arl": meta(top1=0.90), "nal": meta(learning="nal", top1=0.92)})
    assert flipped.gap == pytest.approx(-2.0) and flipped.verdict().startswith("opposite order")
    # a different seed is an equally fair comparison; anything else that changes training is not
    (seeded,) = paper.contrasts({"arl": meta(), "nal": meta(learning="nal", seed=1)})
    assert seeded.comparable


@pytest.mark.parametrize("changes, reason", [
    ({"epochs": 2.0}, "different budgets (80 vs 2 epochs)"),
    ({"lr": 0.1}, "different training settings (lr)"),
    ({"arch_revision": 1}, "different training settings (arch_revision)"),
])
def test_different_training_is_not_comparable(changes, reason):
    (row,) = paper.contrasts({"mixed": meta(), "spatial": meta(attention="spatial", **changes)})
    assert not row.comparable and row.reason == reason and row.verdict() == f"not comparable: {reason}"


def test_every_comparison_among_a_full_set_and_nothing_from_other_data_or_untrained_models():
    metas = {"mixed_arl": meta(), "channel_arl": meta("channel"), "spatial_arl": meta("spatial"),
             "mixed_nal": meta(learning="nal"), "local": meta(mask="local"),
             "photo": {**meta(), "dataset": "imagenette"}, "untrained": {**meta("channel"), "metrics": {}}}
    rows = paper.contrasts(metas)
    assert [(r.contrast.table, r.b) for r in rows] == [
        ("Table 1", "channel_arl"), ("Table 1", "spatial_arl"), ("Table 3", "mixed_nal"), ("Table 4", "local")]
    assert all(r.a == "mixed_arl" and r.comparable for r in rows)


def test_test_set_size_recorded_or_known_and_otherwise_unknown():
    assert paper.test_images({**meta(), "metrics": {"test_top1": 0.9, "test_images": 2000}}) == 2000
    assert paper.test_images(meta()) == 10_000  # an older CIFAR-10 checkpoint: the whole test split
    limited = meta(test_limit=500)
    assert paper.test_images(limited) is None
    (row,) = paper.contrasts({"arl": limited, "nal": meta(learning="nal", test_limit=500)})
    assert row.noise is None and row.verdict().startswith("test-set size unknown")


def test_summary_and_malformed_metadata():
    rows = paper.summary_rows({"a": meta(top1=0.8911), "photo": {**meta(), "model": "attention56_imagenet",
                                                                "dataset": "imagenette"}})
    assert len(rows) == 1  # Table 7's figure is for ImageNet-1k, not for a 10-class subset
    narrow = {**meta(width_mult=0.5), "overrides": {"width_mult": 0.5}}
    tuned = {**meta(), "init_from": {"checkpoint": "photo.safetensors"}}
    assert paper.summary_rows({"narrow": narrow, "tuned": tuned}) == []  # not the paper's variant
    assert rows[0]["test error (%)"] == pytest.approx(10.89) and rows[0]["paper error (%)"] == 5.52
    odd = {"model": "attention56_cifar", "dataset": "cifar10", "recipe": "test", "overrides": None,
           "metrics": {"test_top1": 0.5}, "init_from": "x"}
    assert paper.variant(odd) == ("attention56_cifar", "mixed", "arl", "hourglass")
    (row,) = paper.contrasts({"odd": odd, "nal": meta(learning="nal")})
    assert not row.comparable
    assert paper.contrasts({"a": {"metrics": "nonsense"}, "b": {}}) == []


def test_photo_models_are_compared_as_the_paper_compares_cifar_models_without_a_paper_figure():
    def photo(attention="mixed", learning="arl", top1=0.88):
        return {**meta(attention, learning, top1, dataset="imagenette-224", model="attention56_imagenet",
                       epochs=40.0), "model": "attention56_imagenet", "metrics": {"test_top1": top1, "test_images": 3925}}

    metas = {"photo_mixed": photo(), "photo_spatial": photo("spatial", top1=0.87), "photo_nal": photo(learning="nal"),
             "cifar_spatial": meta("spatial")}
    rows = paper.contrasts(metas)
    assert [(r.contrast.question, r.a, r.b) for r in rows] == [
        ("mixed vs spatial", "photo_mixed", "photo_spatial"), ("ARL vs NAL", "photo_mixed", "photo_nal")]
    spatial = rows[0]
    assert spatial.contrast.paper_gap() is None and spatial.comparable
    assert spatial.contrast.words() == "the paper compares these on CIFAR-10 only (Table 1)"
    assert spatial.gap == pytest.approx(1.0)
    # the same test-set noise as on CIFAR-10, from the 3,925 validation images: 2 SE ≈ 1.47 points
    assert spatial.noise == pytest.approx(200 * math.sqrt(0.88 * 0.12 / 3925 + 0.87 * 0.13 / 3925))
    assert spatial.verdict().startswith("within test-set noise")
    assert paper.CONTRASTS[0].words() == f"error gap in the paper {paper.CONTRASTS[0].paper_gap():.2f} points"


def test_how_a_run_was_executed_does_not_change_its_budget():
    cpu = meta(device="cpu", threads=2, bf16=True, cuda_graphs=False)
    gpu = meta("spatial", device="cuda", threads=None, bf16=True, cuda_graphs=True, compile=True, eval_batch_size=500)
    assert paper.budget_key(cpu) == paper.budget_key(gpu)  # same recipe: a fair comparison wherever it ran
    assert paper.budget_key(meta(epochs=40.0)) != paper.budget_key(cpu)
    assert paper.budget_key(meta(lr=0.1)) != paper.budget_key(cpu)


def test_tables_are_named_in_the_papers_order_and_only_those_given():
    assert paper.tables_words([]) == ""
    assert paper.tables_words(["Table 3", "Table 3"]) == "Table 3"
    assert paper.tables_words(["Table 3", "Table 1", "Table 1"]) == "Tables 1 and 3"
    assert paper.tables_words(["Table 4", "Table 10", "Table 1", "Table 3"]) == "Tables 1, 3, 4 and 10"
    # the Compare page's heading from the rows it draws: no Table 4 without a local-mask checkpoint
    metas = {"mixed_arl": meta(), "mixed_nal": meta(learning="nal"), "channel_arl": meta("channel")}
    drawn = [r["paper table"] for r in paper.summary_rows(metas)] + [r.contrast.table for r in paper.contrasts(metas)]
    assert paper.tables_words(drawn) == "Tables 1 and 3"
    assert paper.paper_gaps("attention56_cifar") == [0.37, 0.72, 0.81, 0.96]  # Tables 3, 1, 1, 4
    assert paper.paper_gaps("attention56_imagenet") == []


def test_the_readme_states_the_gaps_the_compare_page_computes_from_the_shipped_checkpoints():
    """One source for every figure: the README's gaps are paper.contrasts over the shipped checkpoints' recorded
    accuracies, the numbers the Compare page shows."""
    from pathlib import Path

    from resattn.checkpoint import read_meta

    root = Path(__file__).resolve().parents[1]
    shipped = {p.stem: read_meta(p) for p in sorted((root / "checkpoints").glob("attention56_cifar_*.safetensors"))}
    gaps = {(r.a, r.b): r.gap for r in paper.contrasts(shipped)}
    readme = " ".join((root / "README.md").read_text(encoding="utf-8").split())
    for words, a, b in (("ARL − NAL", "mixed_arl", "mixed_nal"), ("mixed − channel", "mixed_arl", "channel_arl"),
                        ("mixed − spatial", "mixed_arl", "spatial_arl")):
        gap = f"{gaps[(f'attention56_cifar_{a}', f'attention56_cifar_{b}')]:+.2f}".replace("-", "−")
        assert f"{words} {gap}" in readme, (words, gap)
    # and how far the fast set lies below the paper's figures, from paper.summary_rows (the Compare page's table)
    below = [r["test error (%)"] - r["paper error (%)"] for r in paper.summary_rows(shipped)
             if r["epochs"] == 80]
    assert f"80-epoch `fast` runs are {min(below):.1f}–{max(below):.1f} points below the paper's figures" in readme


def test_recorded_per_image_results_make_the_verdict_mcnemars_test():
    """With both checkpoints' outcomes on the same images, the row carries their paired comparison, its noise is
    two paired standard errors and McNemar's p decides; outcomes on other images (another digest) leave the
    independent-accuracy rule in place."""
    import numpy as np

    rng = np.random.default_rng(0)
    both = rng.random(10_000) < 0.88
    # 95 images only ARL gets right, 60 only NAL: a 0.35-point gap, p ≈ 0.006 (two-sided binomial on 155)
    only = rng.permutation(np.flatnonzero(~both))[:155]
    arl, nal = both.copy(), both.copy()
    arl[only[:95]], nal[only[95:]] = True, True
    outcomes = {"arl": paper.Outcomes("split", arl), "nal": paper.Outcomes("split", nal)}
    metas = {"arl": meta(top1=float(arl.mean())), "nal": meta(learning="nal", top1=float(nal.mean()))}
    (row,) = paper.contrasts(metas, outcomes)
    expected = paper.paired_comparison(arl, nal)
    assert row.paired == expected and (expected["only_a"], expected["only_b"]) == (95, 60)
    assert row.noise == pytest.approx(2 * expected["gap_se_points"])
    assert expected["mcnemar_p"] < paper.SIGNIFICANCE
    assert row.verdict() == (f"same order as the paper, beyond test-set noise (McNemar's p = "
                             f"{expected['mcnemar_p']:.2g}); one seed each")
    assert paper.p_words(0.0049) == "p = 0.0049" and paper.p_words(3e-26) == "p < 0.001"
    # the unpaired rule calls the same 0.35-point gap noise (2 SE ≈ 0.9): the paired test resolves it
    (unpaired,) = paper.contrasts(metas)
    assert unpaired.paired is None and unpaired.verdict().startswith("within test-set noise (|gap| <")
    elsewhere = {"arl": outcomes["arl"], "nal": paper.Outcomes("another split", nal)}
    (other,) = paper.contrasts(metas, elsewhere)
    assert other.paired is None and other.verdict() == unpaired.verdict()
    # the side is the paired gap's: with the outcomes swapped, NAL is right on 95 images ARL gets wrong
    (swapped,) = paper.contrasts(metas, {"arl": outcomes["nal"], "nal": outcomes["arl"]})
    assert swapped.verdict().startswith("opposite order to the paper, beyond test-set noise (McNemar's p = ")
    (same,) = paper.contrasts(metas, {"arl": outcomes["arl"], "nal": outcomes["arl"]})
    assert same.verdict() == "within test-set noise (McNemar's p = 1)"


def test_a_paper_recipe_run_beside_the_fast_set_adds_no_pair_that_compares_budgets():
    """Issue 27: the paper-recipe mixed model ships beside the fast set; each of the paper's comparisons is answered
    by the fast pair, and a pair across recipes is listed (as not comparable) only where nothing else answers."""
    paper_run = meta(recipe="paper", epochs=204.8, lr=0.1, batch_size=64)
    rows = paper.contrasts({"fast_mixed": meta(), "channel": meta("channel"), "paper_mixed": paper_run})
    assert [(r.a, r.b, r.comparable) for r in rows] == [("fast_mixed", "channel", True)]
    (alone,) = paper.contrasts({"channel": meta("channel"), "paper_mixed": paper_run})
    assert not alone.comparable and alone.reason == "different budgets (204.8 vs 80 epochs)"


def test_only_a_paper_recipe_run_is_set_against_the_papers_figure():
    exact = meta(top1=0.9448, recipe="paper", epochs=204.8)
    assert paper.against_paper(exact) == ("94.48% against the paper's 94.48%: within test-set noise (|gap| 0.00 < "
                                          f"{paper.unpaired_noise(0.9448, 10_000, 0.9448, 10_000):.2f} points, two "
                                          "standard errors), so it reproduces Table 1")
    noise = paper.unpaired_noise(0.93, 10_000, 0.9448, 10_000)
    assert noise == pytest.approx(200 * math.sqrt(0.93 * 0.07 / 1e4 + 0.9448 * 0.0552 / 1e4))
    assert paper.against_paper(meta(top1=0.93, recipe="paper")) == (
        f"1.48 points below the paper's 94.48% (Table 1), beyond test-set noise (two standard errors of the gap: "
        f"{noise:.2f} points)")
    above = paper.against_paper(meta("spatial", top1=0.9500, recipe="paper"))
    assert above is not None and above.startswith("1.33 points above the paper's 93.67%")
    # a shorter recipe's gap measures its budget; a narrow, fine-tuned, photo or test-limited model is not the
    # paper's variant on the paper's test set
    assert paper.against_paper(meta(top1=0.93)) is None
    assert paper.against_paper({**meta(recipe="paper"), "overrides": {"width_mult": 0.5}}) is None
    assert paper.against_paper({**meta(recipe="paper"), "init_from": {"checkpoint": "x"}}) is None
    assert paper.against_paper(meta(recipe="paper", dataset="imagenette")) is None
    assert paper.against_paper(meta(recipe="paper", test_limit=500)) is None
