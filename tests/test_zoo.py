"""scripts/train_zoo.py: the shipped set's runs are what issue 10 asks for (one recipe, seed and budget for every
CIFAR variant), and the command each model card prints is a valid ``python -m resattn.train`` command line."""

from __future__ import annotations

import dataclasses
import os
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
    # precision is the machine's, not the recipe's: bf16 where the CPU computes it natively, as on a GPU
    assert paper["cpu_bf16"] == "auto" and paper["bf16"]


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


def test_status_reports_a_runs_iteration_accuracy_and_forecast(tmp_path, capsys, monkeypatch):
    """``--status``: a run in progress gives the iteration its resume state holds, the last full epoch's test top-1
    and a forecast from the median speed of its last five epochs under its current setting (a partial epoch's line and a line cut short by a
    kill are skipped); a finished run is named as such and a run without state as not started."""
    import json

    import torch
    from safetensors.torch import save_file

    monkeypatch.setattr(train_zoo, "SHIPPED", tmp_path / "shipped")
    name, other, last = "attention56_imagenette_spatial_arl", "attention56_imagenette_channel_arl", \
        "attention56_cifar_mixed_arl_paper"
    run = tmp_path / "zoo" / name
    (run / "state").mkdir(parents=True)
    save_file({"x": torch.zeros(1)}, str(run / "state" / "state.safetensors"), metadata={"info": json.dumps({"iteration": 1000})})
    (run / "config.json").write_text(json.dumps({"batch_size": 64}))
    speeds = [5.0, 20.0, 19.0, 18.0, 21.0, 22.0]  # the median of the last five: 20
    lines = [json.dumps({"epoch": e, "iteration": 147 * e, "progress": e / 40, "test_top1": 0.5 + e / 100,
                         "images_per_s": v, "partial_epoch": False}) for e, v in enumerate(speeds, start=1)]
    lines += [json.dumps({"epoch": 7, "iteration": 1000, "progress": 0.17, "test_top1": 0.1, "images_per_s": 1.0,
                          "partial_epoch": True}), '{"epoch": 8, "iter']
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "zoo" / other).mkdir()
    (tmp_path / "zoo" / other / "model.safetensors").write_bytes(b"")
    fresh = "attention56_cifar_mixed_arl"  # shipped in the repository, but not in this test's SHIPPED folder
    (tmp_path / "zoo" / fresh).mkdir()
    (tmp_path / "zoo" / fresh / "config.json").write_text("{}")
    train_zoo.main(["--root", str(tmp_path / "zoo"), "--status", "--only", name, other, last, fresh])
    out = dict(line.removeprefix("[zoo] ").split(": ", 1) for line in capsys.readouterr().out.splitlines())
    hours = (5880 - 1000) * 64 / 20.0 / 3600
    assert out[name] == (f"iteration 1,000 of 5,880 (17.0%); test top-1 56.00% after epoch 6 of 40; at 20.0 images/s "
                         f"(the median of the last 5 epochs) about {hours:.1f} h of training left")
    assert out[other].startswith("finished, not shipped: python scripts/model_card.py --zoo " + other)
    assert out[last] == "not started" and out[fresh] == "started, no resume state saved yet"
    # a run of the set finds the finished one ended in the same words, and does not train it again
    train_zoo.main(["--cifar", "c.zip", "--imagenette", "i.zip", "--root", str(tmp_path / "zoo"), "--dry-run",
                    "--only", other])
    assert capsys.readouterr().out.strip() == f"[zoo] {other}: {out[other]}"
    # resumed with another thread count at iteration 300 (in epoch 3): only epochs begun after it forecast
    log = [{"hardware": "CPU, 1 threads", "from_iteration": 0}, {"hardware": "CPU, 2 threads", "from_iteration": 300}]
    save_file({"x": torch.zeros(1)}, str(run / "state" / "state.safetensors"),
              metadata={"info": json.dumps({"iteration": 1000, "hardware_log": log})})
    hours = (5880 - 1000) * 64 / 21.0 / 3600  # epochs 4-6: 18, 21, 22 images/s
    assert train_zoo.status(name, tmp_path / "zoo").endswith(
        f"at 21.0 images/s (the median of the last 3 epochs since its machine or thread count last changed) about "
        f"{hours:.1f} h of training left")
    log[1]["from_iteration"] = 900  # no epoch begun since: the last five, and the forecast says so
    save_file({"x": torch.zeros(1)}, str(run / "state" / "state.safetensors"),
              metadata={"info": json.dumps({"iteration": 1000, "hardware_log": log})})
    assert "(the median of the last 5 epochs; none yet since its machine or thread count changed)" in \
        train_zoo.status(name, tmp_path / "zoo")
    # back on the first setting at 900 (as after a lent GPU): the epochs it trained wholly under it before, 1 and 2
    log[1]["from_iteration"] = 300
    log.append({"hardware": "CPU, 1 threads", "from_iteration": 900})
    save_file({"x": torch.zeros(1)}, str(run / "state" / "state.safetensors"),
              metadata={"info": json.dumps({"iteration": 1000, "hardware_log": log})})
    hours = (5880 - 1000) * 64 / 12.5 / 3600  # epochs 1-2: 5, 20 images/s
    assert train_zoo.status(name, tmp_path / "zoo").endswith(
        f"at 12.5 images/s (the median of the last 2 epochs it trained earlier under its latest machine and thread "
        f"count) about {hours:.1f} h of training left")


