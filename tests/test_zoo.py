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


def test_the_cifar_set_differs_only_in_the_variant():
    cifar = {n: _config(train_zoo.card_command(n)) for n, (kind, _) in train_zoo.RUNS.items() if kind == "cifar"}
    assert {(c["attention"], c["learning"]) for c in cifar.values()} == {
        ("mixed", "arl"), ("mixed", "nal"), ("channel", "arl"), ("spatial", "arl")}
    settings = [{k: v for k, v in c.items() if k not in VARIANT | {"out", "state_dir"}} for c in cifar.values()]
    assert all(s == settings[0] for s in settings)  # one recipe, one seed, one budget
    assert settings[0]["recipe"] == "fast" and settings[0]["epochs"] == 80 and settings[0]["seed"] == 0


def test_card_commands_are_the_commands_the_zoo_runs_with_no_machine_paths(tmp_path):
    for name, (kind, _) in train_zoo.RUNS.items():
        printed = _config(train_zoo.card_command(name))
        run = train_zoo.command(name, train_zoo.CARD_DATA[kind], tmp_path, "~/.cache/resattn/data", None)
        ran = _config(shlex.join(["python", "-m", "resattn.train", *run[3:]]))
        same = {"out", "state_dir", "progress"}
        assert {k: v for k, v in printed.items() if k not in same} == {k: v for k, v in ran.items() if k not in same}
        assert str(Path.home()) not in train_zoo.card_command(name)
        assert printed["out"] == f"runs/{name}" and printed["resume"]
