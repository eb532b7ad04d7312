"""scripts/train_zoo.py: the shipped set's runs are what issue 10 asks for (one recipe, seed and budget for every
CIFAR variant), and the command each model card prints is a valid ``python -m resattn.train`` command line."""

from __future__ import annotations

import dataclasses
import shlex
import sys
from pathlib import Path

from resattn.train import TrainConfig, build_parser

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import train_zoo  # noqa: E402

VARIANT = {"attention", "learning"}


def _config(command: str) -> dict:
    words = shlex.split(command)
    assert words[:3] == ["python", "-m", "resattn.train"]
    args = vars(build_parser().parse_args(words[3:]))
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return dataclasses.asdict(TrainConfig(**{k: v for k, v in args.items() if k in names}).resolved())


def _family(kind: str, recipe: str) -> dict[str, dict]:
    configs = {n: _config(train_zoo.card_command(n)) for n, (k, _) in train_zoo.RUNS.items() if k == kind}
    return {n: c for n, c in configs.items() if c["recipe"] == recipe}


def _one_budget(family: dict[str, dict]) -> dict:
    settings = [{k: v for k, v in c.items() if k not in VARIANT | {"out", "state_dir"}} for c in family.values()]
    assert all(s == settings[0] for s in settings)  # one recipe, one seed, one budget
    return settings[0]


def test_the_cifar_set_differs_only_in_the_variant():
    cifar = _family("cifar", "fast")
    assert {(c["attention"], c["learning"]) for c in cifar.values()} == {
        ("mixed", "arl"), ("mixed", "nal"), ("channel", "arl"), ("spatial", "arl")}
    settings = _one_budget(cifar)
    assert settings["recipe"] == "fast" and settings["epochs"] == 80 and settings["seed"] == 0


def test_the_photo_set_differs_only_in_the_attention_type():
    photo = _family("imagenette", "fast")
    assert {(c["attention"], c["learning"]) for c in photo.values()} == {
        ("mixed", "arl"), ("channel", "arl"), ("spatial", "arl")}
    settings = _one_budget(photo)
    assert (settings["model"], settings["width_mult"], settings["input_size"], settings["epochs"], settings["seed"]) == (
        "attention56_imagenet", 0.5, 128, 40, 0)


def test_the_paper_run_is_the_papers_recipe_unchanged():
    (paper,) = _family("cifar", "paper").values()
    assert (paper["attention"], paper["learning"], paper["seed"]) == ("mixed", "arl", 0)
    assert (paper["batch_size"], paper["lr"], paper["weight_decay"], paper["iterations"], paper["epochs"]) == (
        64, 0.1, 1e-4, 160_000, None)
    assert paper["milestones"] == (64_000, 96_000) and paper["per_pixel_mean"] and paper["label_smoothing"] == 0.0


def test_a_shipped_run_is_not_trained_again(tmp_path, capsys):
    shipped = {n for n in train_zoo.RUNS if (train_zoo.SHIPPED / f"{n}.safetensors").exists()}
    assert "attention56_cifar_mixed_arl" in shipped
    train_zoo.main(["--cifar", "c.zip", "--imagenette", "i.zip", "--root", str(tmp_path), "--dry-run"])
    lines = capsys.readouterr().out.splitlines()
    for name in train_zoo.RUNS:
        (line,) = [x for x in lines if x.startswith(f"[zoo] {name}:")]
        assert line.startswith(f"[zoo] {name}: shipped (") == (name in shipped), line


def test_card_commands_are_the_commands_the_zoo_runs_with_no_machine_paths(tmp_path):
    for name, (kind, _) in train_zoo.RUNS.items():
        printed = _config(train_zoo.card_command(name))
        run = train_zoo.command(name, train_zoo.CARD_DATA[kind], tmp_path, "~/.cache/resattn/data", None)
        ran = _config(shlex.join(["python", "-m", "resattn.train", *run[3:]]))
        same = {"out", "state_dir", "progress"}
        assert {k: v for k, v in printed.items() if k not in same} == {k: v for k, v in ran.items() if k not in same}
        assert str(Path.home()) not in train_zoo.card_command(name)
        assert printed["out"] == f"runs/{name}" and printed["resume"]