def _fake_run(root: Path, name: str, seconds: float, finish: bool = True, code: int = 0, fail_times: int | None = None):
    """A stand-in trainer's command for a thread count: it notes its threads, each attempt, and when it started and
    ended, then writes the final checkpoint (or not) and exits with ``code`` (only on its first ``fail_times``
    attempts, when given; later attempts succeed)."""
    def make(threads):
        failing = "True" if fail_times is None else f"len(tries) <= {fail_times}"
        script = (f"import time, pathlib; d = pathlib.Path({str(root / name)!r}); "
                  f"tries = (d / 'attempts').read_text() + 'x' if (d / 'attempts').exists() else 'x'; "
                  f"(d / 'attempts').write_text(tries); "
                  f"(d / 'start').write_text(repr(time.time())); (d / 'threads').write_text({str(threads)!r}); "
                  f"time.sleep({seconds}); (d / 'end').write_text(repr(time.time())); failing = {failing}"
                  + ("; (d / 'model.safetensors').write_bytes(b'') if not failing or not " + str(code) + " else None"
                     if finish else "") + f"; raise SystemExit({code} if failing else 0)")
        return [sys.executable, "-c", script]

    return make


def _times(root: Path, name: str) -> tuple[float, float]:
    return float((root / name / "start").read_text()), float((root / name / "end").read_text())


def test_runs_go_jobs_at_a_time_in_order(tmp_path, capsys):
    runs = [(n, _fake_run(tmp_path, n, t)) for n, t in (("a", 0.5), ("b", 3.0), ("c", 0.1))]
    assert train_zoo.run_all(runs, tmp_path, jobs=2, poll=0.05) == 0
    (a0, a1), (b0, b1), (c0, _) = (_times(tmp_path, n) for n in "abc")
    assert b0 < a1 and a0 < b1  # a and b trained at the same time
    assert a1 <= c0 < b1  # c waited for a's slot, and ran beside b
    assert capsys.readouterr().out.count(": finished") == 3
    # the cores are shared by a and b, then by c (started while b still ran); a run left alone gets every core
    cores = os.cpu_count() or 1
    expected = str(max(1, cores // 2))
    assert [(tmp_path / n / "threads").read_text() for n in "abc"] == [expected, expected, expected]
    alone = tmp_path / "alone"
    assert train_zoo.run_all([("d", _fake_run(alone, "d", 0.1))], alone, jobs=2, poll=0.05) == 0
    assert (alone / "d" / "threads").read_text() == "None"


def test_a_stopped_or_failed_run_starts_no_new_one_and_is_reported(tmp_path, capsys):
    runs = [("a", _fake_run(tmp_path, "a", 0.2, finish=False)), ("b", _fake_run(tmp_path, "b", 1.0)),
            ("c", _fake_run(tmp_path, "c", 0.1))]
    assert train_zoo.run_all(runs, tmp_path, jobs=2, poll=0.05) == 1
    out = capsys.readouterr().out
    assert "[zoo] a: stopped before the end" in out and "[zoo] b: finished" in out  # b ran to its end
    assert not (tmp_path / "c").exists()  # c was never started
    failed = [("d", _fake_run(tmp_path, "d", 0.1, code=3)), ("e", _fake_run(tmp_path, "e", 0.1))]
    assert train_zoo.run_all(failed, tmp_path, jobs=1, poll=0.05, retries=1) == 3
    out = capsys.readouterr().out
    assert out.count("[zoo] d: failed with exit code 3") == 2 and "(retry 1 of 1)" in out  # once more, then stop
    assert (tmp_path / "d" / "attempts").read_text() == "xx" and not (tmp_path / "e").exists()


def test_a_run_that_fails_once_is_started_again_and_the_set_goes_on(tmp_path, capsys):
    """Two runs started together once raced for one cache file and one of them died: a retry from its resume state
    recovers such a failure instead of leaving the machine idle until the next sitting."""
    flaky = [("f", _fake_run(tmp_path, "f", 0.1, code=3, fail_times=1)), ("g", _fake_run(tmp_path, "g", 0.1))]
    assert train_zoo.run_all(flaky, tmp_path, jobs=2, poll=0.05) == 0
    out = capsys.readouterr().out
    assert "[zoo] f: failed with exit code 3; see " in out
    assert "train.log; starting it again from its resume state (retry 1 of 1)" in out
    assert "[zoo] f: finished" in out and "[zoo] g: finished" in out
    assert (tmp_path / "f" / "attempts").read_text() == "xx"
    assert train_zoo.run_all([("h", _fake_run(tmp_path, "h", 0.1, code=3, fail_times=1))], tmp_path, poll=0.05,
                             retries=0) == 3  # --retries 0: the first failure stops the set
