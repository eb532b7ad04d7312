"""The training pipeline on a tiny model and generated data: learning, resume, torchrun, evaluate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import resattn
import resattn.data
from resattn.evaluate import evaluate_checkpoint
from resattn.train import TrainConfig, build_parser, lr_at, train

from .test_data import make_tree, zip_tree

#: The smallest real run: a 1/8-width network, tiny batches, one thread (shared with test_train_guards).
TINY = dict(model="attention56_cifar", width_mult=0.125, batch_size=8, eval_batch_size=16, threads=1, progress="none")


def read_metrics(out: Path) -> list[dict]:
    """The per-epoch lines a run appended to ``out/metrics.jsonl``."""
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    tree = make_tree(root / "tree", per_class=(16, 4))
    return zip_tree(tree, root / "tiny.zip")


def test_a_short_run_learns_and_writes_its_outputs(tmp_path, dataset):
    out = tmp_path / "run"
    result = train(TrainConfig(**TINY, data=str(dataset), epochs=6, lr=0.05, out=str(out), state_dir=str(tmp_path / "state")))
    lines = read_metrics(out)
    assert [m["epoch"] for m in lines] == [1, 2, 3, 4, 5, 6]
    assert {"train_loss", "train_top1", "test_loss", "test_top1", "lr", "images_per_s", "epoch_seconds"} <= set(lines[0])
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]
    assert result["test_top1"] == lines[-1]["test_top1"]  # the final epoch, not the best one
    config = json.loads((out / "config.json").read_text())
    assert config["recipe"] == "fast" and config["batch_size"] == 8
    model, meta = resattn.load_checkpoint(out / "model.safetensors")
    assert meta["classes"] == ["cat", "dog", "frog"] and meta["input_size"] == 16
    assert meta["metrics"]["test_top1"] == result["test_top1"] and meta["label_noise"] == 0.0
    assert meta["metrics"]["test_images"] == lines[-1]["test_images"] == 12  # 3 classes × 4 test images
    assert meta["recipe"]["recipe"] == "fast" and "CPU" in meta["hardware"] and meta["seed"] == 0
    assert len(meta["mean"]) == 3 and len(meta["std"]) == 3
    assert str(tmp_path) not in json.dumps(meta)  # no local paths in a checkpoint that may be shipped
    assert meta["recipe"]["data"] == "tiny"


def test_the_last_epoch_is_evaluated_in_full_precision_as_evaluate_does(tmp_path, dataset, monkeypatch):
    """A GPU run evaluates its epochs with TF32 (and bf16, a captured graph); the last epoch's figure is the
    checkpoint's, so it is evaluated without them, as ``python -m resattn.evaluate`` does. Here on the CPU the
    TF32 flags stand in: on for the run, off for the last evaluation alone, and back on after it."""
    import resattn.train.loop as loop

    seen = []
    real = loop.evaluate_model

    def spy(*args, **kwargs):
        seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, kwargs["forward"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "evaluate_model", spy)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    out = tmp_path / "run"
    train(TrainConfig(**TINY, data=str(dataset), epochs=3, out=str(out), state_dir=str(tmp_path / "state")))
    assert seen == [(True, True, None), (True, True, None), (False, False, None)]
    assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    assert [m["test_precision"] for m in read_metrics(out)] == ["float32"] * 3  # a CPU evaluates in float32


def _final_weights(path):
    return load_file(str(path / "model.safetensors"))


def test_interrupted_and_resumed_run_ends_with_the_same_weights(tmp_path, dataset):
    common = dict(TINY, data=str(dataset), epochs=2, label_noise=0.2)
    train(TrainConfig(**common, out=str(tmp_path / "a"), state_dir=str(tmp_path / "sa")))
    # 48 images / batch 8 = 6 iterations per epoch: stop mid-epoch, then exactly at the end of an epoch
    stopped = train(TrainConfig(**common, out=str(tmp_path / "b"), state_dir=str(tmp_path / "sb"), stop_after=5))
    assert stopped == {"stopped_at": 5}
    assert not (tmp_path / "b" / "model.safetensors").exists()
    stopped = train(TrainConfig(**common, out=str(tmp_path / "b"), state_dir=str(tmp_path / "sb"), stop_after=1, resume=True))
    assert stopped == {"stopped_at": 6}
    train(TrainConfig(**common, out=str(tmp_path / "b"), state_dir=str(tmp_path / "sb"), resume=True))
    # every epoch was evaluated exactly once across the three sittings
    lines_b = read_metrics(tmp_path / "b")
    assert [m["epoch"] for m in lines_b] == [1, 2]
    # epoch 1 spanned the stop: its training statistics cover all six batches, as in the uninterrupted run
    lines_a = read_metrics(tmp_path / "a")
    assert not lines_b[0]["partial_epoch"]
    for key in ("train_loss", "train_top1"):
        assert lines_b[0][key] == pytest.approx(lines_a[0][key], abs=1e-5), key
    a, b = _final_weights(tmp_path / "a"), _final_weights(tmp_path / "b")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    # a different seed really gives different weights, so the comparison above can fail
    train(TrainConfig(**common, out=str(tmp_path / "c"), state_dir=str(tmp_path / "sc"), seed=1))
    c = _final_weights(tmp_path / "c")
    assert not torch.allclose(a["fc.weight"], c["fc.weight"])


def test_paper_recipe_schedule():
    config = TrainConfig(recipe="paper").resolved()
    assert (config.batch_size, config.lr, config.weight_decay, config.iterations) == (64, 0.1, 1e-4, 160_000)
    assert config.per_pixel_mean and config.label_smoothing == 0
    assert lr_at(config, 63_999, 160_000) == pytest.approx(0.1)
    assert lr_at(config, 64_000, 160_000) == pytest.approx(0.01)
    assert lr_at(config, 96_000, 160_000) == pytest.approx(0.001)
    fast = TrainConfig(recipe="fast").resolved()
    total = 1000
    lrs = [lr_at(fast, i, total) for i in range(total)]
    assert max(lrs) == pytest.approx(fast.lr, rel=0.01) and lrs[-1] < 0.01 * fast.lr and lrs[0] < 0.2 * fast.lr


def test_every_option_has_help():
    for action in build_parser()._actions:
        assert action.help, action.dest


def test_torchrun_with_two_gloo_processes(tmp_path, dataset):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "resattn.train", "--data", str(dataset), "--model", "attention56_cifar", "--width-mult", "0.125",
           "--epochs", "1", "--batch-size", "4", "--device", "cpu", "--threads", "1", "--progress", "none",
           "--out", str(out), "--state-dir", str(tmp_path / "state")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = read_metrics(out)
    assert len(metrics) == 1  # written once, by rank 0
    # 48 training images, 2 processes × batch 4 → 6 iterations in the epoch
    assert metrics[0]["iteration"] == 6
    _, meta = resattn.load_checkpoint(out / "model.safetensors")
    assert "2 processes" in meta["hardware"]


def test_evaluate_cli_prints_json(tmp_path, dataset):
    out = tmp_path / "run"
    train(TrainConfig(**TINY, data=str(dataset), epochs=1, out=str(out), state_dir=str(tmp_path / "s")))
    proc = subprocess.run(
        [sys.executable, "-m", "resattn.evaluate", "--checkpoint", str(out / "model.safetensors"), "--data", str(dataset)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["images"] == 12
    assert set(result["per_class"]) == {"cat", "dog", "frog"}
    confusion = torch.tensor(result["confusion"])
    assert confusion.shape == (3, 3) and confusion.sum() == 12
    assert result["top1"] == pytest.approx(confusion.diag().sum().item() / 12)
    metrics = read_metrics(out)
    assert result["top1"] == pytest.approx(metrics[-1]["test_top1"])


def test_label_noise_is_applied_reported_and_kept_off_the_test_split(tmp_path, dataset):
    out = tmp_path / "noisy"
    result = train(TrainConfig(**TINY, data=str(dataset), epochs=1, label_noise=0.5, out=str(out), state_dir=str(tmp_path / "s")))
    clean = resattn.data.load_split(str(dataset), "train").labels
    expected = float((resattn.data.label_noise(clean, 0.5, 3, seed=0) != clean).float().mean())
    assert 0.2 < expected < 0.8
    line = read_metrics(out)[-1]
    assert line["noisy_label_fraction"] == pytest.approx(expected)
    assert result["noisy_label_fraction"] == pytest.approx(expected)
    # test labels stay clean: the trainer's final test accuracy is what evaluation on the clean split measures
    evaluated = evaluate_checkpoint(str(out / "model.safetensors"), str(dataset))
    assert evaluated["top1"] == pytest.approx(line["test_top1"])


def test_weight_decay_scope_follows_the_recipe():
    paper, fast = TrainConfig(recipe="paper").resolved(), TrainConfig(recipe="fast").resolved()
    assert paper.weight_decay_scope == "all" and fast.weight_decay_scope == "weights"
    model = resattn.create_model("attention56_cifar", width_mult=0.125)
    groups = resattn.train.build_optimizer(model, paper).param_groups
    assert len(groups) == 1 and groups[0]["weight_decay"] == 1e-4  # the paper: every parameter decays
    groups = resattn.train.build_optimizer(model, fast).param_groups
    exempt = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert exempt and all(p.dim() == 1 for p in model.parameters() if id(p) in exempt)
    with pytest.raises(ValueError, match="weight_decay_scope"):
        TrainConfig(weight_decay_scope="some").resolved()


def _torchrun(nproc, args, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), "-m", "resattn.train",
           *args, "--device", "cpu", "--threads", "1", "--progress", "none"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_two_processes_with_half_the_batch_follow_one_process(tmp_path, dataset):
    """DDP averages the two halves' gradients: the result equals one process with the whole batch. Batch-norm
    statistics are per process under plain DDP, so the network is frozen but for its classifier here."""
    base = ["--data", str(dataset), "--model", "attention56_cifar", "--width-mult", "0.125", "--epochs", "2",
            "--train-only", "head", "--lr", "0.5"]
    _torchrun(1, base + ["--batch-size", "8", "--out", str(tmp_path / "one"), "--state-dir", str(tmp_path / "s1")])
    _torchrun(2, base + ["--batch-size", "4", "--out", str(tmp_path / "two"), "--state-dir", str(tmp_path / "s2")])
    one, two = _final_weights(tmp_path / "one"), _final_weights(tmp_path / "two")
    torch.manual_seed(0)  # the trainer seeds the global generator with --seed before building the model
    start = resattn.create_model("attention56_cifar", width_mult=0.125, num_classes=3).state_dict()
    torch.testing.assert_close(one["stage1.unit.conv1.weight"], start["stage1.unit.conv1.weight"])  # frozen
    learned = (one["fc.weight"] - start["fc.weight"]).abs().max()
    assert learned > 1e-2  # the classifier did learn
    # The frozen features of 4 and of 8 images round differently (an AVX-512 CPU's kernels: 7.7e-5 apart in the
    # classifier after 12 steps, against an update of 5.2); a wrong average (a sum, or one half's gradient) is off by
    # about the size of the update, a thousand times this tolerance.
    for key in one:
        torch.testing.assert_close(one[key], two[key], rtol=1e-4, atol=float(learned) * 1e-3, msg=key)


def test_distributed_evaluation_counts_every_test_image(tmp_path):
    root = tmp_path / "data"
    tree = make_tree(root / "tree", per_class=(8, 5))  # 15 test images: odd, so two processes split them 8 / 7
    data = zip_tree(tree, root / "odd.zip")
    out = tmp_path / "ddp"
    _torchrun(2, ["--data", str(data), "--model", "attention56_cifar", "--width-mult", "0.125", "--epochs", "1",
                  "--batch-size", "4", "--out", str(out), "--state-dir", str(tmp_path / "s")])
    line = read_metrics(out)[-1]
    assert line["test_images"] == 15
    # and the distributed figure is the single-process one
    assert evaluate_checkpoint(str(out / "model.safetensors"), str(data))["top1"] == pytest.approx(line["test_top1"])


def test_fine_tuning_from_a_checkpoint_on_a_subset_with_a_frozen_trunk(tmp_path, dataset):
    base = tmp_path / "base"
    train(TrainConfig(**TINY, data=str(dataset), epochs=1, out=str(base), state_dir=str(tmp_path / "sb")))
    base_weights = _final_weights(base)
    out = tmp_path / "tuned"
    train(TrainConfig(**{**TINY, "model": "resnet164_cifar"}, data=str(dataset), epochs=2, out=str(out),
                      state_dir=str(tmp_path / "st"), init_from=str(base / "model.safetensors"), train_only="stage3",
                      classes=["dog", "frog"], probe=3))
    model, meta = resattn.load_checkpoint(out / "model.safetensors")
    assert meta["model"] == "attention56_cifar"  # the architecture comes from the checkpoint, not --model
    assert meta["classes"] == ["dog", "frog"] and model.fc.out_features == 2
    assert meta["init_from"]["train_only"] == "stage3" and meta["recipe"]["init_from"] == "model.safetensors"
    assert meta["mean"] == resattn.read_meta(base / "model.safetensors")["mean"]  # the base's input statistics
    tuned = _final_weights(out)
    for key, value in base_weights.items():
        if key.startswith(("stem.", "stage1.", "stage2.")):  # frozen: weights *and* BN statistics unchanged
            torch.testing.assert_close(tuned[key], value, rtol=0, atol=0, msg=key)
    changed = [k for k in base_weights if k.startswith("stage3.") and not torch.equal(tuned[k], base_weights[k])]
    assert any(k.endswith("running_mean") for k in changed) and any(k.endswith("conv1.weight") for k in changed)
    # masks of every module for the probe images: before training (epoch 0) and after each epoch
    snaps = sorted((out / "snapshots").glob("epoch_*.npz"))
    assert [p.name for p in snaps] == ["epoch_000.npz", "epoch_001.npz", "epoch_002.npz"]
    first = np.load(snaps[0])
    assert first["images"].shape == (3, 16, 16, 3) and first["labels"].tolist() == [0, 1, 0]
    assert {"stage1_module1", "stage2_module1", "stage3_module1"} <= set(first.files)
    assert first["stage1_module1"].shape == (3, 16, 16) and first["stage3_module1"].shape == (3, 4, 4)
    # stages 1–2 are frozen, so their masks do not move; stage 3's do
    last = np.load(snaps[-1])
    np.testing.assert_allclose(first["stage1_module1"], last["stage1_module1"], atol=1e-6)
    assert not np.allclose(first["stage3_module1"], last["stage3_module1"])


def test_a_state_in_the_old_thread_spelling_resumes_as_the_same_machine(tmp_path, dataset, monkeypatch):
    """Resume state written when the trainer said "1 threads" and resumed on the same machine, which now says
    "1 thread": one machine in the checkpoint, not a move between two spellings of it."""
    common = dict(TINY, data=str(dataset), epochs=1, out=str(tmp_path / "run"), state_dir=str(tmp_path / "state"))
    machine = "CPU x86_64, 2 cores, 1 thread{}; torch 2.14"
    monkeypatch.setattr(resattn.train.environment, "hardware", lambda runtime: machine.format("s"))
    assert train(TrainConfig(**common, stop_after=4)) == {"stopped_at": 4}
    monkeypatch.setattr(resattn.train.environment, "hardware", lambda runtime: machine.format(""))
    train(TrainConfig(**common, resume=True))
    _, meta = resattn.load_checkpoint(tmp_path / "run" / "model.safetensors")
    assert meta["hardware_log"] == [{"hardware": machine.format(""), "from_iteration": 0}]
    assert meta["hardware"] == machine.format("")


def test_init_from_refuses_an_unknown_class(tmp_path, dataset):
    with pytest.raises(resattn.data.DataError, match="horse"):
        train(TrainConfig(**TINY, data=str(dataset), epochs=1, classes=["horse"], out=str(tmp_path / "x"),
                          state_dir=str(tmp_path / "s")))


def test_a_run_resumed_on_another_machine_names_both(tmp_path, dataset, monkeypatch):
    common = dict(TINY, data=str(dataset), epochs=1, out=str(tmp_path / "run"), state_dir=str(tmp_path / "state"))
    assert train(TrainConfig(**common, stop_after=4)) == {"stopped_at": 4}
    monkeypatch.setattr(resattn.train.environment, "hardware", lambda runtime: "machine B")
    result = train(TrainConfig(**common, resume=True))
    _, meta = resattn.load_checkpoint(tmp_path / "run" / "model.safetensors")
    first, second = meta["hardware_log"]
    assert "CPU" in first["hardware"] and first["from_iteration"] == 0
    assert second == {"hardware": "machine B", "from_iteration": 4}
    assert meta["hardware"] == f"{first['hardware']} (iterations 0–4); then machine B (iterations 4–6)"
    assert meta["metrics"]["test_top1"] == result["test_top1"]
    # one machine throughout: the plain description, as before
    train(TrainConfig(**dict(common, out=str(tmp_path / "one"), state_dir=str(tmp_path / "s1"))))
    _, meta = resattn.load_checkpoint(tmp_path / "one" / "model.safetensors")
    assert meta["hardware"] == "machine B" and meta["hardware_log"] == [{"hardware": "machine B", "from_iteration": 0}]


def _fixture_copy(tmp_path):
    """tests/data/resume_fixture/ copied where a run may write, its config and the dataset it was trained on."""
    import shutil

    from tests.data.make_resume_fixture import HERE, RUN, dataset

    shutil.copytree(HERE / "state", tmp_path / "state")
    shutil.copytree(HERE / "out", tmp_path / "out")
    return TrainConfig(**RUN, data=str(dataset(tmp_path)), out=str(tmp_path / "out"), state_dir=str(tmp_path / "state"),
                       resume=True)


def test_state_written_by_earlier_code_loads_into_exactly_what_it_was_saved_from(tmp_path):
    """tests/data/resume_fixture/ is a run stopped mid-epoch by the training code before the package was split into
    modules (issue 21). Today's code reads it into a model, optimizer and generators that save back to the same
    tensors, bit for bit, and the same iteration and epoch totals; with today's exact resume (the test above) that
    means the old run continues as if never stopped, on any processor."""
    from resattn.train import prepare
    from resattn.train.state import save_state, state_info
    from tests.data.make_resume_fixture import STOP_AFTER

    config = _fixture_copy(tmp_path)
    stored, info = load_file(str(tmp_path / "state" / "state.safetensors")), state_info(tmp_path / "state")
    run = prepare(config)
    assert run.iteration == info["iteration"] == STOP_AFTER
    assert run.epoch_totals == {k: float(v) for k, v in info["epoch_totals"].items()}
    save_state(tmp_path / "again", run.model, run.optimizer, run.aug, {"iteration": run.iteration})
    again = load_file(str(tmp_path / "again" / "state.safetensors"))
    assert again.keys() == stored.keys()
    assert any(k.startswith("opt.") for k in stored) and "rng.aug" in stored  # momentum and augmentation travel
    assert [k for k in stored if not torch.equal(again[k], stored[k])] == []


def test_a_run_stopped_by_earlier_code_resumes_bit_for_bit(tmp_path, capsys):
    """Resumed today, the fixture's run ends with exactly the weights that code's uninterrupted run ended with. Those
    were computed on the generating machine's processor, and this tiny run is so sensitive to rounding that another
    processor's kernels end elsewhere (an AVX-512 Intel VM's own first five iterations already differ by 0.6%), so
    the end-to-end check runs where this processor reproduces the stored state of iteration 5 bit for bit."""
    from tests.data.make_resume_fixture import HERE, RUN, STOP_AFTER, digest

    expected = json.loads((HERE / "final_digest.json").read_text())
    assert expected["run"] == RUN and expected["stop_after"] == STOP_AFTER
    config = _fixture_copy(tmp_path)
    train(TrainConfig(**RUN, data=config.data, out=str(tmp_path / "mine"), state_dir=str(tmp_path / "mine-state"),
                      stop_after=STOP_AFTER))
    mine, stored = (load_file(str(tmp_path / d / "state.safetensors")) for d in ("mine-state", "state"))
    if any(not torch.equal(mine[k], stored[k]) for k in stored if k.startswith("model.")):
        pytest.skip("this processor rounds differently from the one that wrote tests/data/resume_fixture/; "
                    "test_state_written_by_earlier_code_loads_into_exactly_what_it_was_saved_from covers the format")
    capsys.readouterr()
    train(config)
    assert f"at iteration {STOP_AFTER}" in capsys.readouterr().out  # the stored state was read, not ignored
    assert [m["epoch"] for m in read_metrics(tmp_path / "out")] == [1, 2]
    final = digest(load_file(str(tmp_path / "out" / "model.safetensors")))
    assert final.keys() == expected["weights"].keys()
    assert [k for k in final if final[k] != expected["weights"][k]] == []


def test_train_only_stage3_trains_the_tail_of_an_imagenet_topology_model(tmp_path):
    """ImageNet-topology networks have a ``tail`` (three units at 7×7) after stage 3; ``--train-only stage3`` trains
    stage 3 *and everything after it*, so the tail must learn. (The CIFAR topology has no tail.)"""
    root = tmp_path / "data"
    data = zip_tree(make_tree(root / "tree", per_class=(8, 2), size=64), root / "photos.zip")
    torch.manual_seed(0)
    model = resattn.create_model("attention56_imagenet", width_mult=0.0625, num_classes=3)
    assert any(True for _ in model.tail.parameters())
    meta = {"classes": ["cat", "dog", "frog"], "input_size": 64, "resize": 64, "mean": [0.5] * 3, "std": [0.25] * 3}
    resattn.save_checkpoint(tmp_path / "base.safetensors", model.eval(), meta)
    base = load_file(str(tmp_path / "base.safetensors"))
    out = tmp_path / "tuned"
    train(TrainConfig(**{**TINY, "model": "attention56_imagenet"}, data=str(data), epochs=1, lr=0.05, out=str(out),
                      state_dir=str(tmp_path / "s"), init_from=str(tmp_path / "base.safetensors"),
                      train_only="stage3"))
    tuned = _final_weights(out)

    def moved(prefix: str) -> list[str]:
        return [k for k in base if k.startswith(prefix) and not torch.equal(tuned[k], base[k])]

    assert moved("stem.") == moved("stage1.") == moved("stage2.") == []  # frozen, statistics included
    for part in ("stage3.", "tail.", "norm.", "fc."):
        assert any(k.endswith("weight") for k in moved(part)), f"{part} did not train"
    assert any(k.startswith("tail.") and k.endswith("running_mean") for k in moved("tail."))  # in train mode
