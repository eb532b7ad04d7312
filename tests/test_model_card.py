"""scripts/model_card.py: a finished training run becomes a shipped checkpoint with a card whose figures are the
evaluation of the copied file (``--zoo NAME`` takes the run folder, name and command from scripts/train_zoo.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import resattn
from resattn.evaluate import compare_checkpoints, evaluate_checkpoint
from resattn.train import TrainConfig, train

from .test_data import make_tree, zip_tree

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import model_card  # noqa: E402
import train_zoo  # noqa: E402

NAME = "attention56_cifar_mixed_arl"


@pytest.fixture(scope="module")
def zoo_run(tmp_path_factory):
    """A tiny two-epoch run in a train_zoo layout (ROOT/NAME/model.safetensors, metrics.jsonl) and its data."""
    root = tmp_path_factory.mktemp("card")
    data = zip_tree(make_tree(root / "tree", per_class=(8, 4)), root / "tiny.zip")
    train(TrainConfig(model="attention56_cifar", width_mult=0.125, batch_size=8, eval_batch_size=16, threads=1,
                      progress="none", data=str(data), epochs=2, out=str(root / "zoo" / NAME),
                      state_dir=str(root / "state")))
    return root / "zoo", str(data)


def test_zoo_run_becomes_a_checkpoint_with_a_card(zoo_run, tmp_path, capsys):
    zoo, data = zoo_run
    out = tmp_path / "checkpoints"
    out.mkdir()
    assert model_card.main(["--zoo", NAME, "--zoo-root", str(zoo), "--data", data, "--out-dir", str(out)]) == 0
    card = (out / f"{NAME}.md").read_text()
    meta = resattn.read_meta(out / f"{NAME}.safetensors")
    top1 = meta["metrics"]["test_top1"]
    assert card.startswith(f"# {NAME}\n") and f"**{100 * top1:.2f}% final-epoch test top-1**" in card
    assert f"gives {top1:.4f}" in card and "**2 epochs**" in card
    assert "| paper | 94.48% (Table 1: 5.52% error) |" in card
    assert train_zoo.card_command(NAME) in card  # the command the set is trained with, not a machine's paths
    assert str(zoo) not in card and str(tmp_path) not in card
    assert capsys.readouterr().out.startswith(f"# {NAME}")


def test_a_float16_card_heads_with_the_trained_figure_and_names_the_files(zoo_run, tmp_path):
    """--half: the headline is what training measured at its last epoch (float32); the float16 copy's own
    evaluation is given beside it, labelled as the file's."""
    zoo, data = zoo_run
    out = tmp_path / "checkpoints"
    out.mkdir()
    assert model_card.main(["--zoo", NAME, "--zoo-root", str(zoo), "--data", data, "--out-dir", str(out),
                            "--half"]) == 0
    card = (out / f"{NAME}.md").read_text()
    trained = resattn.read_meta(zoo / NAME / "model.safetensors")["metrics"]
    file_top1 = evaluate_checkpoint(str(out / f"{NAME}.safetensors"), data)["top1"]
    assert f"**{100 * trained['test_top1']:.2f}% final-epoch test top-1** (test loss {trained['test_loss']:.3f})" in card
    assert "float16 storage" in card and "on this float16 file gives" in card
    assert "Per class (%, this float16 file)" in card
    assert f"float16 file gives {file_top1:.4f}" in card


def test_a_run_without_a_name_is_refused(zoo_run, capsys):
    zoo, data = zoo_run
    with pytest.raises(SystemExit):
        model_card.main([str(zoo / NAME), "--data", data])
    assert "give RUN_DIR and --name, or --zoo NAME" in capsys.readouterr().err


