"""Train several of the shipped set's runs at once on one GPU: ``python scripts/train_gpu_set.py --help``.

Each run is the run of ``scripts/train_zoo.py`` (same recipe, seed and budget, same ``resattn.train`` code) with
``--cuda-graphs``; the runs advance in lock step, one iteration each in turn, each on its own CUDA stream, so the
GPU works on several narrow networks at once instead of idling between one network's small kernels. A wall-clock
``--deadline`` stops every run resumably (state in ``ROOT/NAME/state``); the same command with ``--resume``
continues them. Outputs per run are those of ``python -m resattn.train``: ``config.json``, ``metrics.jsonl`` and,
when the run ends, ``model.safetensors``, whose metadata names the GPU and how many runs shared it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_zoo import RUNS, command  # noqa: E402

from resattn.train import TrainConfig, build_parser, prepare, run_steps  # noqa: E402

CIFAR_SET = [name for name, (kind, _) in RUNS.items() if kind == "cifar"]


def config_for(name: str, data: str, root: Path, cache_dir: str, resume: bool, cuda: bool = True,
               extra: list[str] | None = None) -> TrainConfig:
    """``name``'s ``resattn.train`` configuration, as ``train_zoo.py`` runs it, with CUDA graphs on CUDA;
    ``extra`` arguments come last, so they override (a smoke test's ``--epochs`` or ``--train-limit``)."""
    argv = command(name, data, root, cache_dir, None)[3:]
    argv = [a for a in argv if a != "--resume"] + (["--resume"] if resume else [])
    argv += ["--save-every", "1000000000", "--eval-batch-size", "500"]
    argv += ["--cuda-graphs", "--device", "cuda"] if cuda else ["--device", "cpu"]
    argv += extra or []
    args = build_parser().parse_args(argv)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    config.cache_dir = os.path.expanduser(config.cache_dir) if config.cache_dir else None
    return config


def _logger(name: str, path: Path) -> Callable[..., None]:
    """A run's log: tagged lines on stdout, where the runs interleave, and appended to its own ``train.log``."""
    def log(*parts: object) -> None:
        line = " ".join(map(str, parts))
        print(f"[{name}] {line}", flush=True)
        with path.open("a") as fh:
            fh.write(line + "\n")

    return log


#: A run's files that :func:`export` copies: its resume state and what its card is built from.
EXPORTED = ("state/state.safetensors", "config.json", "metrics.jsonl", "train.log", "model.safetensors")


def export(run_dir: Path, to: Path) -> list[Path]:
    """Copy the files of :data:`EXPORTED` that ``run_dir`` holds into ``to``, flat; returns the copies."""
    to.mkdir(parents=True, exist_ok=True)
    copies = []
    for name in EXPORTED:
        if (run_dir / name).is_file():
            copies.append(Path(shutil.copy2(run_dir / name, to / Path(name).name)))
    return copies


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, help="CIFAR-10 source (cifar10-jpeg.zip)")
    p.add_argument("--root", required=True, help="outputs and resume state, one folder per run")
    p.add_argument("--cache-dir", default=os.path.join("~", ".cache", "resattn", "data"), help="decoded-data cache")
    p.add_argument("--only", nargs="*", choices=CIFAR_SET, default=CIFAR_SET, help="the runs to train together")
    p.add_argument("--deadline", type=float, default=None, help="stop every run resumably after this many seconds")
    p.add_argument("--resume", action="store_true", help="continue from the state under --root")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                   help="cpu: the same interleaving without graphs or streams (to test the driver)")
    p.add_argument("--train-args", default="", help="extra resattn.train arguments for every run (quoted)")
    p.add_argument("--export", default=None,
                   help="copy each run's resumable files flat into EXPORT/NAME/ at the end (a device's $OUT returns "
                        "files at most two folders down); scripts/device_carry.py unpack installs them here")
    args = p.parse_args(argv)
    start = time.monotonic()
    deadline = None if args.deadline is None else start + args.deadline
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: train_gpu_set.py trains on a GPU (--device cpu only tests the driver)")
    root = Path(args.root)
    runs, names = [], list(args.only)
    for name in names:
        run = prepare(config_for(name, args.data, root, args.cache_dir, args.resume, cuda, shlex.split(args.train_args)))
        run.log = _logger(name, root / name / "train.log")
        if len(names) > 1:  # a run alone on the GPU says nothing more
            run.hardware += f"; {len(names)} runs sharing the GPU"
        runs.append(run)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    print(f"set up {len(runs)} runs in {time.monotonic() - start:.0f} s", flush=True)
    streams = [torch.cuda.stream(torch.cuda.Stream()) if cuda else contextlib.nullcontext() for _ in runs]
    stop = (lambda: time.monotonic() > deadline) if deadline is not None else (lambda: False)
    steps = [run_steps(run, stop) for run in runs]
    results: list[dict | None] = [None] * len(runs)
    first = [run.iteration for run in runs]
    t0 = next_report = time.monotonic()
    while any(result is None for result in results):
        if time.monotonic() >= next_report:  # the set's pace, for a reader of the log
            done = sum((run.iteration - f) * run.config.batch_size for run, f in zip(runs, first))  # type: ignore[operator]
            left = max(run.total - run.iteration for run in runs)
            print(f"{time.monotonic() - start:.0f} s: {done / max(time.monotonic() - t0, 1e-9):.0f} img/s over "
                  f"{sum(result is None for result in results)} runs; {left} iterations left in the longest", flush=True)
            next_report += 30
        for i, run in enumerate(runs):
            if results[i] is not None:
                continue
            with streams[i]:
                try:
                    next(steps[i])
                except StopIteration as done:  # finished (checkpoint written) or stopped (state saved)
                    results[i] = done.value
    sync()
    wall = time.monotonic() - t0
    images = sum((run.iteration - f) * run.config.batch_size for run, f in zip(runs, first))  # type: ignore[operator]
    summary = {"runs": {}, "seconds": wall, "images": images, "images_per_s": images / max(wall, 1e-9),
               "device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__}
    for run, name, result in zip(runs, names, results):
        entry = {"iteration": run.iteration, "total": run.total, "epochs_done": run.iteration / run.per_epoch}
        if result is not None and "stopped_at" not in result:
            entry["final"] = result
        summary["runs"][name] = entry
    (root / "gpu_set_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if args.export:
        for name in names:
            export(root / name, Path(args.export) / name)
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
