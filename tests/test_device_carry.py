"""scripts/device_carry.py and train_gpu_set.py --export: a run goes to a device within the call's size limit,
comes back, and resumes here to the same weights as a run that never left; nothing trained is overwritten."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from resattn.train import train

from .test_data import make_tree, zip_tree

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import device_carry  # noqa: E402
import train_gpu_set  # noqa: E402

TINY = "--width-mult 0.125 --batch-size 8 --epochs 2 --threads 1 --eval-batch-size 16"
RUN = "attention56_cifar_mixed_arl_paper"


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout


@pytest.fixture()
def repo(tmp_path):
    """A repository shaped like ours: code, and a large folder of tracked checkpoints."""
    repo = tmp_path / "repo"
    for name, size in {"resattn/a.py": 1000, "scripts/b.py": 500, "checkpoints/m.safetensors": 40 * 2**20,
                       "docs/p.png": 5 * 2**20, "README.md": 100}.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_bytes(b"x" * size)
    (repo / ".gitignore").write_text("/carry/\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init")
    return repo


def _sent(repo: Path) -> set[str]:
    return set(_git(repo, "ls-files", "--cached", "--others", "--exclude-standard").split())


def test_budget_leaves_the_largest_data_folders_behind_never_the_code(repo):
    carried = repo / "carry" / "data"
    carried.mkdir(parents=True)
    (carried / "blob").write_bytes(b"y" * 20 * 2**20)
    plan = device_carry.budget(carried, repo)
    assert plan.carried == 20 * 2**20 and plan.tree["checkpoints"] == 40 * 2**20
    assert "carry" not in plan.tree  # ignored: travels only when carried
    assert plan.untrack == ["checkpoints"] and plan.total <= device_carry.DEVICE_LIMIT
    (carried / "more").write_bytes(b"y" * 45 * 2**20)  # 65 MiB carried: nothing left behind makes it fit
    plan = device_carry.budget(carried, repo)
    assert plan.total > device_carry.DEVICE_LIMIT and not {"resattn", "scripts", "."} & set(plan.untrack)
    assert "does not fit" in plan.report()


def test_untrack_leaves_files_behind_for_a_call_and_retrack_restores_the_index(repo):
    exclude = repo / ".git" / "info" / "exclude"
    before_exclude, before = exclude.read_text(), _sent(repo)
    device_carry.untrack(["checkpoints", "docs"], repo)
    assert _sent(repo) == before - {"checkpoints/m.safetensors", "docs/p.png"}
    assert (repo / "checkpoints" / "m.safetensors").stat().st_size == 40 * 2**20  # still here
    with pytest.raises(SystemExit, match="untracked already"):
        device_carry.untrack(["docs"], repo)
    assert device_carry.retrack(repo) == ["checkpoints", "docs"]
    assert _sent(repo) == before and exclude.read_text() == before_exclude
    assert _git(repo, "status", "--porcelain") == ""


def test_untrack_refuses_code_and_uncommitted_changes(repo):
    with pytest.raises(SystemExit, match="only a top-level folder"):
        device_carry.untrack(["resattn"], repo)
    (repo / "empty").mkdir()
    with pytest.raises(SystemExit, match="tracks nothing"):
        device_carry.untrack(["empty"], repo)
    (repo / "docs" / "new.png").write_bytes(b"z")
    with pytest.raises(SystemExit, match="not committed"):
        device_carry.untrack(["docs"], repo)
    assert "checkpoints/m.safetensors" in _sent(repo)


def test_a_pack_rezips_to_the_zip_the_loader_reads_alike_under_the_same_cache_key(tmp_path):
    from resattn import data as D

    source = zip_tree(make_tree(tmp_path / "tree"), tmp_path / "set.zip")
    packed, rebuilt = tmp_path / "carry" / "set.pack", tmp_path / "device" / "set.zip"
    device_carry.pack(source, packed)
    assert packed.stat().st_size < source.stat().st_size  # no per-member headers
    rebuilt.parent.mkdir()
    assert device_carry.rezip(packed, rebuilt) == len([i for i in zipfile.ZipFile(source).infolist() if not i.is_dir()])
    with zipfile.ZipFile(source) as a, zipfile.ZipFile(rebuilt) as b:
        assert [(i.filename, i.CRC) for i in a.infolist() if not i.is_dir()] == [(i.filename, i.CRC) for i in b.infolist()]
    for split in ("train", "test"):
        a, b = D.load_split(str(source), split), D.load_split(str(rebuilt), split)
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels) and a.classes == b.classes


def _forged(path: Path, members: list, blobs: bytes, directory: bytes | None = None) -> Path:
    directory = zlib.compress(json.dumps({"members": members}).encode()) if directory is None else directory
    path.write_bytes(device_carry.PACK_MAGIC + len(directory).to_bytes(8, "little") + directory + blobs)
    return path


@pytest.mark.parametrize("case, message", [
    ("magic", "not a pack"), ("short", "do not add up"), ("crc", "does not match its CRC-32"),
    ("escape", "not acceptable"), ("absolute", "not acceptable"), ("repeat", "name repeats"),
    ("bomb", "unreadable directory"), ("length", "does not fit the file"), ("json", "unreadable directory"),
])
def test_rezip_refuses_a_forged_or_damaged_pack_and_leaves_no_partial_zip(tmp_path, case, message):
    ok = [["a/1.jpg", 3, zlib.crc32(b"abc")]]
    packs = {
        "magic": lambda p: p.write_bytes(b"PK\x03\x04" + b"\0" * 64) and p,
        "short": lambda p: _forged(p, ok, b"ab"),
        "crc": lambda p: _forged(p, [["a/1.jpg", 3, 0]], b"abc"),
        "escape": lambda p: _forged(p, [["../1.jpg", 3, zlib.crc32(b"abc")]], b"abc"),
        "absolute": lambda p: _forged(p, [["/tmp/1.jpg", 3, zlib.crc32(b"abc")]], b"abc"),
        "repeat": lambda p: _forged(p, ok * 2, b"abcabc"),
        "bomb": lambda p: _forged(p, ok, b"abc", zlib.compress(b" " * (device_carry.MAX_DIRECTORY + 1), 9)),
        "length": lambda p: p.write_bytes(device_carry.PACK_MAGIC + (2**40).to_bytes(8, "little") + b"abc") and p,
        "json": lambda p: _forged(p, ok, b"abc", zlib.compress(b'{"members": [["a", "x"]]}')),
    }
    packed = packs[case](tmp_path / "set.pack")
    with pytest.raises(SystemExit, match=message):
        device_carry.rezip(packed, tmp_path / "set.zip")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set.pack"]


def _state(path: Path, iteration: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"w": torch.zeros(1)}, str(path), metadata={"info": json.dumps({"iteration": iteration})})
    return path


def test_unpack_refuses_a_state_behind_the_local_one_and_keeps_what_it_replaces(tmp_path):
    root, returned = tmp_path / "zoo", tmp_path / "out" / RUN
    _state(root / RUN / "state" / "state.safetensors", 500)
    (root / RUN / "metrics.jsonl").write_text("local\n")
    _state(returned / "state.safetensors", 300)
    (returned / "metrics.jsonl").write_text("device\n")
    with pytest.raises(SystemExit, match="ahead of the returned 300"):
        device_carry.unpack(returned, root)
    assert device_carry.state_iteration(root / RUN / "state" / "state.safetensors") == 500
    run = device_carry.unpack(returned, root, force=True)
    assert device_carry.state_iteration(run / "state" / "state.safetensors") == 300
    assert (run / "metrics.jsonl").read_text() == "device\n"
    (aside,) = run.glob("replaced-*")
    assert (aside / "metrics.jsonl").read_text() == "local\n" and device_carry.state_iteration(aside / "state.safetensors") == 500
    with pytest.raises(SystemExit, match="nothing to resume from"):
        device_carry.unpack(tmp_path / "empty", root)


def test_a_run_stopped_on_the_device_resumes_here_to_the_weights_of_a_run_that_never_left(tmp_path):
    dataset = zip_tree(make_tree(tmp_path / "tree", per_class=(16, 4)), tmp_path / "tiny.zip")
    cache, out = str(tmp_path / "cache"), tmp_path / "OUT"
    argv = ["--device", "cpu", "--data", str(dataset), "--cache-dir", cache, "--only", "attention56_cifar_mixed_arl",
            "--train-args", TINY]
    assert train_gpu_set.main([*argv, "--root", str(tmp_path / "device"), "--deadline", "0", "--export", str(out)]) == 0
    returned = out / "attention56_cifar_mixed_arl"
    assert sorted(p.name for p in returned.iterdir()) == ["config.json", "state.safetensors", "train.log"]  # no epoch ended
    assert all(p.parent == returned for p in out.rglob("*") if p.is_file())  # flat: a device returns 2 folders down
    here = tmp_path / "here"
    device_carry.unpack(returned, here)
    assert train_gpu_set.main([*argv, "--root", str(here), "--resume"]) == 0
    assert json.loads((here / "gpu_set_summary.json").read_text())["images"] == 11 * 8  # resumed: 11 of 12 iterations
    config = train_gpu_set.config_for("attention56_cifar_mixed_arl", str(dataset), tmp_path / "alone", cache, False,
                                      cuda=False, extra=shlex.split(TINY))
    train(config)
    ours = load_file(str(here / "attention56_cifar_mixed_arl" / "model.safetensors"))
    alone = load_file(str(tmp_path / "alone" / "attention56_cifar_mixed_arl" / "model.safetensors"))
    for key in alone:
        torch.testing.assert_close(ours[key], alone[key], rtol=0, atol=1e-6, msg=key)
    log = (here / "attention56_cifar_mixed_arl" / "train.log").read_text()
    assert "stopped at iteration 1" in log and "epoch 2/2" in log  # the device's lines, then this machine's