def test_the_budget_of_a_run_moved_between_machines_is_given_per_machine():
    # four epochs of 10 iterations: epochs 1-2 on a GPU, the move at iteration 25 (in epoch 3), the rest on a CPU
    metrics = [{"epoch": e, "iteration": 10 * e, "epoch_seconds": s, "images_per_s": v}
               for e, s, v in [(1, 2.0, 5000), (2, 2.0, 5200), (3, 60.0, 190), (4, 50.0, 210)]]
    meta = {"hardware": "GPU (iterations 0–25); then CPU (iterations 25–40)", "epochs": 4.0,
            "metrics": {"iterations": 40},
            "hardware_log": [{"hardware": "GPU", "from_iteration": 0}, {"hardware": "CPU", "from_iteration": 25}]}
    assert model_card.budget_text(meta, metrics) == (
        "epochs 1–2: 4 s of training (median 5100 images/s, range 5000–5200) on GPU; then epochs 3–4: 110 s of "
        "training (median 200 images/s, range 190–210) on CPU (epoch 3 began on the first machine and ended on the next)")
    # checkpoints from before the trainer said "1 thread" store "1 threads"; the card says "1 thread"
    single = {"hardware": "CPU x86_64, 2 cores, 1 threads; torch 2.14", "epochs": 4.0, "metrics": {"iterations": 40}}
    assert model_card.budget_text(single, metrics).endswith("on CPU x86_64, 2 cores, 1 thread; torch 2.14")
    # three spans: a one-epoch span says "epoch 3", and every epoch that straddles a move is named
    moved = {"hardware": "", "epochs": 4.0, "metrics": {"iterations": 40},
             "hardware_log": [{"hardware": "A", "from_iteration": 0}, {"hardware": "B", "from_iteration": 25},
                              {"hardware": "A", "from_iteration": 35}]}
    assert model_card.budget_text(moved, metrics) == (
        "epochs 1–2: 4 s of training (median 5100 images/s, range 5000–5200) on A; then epoch 3: 60 s of training "
        "(median 190 images/s, range 190–190) on B; then epoch 4: 50 s of training (median 210 images/s, range "
        "210–210) on A (epochs 3, 4 began on one machine and ended on the next)")
    one = {"hardware": "CPU", "epochs": 4.0, "metrics": {"iterations": 40}}
    assert model_card.budget_text(one, metrics) == "114 s of training (median 2605 images/s, range 190–5200) on CPU"


def test_one_disturbed_epoch_widens_the_speed_range_but_not_the_median():
    metrics = [{"epoch": e, "iteration": 10 * e, "epoch_seconds": 50.0, "images_per_s": v}
               for e, v in [(1, 220), (2, 28), (3, 215), (4, 225), (5, 218)]]
    meta = {"hardware": "CPU", "epochs": 5.0, "metrics": {"iterations": 50}}
    assert model_card.budget_text(meta, metrics) == "250 s of training (median 218 images/s, range 28–225) on CPU"


def test_an_imagenet_figure_names_the_dataset_it_is_not_comparable_with():
    """Table 7 is ImageNet-1k: the card says which data the checkpoint has instead (a fine-tuned model's need not be
    Imagenette's ten classes)."""
    meta = {"model": "attention56_imagenet", "dataset": "birds", "classes": ["finch", "robin", "wren"]}
    text = model_card.paper_text(meta)
    assert text.startswith("78.24% top-1 on ImageNet-1k") and text.endswith("not comparable with 3 classes of `birds`")
    assert model_card.paper_text({"model": "attention56_cifar", "overrides": {"attention": "spatial"}}) == \
        "93.67% (Table 1: 6.33% error)"
    # a photo variant the paper reports only on CIFAR-10 says so, with that figure; one it never reports gets a dash
    assert model_card.paper_text({"model": "attention56_imagenet", "overrides": {"attention": "spatial"}}) == (
        "none on ImageNet for spatial attention, ARL: the paper compares these variants on CIFAR-10 only "
        "(Attention-56 93.67%, Table 1)")
    assert model_card.paper_text({"model": "attention56_imagenet",
                                  "overrides": {"attention": "spatial", "learning": "nal"}}) == "–"


def test_a_card_states_its_curve_so_another_card_can_read_it_back(zoo_run, tmp_path):
    zoo, data = zoo_run
    out = tmp_path / "checkpoints"
    out.mkdir()
    model_card.main(["--zoo", NAME, "--zoo-root", str(zoo), "--data", data, "--out-dir", str(out)])
    metrics = [json.loads(line) for line in (zoo / NAME / "metrics.jsonl").read_text().splitlines()]
    assert model_card.card_curve((out / f"{NAME}.md").read_text()) == [
        (m["epoch"], round(100 * m["test_top1"], 2)) for m in metrics]
    with pytest.raises(ValueError, match="states no curve"):
        model_card.card_curve("# a card\n\nno curve here\n")


@pytest.fixture(scope="module")
def shorter_run(zoo_run, tmp_path_factory):
    """Another tiny run on the same data (one epoch, another seed), shipped with its card, to be set against."""
    zoo, data = zoo_run
    root = tmp_path_factory.mktemp("other")
    train(TrainConfig(model="attention56_cifar", width_mult=0.125, batch_size=8, eval_batch_size=16, threads=1,
                      progress="none", data=data, epochs=1, seed=1, out=str(root / "run"), state_dir=str(root / "state")))
    out = root / "checkpoints"
    out.mkdir()
    assert model_card.main([str(root / "run"), "--name", "short", "--data", data, "--out-dir", str(out)]) == 0
    return out / "short.safetensors"


