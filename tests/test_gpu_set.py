"""scripts/train_gpu_set.py: several of the set's runs trained in lock step are the runs ``resattn.train`` trains
alone, stop at a deadline and resume. (On a CPU, without graphs or streams: the interleaving is what is tested.)"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from resattn.train import train

from .test_data import make_tree, zip_tree

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import train_gpu_set  # noqa: E402

TINY = "--width-mult 0.125 --batch-size 8 --epochs 2 --threads 1 --eval-batch-size 16"
PAIR = ["attention56_cifar_mixed_arl", "attention56_cifar_spatial_arl"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return zip_tree(make_tree(root / "tree", per_class=(16, 4)), root / "tiny.zip")


def _driver(dataset: Path, root: Path, *extra: str) -> dict:
    argv = ["--device", "cpu", "--data", str(dataset), "--root", str(root), "--cache-dir", str(root / "cache"),
            "--only", *PAIR, "--train-args", TINY, *extra]
    assert train_gpu_set.main(argv) == 0
    return json.loads((root / "gpu_set_summary.json").read_text())


def test_runs_in_lock_step_stop_resume_and_match_lone_runs(tmp_path, dataset):
    root = tmp_path / "set"
    stopped = _driver(dataset, root, "--deadline", "0")  # every run stops, resumably, after its first iteration
    assert {name: r["iteration"] for name, r in stopped["runs"].items()} == {name: 1 for name in PAIR}
    assert not any((root / name / "model.safetensors").exists() for name in PAIR)
    assert not any("final" in r for r in stopped["runs"].values())
    done = _driver(dataset, root, "--resume")
    again = _driver(dataset, root, "--resume")  # finished runs: nothing to train, the same final figures
    for name in PAIR:
        assert done["runs"][name]["iteration"] == done["runs"][name]["total"] == 12  # 48 images / 8, two epochs
        lines = (root / name / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
        assert done["runs"][name]["final"]["test_top1"] == json.loads(lines[-1])["test_top1"]
        assert again["runs"][name]["final"] == done["runs"][name]["final"] and again["images"] == 0
        # the same run alone, uninterrupted, through resattn.train: the same weights
        config = train_gpu_set.config_for(name, str(dataset), tmp_path / "alone", str(root / "cache"), False, cuda=False,
                                          extra=shlex.split(TINY))
        train(config)
        ours, alone = load_file(str(root / name / "model.safetensors")), load_file(str(tmp_path / "alone" / name / "model.safetensors"))
        for key in alone:
            torch.testing.assert_close(ours[key], alone[key], rtol=0, atol=1e-6, msg=key)
    # the two runs are different variants, so matching each lone run means something
    a, b = (load_file(str(root / name / "model.safetensors")) for name in PAIR)
    assert not torch.allclose(a["fc.weight"], b["fc.weight"])


def test_the_set_needs_a_gpu_unless_asked_for_the_cpu(tmp_path, dataset, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="no CUDA device"):
        train_gpu_set.main(["--data", str(dataset), "--root", str(tmp_path)])
