"""What the trainer refuses and where it stops (issue 22): memory that follows the images a run uses, options
checked against their ranges (each at its boundary and one past it), and a run that diverges fails instead of
writing a checkpoint of NaNs."""

from __future__ import annotations

import pytest
import torch

import resattn.data
from resattn.train import TrainConfig, prepare

from .test_data import make_tree, zip_tree
from .test_train import TINY


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """Three classes of 40 training and 10 test images."""
    root = tmp_path_factory.mktemp("wide")
    return zip_tree(make_tree(root / "tree", per_class=(40, 10)), root / "wide.zip")


@pytest.fixture
def decodes(monkeypatch):
    """Count every image the data layer decodes."""
    calls = []
    real = resattn.data._decode
    monkeypatch.setattr(resattn.data, "_decode", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


# ---------------------------------------------------------------------------------------------- memory


def test_a_limited_run_decodes_only_the_images_it_uses(tmp_path, wide, decodes):
    config = TrainConfig(**TINY, data=str(wide), epochs=1, train_limit=8, test_limit=4, classes=["dog", "cat"],
                         out=str(tmp_path / "run"), state_dir=str(tmp_path / "state"))
    run = prepare(config)
    assert len(decodes) == 8 + 4  # of 120 + 30 in the zip
    assert run.train_data.images.shape[0] == 8 and run.test_data.images.shape[0] == 4
    assert run.classes == ["dog", "cat"] and set(run.train_data.labels.tolist()) <= {0, 1}
    # the same images, in the same order, as decoding everything and choosing afterwards (as before issue 22)
    everything = resattn.data.load_split(str(wide), "train")
    kept = torch.isin(everything.labels, torch.tensor([1, 0]))
    chosen = torch.randperm(int(kept.sum()), generator=torch.Generator().manual_seed(0))[:8].sort().values
    assert torch.equal(run.train_data.images, everything.images[kept][chosen])
    assert torch.equal(run.train_data.labels, torch.tensor([1, 0, 2])[everything.labels[kept][chosen]])


def test_a_cached_split_serves_a_subset_without_decoding(tmp_path, wide, decodes):
    whole = resattn.data.load_split(str(wide), "test", cache_dir=tmp_path / "cache")
    assert len(decodes) == 30
    part = resattn.data.load_split(str(wide), "test", cache_dir=tmp_path / "cache", items=[29, 3, 7])
    assert len(decodes) == 30  # read from the cache's memory map
    assert torch.equal(part.images, whole.images[[29, 3, 7]]) and part.labels.tolist() == whole.labels[[29, 3, 7]].tolist()
    fresh = resattn.data.load_split(str(wide), "test", cache_dir=tmp_path / "other", items=[29, 3, 7])
    assert len(decodes) == 33 and torch.equal(fresh.images, part.images)
    assert not (tmp_path / "other").exists()  # a subset is never cached as if it were the split


# ---------------------------------------------------------------------------------------------- option ranges

#: (option, its lowest accepted value, the nearest refused value below, its highest accepted value, the nearest
#: refused value above): every limit at its boundary and one past it.
BOUNDS = [
    ("--width-mult", "0.001", "0", "4", "4.001"),
    ("--epochs", "0.001", "0", "1000", "1000.5"),
    ("--iterations", "1", "0", "100000000", "100000001"),
    ("--batch-size", "1", "0", "4096", "4097"),
    ("--lr", "1e-9", "0", "10", "10.01"),
    ("--weight-decay", "0", "-1e-9", "1", "1.01"),
    ("--label-smoothing", "0", "-0.1", "0.99", "1"),
    ("--label-noise", "0", "-0.1", "0.99", "1"),
    ("--input-size", "16", "15", "512", "513"),
    ("--crop-scale", "0.01", "0", "1", "1.01"),
    ("--seed", "0", "-1", "4294967295", "4294967296"),
    ("--train-limit", "1", "0", "100000000", "100000001"),
    ("--test-limit", "1", "0", "100000000", "100000001"),
    ("--eval-batch-size", "1", "0", "4096", "4097"),
    ("--save-every", "1", "0", "1000000000", "1000000001"),
    ("--stop-after", "1", "0", "1000000000", "1000000001"),
    ("--probe", "0", "-1", "64", "65"),
]


def _parse(*args: str):
    from resattn.train import build_parser

    parser = build_parser()

    def refuse(message: str):
        raise ValueError(message)

    parser.error = refuse
    return parser.parse_args(list(args))


@pytest.mark.parametrize("option, low, below, high, above", BOUNDS, ids=[b[0] for b in BOUNDS])
def test_every_numeric_option_is_checked_at_its_boundaries(option, low, below, high, above):
    for accepted in (low, high):
        _parse(f"{option}={accepted}")
    for refused in (below, above):
        with pytest.raises(ValueError, match=f"argument {option}: must be a finite number in"):
            _parse(f"{option}={refused}")
    for refused in ("nan", "inf", "-inf", "ten"):
        with pytest.raises(ValueError, match=f"argument {option}: (must be a finite number in|.* is not a)"):
            _parse(f"{option}={refused}")


def test_threads_are_bounded_by_the_machines_cores():
    import os

    cores = os.cpu_count()
    assert _parse("--threads", str(cores)).threads == cores and _parse("--threads", "1").threads == 1
    for refused in ("0", str(cores + 1), "100000"):
        with pytest.raises(ValueError, match="argument --threads: must be a finite number in"):
            _parse("--threads", refused)


@pytest.mark.parametrize("threads, words", [(1, "1 thread;"), (2, "2 threads;")])
def test_the_machine_description_counts_threads_in_words(threads, words, monkeypatch):
    from resattn.train.environment import Runtime, hardware

    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    described = hardware(Runtime(torch.device("cpu")))
    assert described.startswith("CPU ") and f" cores, {words} torch {torch.__version__}" in described


def test_the_python_api_checks_the_same_ranges():
    TrainConfig(lr=10, epochs=1000).resolved()  # the boundaries
    for bad in (dict(lr=float("nan")), dict(weight_decay=float("nan")), dict(lr=float("inf")), dict(epochs=-5),
                dict(batch_size=0), dict(iterations=-1), dict(save_every=0), dict(epochs=float("nan")),
                dict(width_mult=1000.0), dict(input_size=100000), dict(threads=100000)):
        name = next(iter(bad))
        with pytest.raises(ValueError, match=f"--{name.replace('_', '-')} must be a finite number in"):
            TrainConfig(**bad).resolved()


# ---------------------------------------------------------------------------------------------- divergence


def _poison(target: str, after_epoch: int = 1):
    """A callback that writes NaN into one tensor of the model's state after ``after_epoch``."""

    def callback(run, metrics):
        if metrics["epoch"] == after_epoch:
            run.model.state_dict()[target].fill_(float("nan"))

    return callback


def _config(tmp_path, data, **extra):
    return TrainConfig(**{**TINY, "data": str(data), "epochs": 2, "out": str(tmp_path / "run"),
                          "state_dir": str(tmp_path / "state"), **extra})


def test_a_run_whose_loss_becomes_nan_stops_with_that_reason_and_writes_no_checkpoint(tmp_path, wide):
    from resattn.train import Diverged, train

    with pytest.raises(Diverged, match=r"the loss became nan by iteration (1[1-9]|2\d)"):  # within 10 of epoch 2's start
        train(_config(tmp_path, wide), callbacks=[_poison("fc.weight")])
    assert not (tmp_path / "run" / "model.safetensors").exists()
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1  # epoch 1 only


def test_non_finite_weights_are_caught_even_while_the_loss_stays_finite(tmp_path, wide):
    """Batch-norm running statistics do not enter the training loss; the weight checks find them, after an epoch
    and again before the checkpoint is written."""
    from resattn.train import Diverged, train

    with pytest.raises(Diverged, match="stage1.unit.bn1.running_var holds NaN or infinite values after epoch 2"):
        train(_config(tmp_path / "a", wide), callbacks=[_poison("stage1.unit.bn1.running_var")])
    with pytest.raises(Diverged, match="holds NaN or infinite values at the end of the run"):
        train(_config(tmp_path / "b", wide), callbacks=[_poison("stage1.unit.bn1.running_var", after_epoch=2)])
    assert not (tmp_path / "b" / "run" / "model.safetensors").exists()


def test_the_command_line_says_why_a_run_failed_in_one_line(tmp_path, wide, capsys):
    from resattn.train import main

    code = main(["--data", str(wide), "--width-mult", "0.125", "--batch-size", "512", "--threads", "1",
                 "--out", str(tmp_path / "run"), "--state-dir", str(tmp_path / "state"), "--progress", "none"])
    assert code == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: 120 training images make no full batch of 512")