def test_against_another_checkpoint_the_card_draws_both_curves_and_states_the_paired_test(zoo_run, shorter_run,
                                                                                          tmp_path):
    zoo, data = zoo_run
    out = tmp_path / "checkpoints"
    out.mkdir()
    assert model_card.main(["--zoo", NAME, "--zoo-root", str(zoo), "--data", data, "--out-dir", str(out),
                            "--against", str(shorter_run)]) == 0
    card = (out / f"{NAME}.md").read_text()
    section = card[card.index("## Against `short`"):]
    paired = compare_checkpoints(str(out / f"{NAME}.safetensors"), str(shorter_run), data)["paired"]
    assert (f"both right on {paired['both']:,}, only this model on {paired['only_a']:,}, only short on "
            f"{paired['only_b']:,}, neither on {paired['neither']:,}") in section
    assert f"Gap {paired['gap_points']:+.2f} ± {paired['gap_se_points']:.2f} points" in section
    assert ("beyond" if paired["mcnemar_p"] < 0.05 else "within") + " test-set noise" in section
    assert "--compare checkpoints/short.safetensors" in section
    # the curves: this run's two epochs against the other's one, in training images (batch 8, 10 per epoch here)
    meta = resattn.read_meta(out / f"{NAME}.safetensors")
    seen = meta["metrics"]["iterations"] * 8
    assert f"{seen / 1e6:.2f} M images in 2 epochs" in section and "in 1 (the curve its card states)" in section
    first = json.loads((zoo / NAME / "metrics.jsonl").read_text().splitlines()[0])
    assert f"stood at {100 * first['test_top1']:.2f}%" in section  # after one epoch: as many images as the other saw
    figure = out / f"{NAME}-curve.png"
    assert f"]({figure.name})" in section and figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_step_schedule_run_marks_its_learning_rate_drops_on_the_curve(zoo_run, shorter_run, tmp_path, monkeypatch):
    """The paper recipe divides the learning rate by 10 at 64k and 96k of 160k iterations (scaled to a short run):
    the curve marks both in training images and the card says so; a one-cycle run has no such marks."""
    _, data = zoo_run
    zoo = tmp_path / "zoo"
    train(TrainConfig(model="attention56_cifar", recipe="paper", width_mult=0.125, batch_size=8, eval_batch_size=16,
                      threads=1, progress="none", data=data, epochs=2, out=str(zoo / NAME),
                      state_dir=str(tmp_path / "state")))
    drawn = []
    real = model_card.plot_curves
    monkeypatch.setattr(model_card, "plot_curves", lambda curves, out, drops=(): (drawn.append(drops),
                                                                                 real(curves, out, drops)))
    out = tmp_path / "not" / "yet" / "made"  # --out-dir is made when missing
    assert model_card.main(["--zoo", NAME, "--zoo-root", str(zoo), "--data", data, "--out-dir", str(out),
                            "--against", str(shorter_run)]) == 0
    total = resattn.read_meta(out / f"{NAME}.safetensors")["metrics"]["iterations"]  # 6 iterations of batch 8
    assert drawn == [(round(0.4 * total) * 8, round(0.6 * total) * 8)] and (out / f"{NAME}-curve.png").is_file()
    assert "The dotted lines mark where this run's learning rate was divided by 10 (after 0.00 M and 0.00 M images)" \
        in (out / f"{NAME}.md").read_text()
    one_cycle, _ = zoo_run
    assert model_card.main(["--zoo", NAME, "--zoo-root", str(one_cycle), "--data", data, "--out-dir", str(out),
                            "--against", str(shorter_run)]) == 0
    assert drawn[-1] == () and "dotted lines" not in (out / f"{NAME}.md").read_text()


def test_against_a_checkpoint_without_a_card_or_of_other_data_is_refused(zoo_run, shorter_run, tmp_path, capsys):
    zoo, data = zoo_run
    out = tmp_path / "checkpoints"
    out.mkdir()
    bare = tmp_path / "bare.safetensors"
    bare.write_bytes(shorter_run.read_bytes())
    with pytest.raises(SystemExit, match="has no card beside it"):
        model_card.main(["--zoo", NAME, "--zoo-root", str(zoo), "--data", data, "--out-dir", str(out),
                         "--against", str(bare)])
    model, meta = resattn.load_checkpoint(shorter_run)
    elsewhere = tmp_path / "elsewhere.safetensors"
    resattn.save_checkpoint(elsewhere, model, {**meta, "dataset": "birds"})
    elsewhere.with_suffix(".md").write_text(shorter_run.with_suffix(".md").read_text())
    with pytest.raises(SystemExit, match="not comparable"):
        model_card.main(["--zoo", NAME, "--zoo-root", str(zoo), "--data", data, "--out-dir", str(out),
                         "--against", str(elsewhere)])
    with pytest.raises(SystemExit):
        model_card.main(["--zoo", NAME, "--zoo-root", str(zoo), "--data", data, "--against", str(tmp_path / "no")])
    assert "no such checkpoint" in capsys.readouterr().err


def test_a_run_that_only_changed_its_thread_count_names_the_computer_once():
    """A run resumed on the same computer with another thread count (train_zoo's --jobs 1 and --jobs 2 sittings):
    the card names the computer once and each span's threads, and does not call the change a move of machine."""
    metrics = [{"epoch": e, "iteration": 10 * e, "epoch_seconds": 50.0, "images_per_s": v}
               for e, v in [(1, 20), (2, 12), (3, 12), (4, 21)]]
    two, one = "CPU x86_64, 2 cores, 2 threads; torch 2.14", "CPU x86_64, 2 cores, 1 threads; torch 2.14"
    meta = {"hardware": "", "epochs": 4.0, "metrics": {"iterations": 40},
            "hardware_log": [{"hardware": two, "from_iteration": 0}, {"hardware": one, "from_iteration": 15},
                             {"hardware": two, "from_iteration": 30}]}
    assert model_card.budget_text(meta, metrics) == (
        "on CPU x86_64, 2 cores; torch 2.14, with the thread count changed between sittings: epoch 1: 50 s of "
        "training (median 20 images/s, range 20–20) with 2 threads; then epochs 2–3: 100 s of training (median 12 "
        "images/s, range 12–12) with 1 thread; then epoch 4: 50 s of training (median 21 images/s, range 21–21) "
        "with 2 threads (epoch 2 began with one thread count and ended with the next)")
    # another computer as well is a move of machine, named in full
    moved = {**meta, "hardware_log": [{"hardware": two, "from_iteration": 0},
                                      {"hardware": two.replace("x86_64", "arm64"), "from_iteration": 15}]}
    assert "(epoch 2 began on the first machine and ended on the next)" in model_card.budget_text(moved, metrics)


def test_a_run_switched_to_bf16_on_the_same_computer_says_which_epochs_trained_in_it():
    """The paper run went from float32 to ``--cpu-bf16 auto`` mid-run on one VM: one computer, two precisions."""
    metrics = [{"epoch": e, "iteration": 10 * e, "epoch_seconds": s, "images_per_s": v}
               for e, s, v in [(1, 100.0, 98), (2, 80.0, 120), (3, 50.0, 178)]]
    cpu = "CPU x86_64, 2 cores, 2 threads; torch 2.14"
    meta = {"hardware": "", "epochs": 3.0, "metrics": {"iterations": 30},
            "hardware_log": [{"hardware": cpu, "from_iteration": 0},
                             {"hardware": cpu + "; bf16 autocast", "from_iteration": 15}]}
    assert model_card.budget_text(meta, metrics) == (
        "on CPU x86_64, 2 cores; torch 2.14, with the precision changed between sittings: epoch 1: 100 s of training "
        "(median 98 images/s, range 98–98) with 2 threads in float32; then epochs 2–3: 130 s of training (median 149 "
        "images/s, range 120–178) with 2 threads in bf16 autocast (epoch 2 began with the first precision and ended with "
        "the next)")
    # both settings changed: each span names both, and the switch is a change of setting
    both = {**meta, "hardware_log": [{"hardware": cpu, "from_iteration": 0},
                                     {"hardware": cpu.replace("2 threads", "1 thread") + "; bf16 autocast",
                                      "from_iteration": 15}]}
    text = model_card.budget_text(both, metrics)
    assert text.startswith("on CPU x86_64, 2 cores; torch 2.14, with the thread count and precision changed")
    assert "with 1 thread in bf16 autocast" in text and "(epoch 2 began with the first setting and ended with the next)" in text


def test_a_paper_recipe_card_states_the_per_pixel_mean_and_its_milestones(zoo_run, tmp_path):
    """Issue 27's card: the paper's recipe subtracts the training set's mean image and divides the learning rate at
    iterations scaled to the run (64k and 96k of 160k; 4 and 6 of a 10-iteration run)."""
    _, data = zoo_run
    train(TrainConfig(model="attention56_cifar", recipe="paper", width_mult=0.125, batch_size=8, iterations=10,
                      eval_batch_size=16, threads=1, progress="none", data=data, out=str(tmp_path / "run"),
                      state_dir=str(tmp_path / "state")))
    out = tmp_path / "checkpoints"
    out.mkdir()
    assert model_card.main([str(tmp_path / "run"), "--name", "paper_run", "--data", data, "--out-dir", str(out)]) == 0
    card = (out / "paper_run.md").read_text()
    assert "minus the training set's per-pixel mean image (the paper's CIFAR recipe" in card
    assert "normalised with mean" not in card
    assert "`paper`: Nesterov SGD momentum 0.9, batch 8, lr 0.1 ÷10 at iterations 4 and 6, weight decay 0.0001 on " \
           "every parameter" in card
    assert "(10 iterations)" in card
    # width ×0.125 is not the paper's variant: its figure is given, no claim about reproducing it
    assert "| paper | 94.48% (Table 1: 5.52% error) |" in card
