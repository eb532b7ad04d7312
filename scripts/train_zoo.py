"""Train the shipped checkpoints one after another, resumably: ``python scripts/train_zoo.py --help``.

Each run is one ``python -m resattn.train`` command with ``--resume``; a run that is shipped in ``checkpoints/``
or whose final checkpoint exists is skipped, so the same command continues the whole set after an interruption (SIGTERM or Ctrl-C stops the current
run resumably) or in a later sitting. Outputs and resume state live under ``--root`` (default
``~/.cache/resattn/zoo``), outside the repository; copy a finished ``model.safetensors`` into ``checkpoints/``
with its model card.

The runs, their order and their budgets are those of the shipped set; a model card gives the command of its own run.
``--status`` prints where each run stands (iteration, last test top-1, hours left at its recent speed) and stops.
``--jobs 2`` trains two runs at once, each on its share of the cores: on this project's 2-core VM two 1-thread
runs trained 27.1 images/s together against 19.8 for one 2-thread run (``benchmarks/README.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

#: name -> (data key, training arguments). One recipe, seed and budget per family, so comparisons are fair.
#: CIFAR budget: mixed ARL ended at 86.73% after 15 epochs and 89.11% after 40, both below issue 10's 90% (the
#: error fell by 1.68 points per doubling of the epochs, a factor of 0.87), so the set is trained for 80 (mixed ARL:
#: 90.45%).
CIFAR_FAST_80 = ["--model", "attention56_cifar", "--recipe", "fast", "--epochs", "80", "--seed", "0"]
#: The photo family (Imagenette): the paper's ImageNet topology (Table 2) at half width and 128 px crops, which
#: leaves CPU time for the CIFAR set (full width trains at ~17 img/s here, half width at ~50 img/s).
PHOTO_FAST_40 = [
    "--model", "attention56_imagenet", "--recipe", "fast", "--width-mult", "0.5", "--input-size", "128",
    "--crop-scale", "0.35", "--batch-size", "64", "--lr", "0.1", "--epochs", "40", "--seed", "0",
]
RUNS: dict[str, tuple[str, list[str]]] = {
    "attention56_imagenette_mixed_arl": ("imagenette", PHOTO_FAST_40 + ["--attention", "mixed", "--learning", "arl"]),
    "attention56_cifar_mixed_arl": ("cifar", CIFAR_FAST_80 + ["--attention", "mixed", "--learning", "arl"]),
    "attention56_cifar_mixed_nal": ("cifar", CIFAR_FAST_80 + ["--attention", "mixed", "--learning", "nal"]),
    "attention56_cifar_channel_arl": ("cifar", CIFAR_FAST_80 + ["--attention", "channel", "--learning", "arl"]),
    "attention56_cifar_spatial_arl": ("cifar", CIFAR_FAST_80 + ["--attention", "spatial", "--learning", "arl"]),
    # issue 26: the photo family's other attention types, at the mixed model's exact recipe and budget
    "attention56_imagenette_spatial_arl": ("imagenette", PHOTO_FAST_40 + ["--attention", "spatial", "--learning", "arl"]),
    "attention56_imagenette_channel_arl": ("imagenette", PHOTO_FAST_40 + ["--attention", "channel", "--learning", "arl"]),
    # issue 27: the paper's own CIFAR recipe (160k iterations of batch 64, about 205 epochs). Its precision is not
    # part of the recipe: on a GPU it trains in bf16 like the set above, and on a CPU with bf16 instructions too
    # (1.9x faster on a Zen 4 EPYC; float32 elsewhere); the checkpoint's hardware_log says which iterations did.
    "attention56_cifar_mixed_arl_paper": ("cifar", [
        "--model", "attention56_cifar", "--recipe", "paper", "--seed", "0", "--attention", "mixed", "--learning", "arl",
        "--cpu-bf16", "auto",
    ]),
}

#: Where shipped checkpoints live: a run already shipped there is not trained again.
SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints"


def command(name: str, data: str, root: Path, cache_dir: str, threads: int | None) -> list[str]:
    """The ``resattn.train`` command line of run ``name``."""
    _, args = RUNS[name]
    cmd = [sys.executable, "-m", "resattn.train", *args, "--data", data, "--out", str(root / name),
           "--state-dir", str(root / name / "state"), "--cache-dir", cache_dir, "--resume", "--progress", "none"]
    return cmd + (["--threads", str(threads)] if threads else [])


#: The placeholder a model card prints for each data source (cards name no machine's paths).
CARD_DATA = {"cifar": "path/to/cifar10-jpeg.zip", "imagenette": "path/to/imagenette-224.zip"}


def card_command(name: str) -> str:
    """Run ``name``'s training command as its model card prints it: what ``main`` runs, with a placeholder data
    path and a relative output folder."""
    kind, args = RUNS[name]
    return " ".join(["python -m resattn.train", *args, "--data", CARD_DATA[kind], "--cache-dir",
                     "~/.cache/resattn/data", "--out", f"runs/{name}", "--resume"])


def ended(name: str, root: Path) -> str | None:
    """Why run ``name`` needs no training: shipped in the repository, or finished with the card still to write
    (and the command that writes it); ``None`` while it has iterations left."""
    if (SHIPPED / f"{name}.safetensors").exists():
        return f"shipped ({SHIPPED.name}/{name}.safetensors)"
    if (root / name / "model.safetensors").exists():
        return f"finished, not shipped: python scripts/model_card.py --zoo {name} --data D --half"
    return None


def status(name: str, root: Path) -> str:
    """Where run ``name`` stands: shipped, finished, not started, or its iteration, last test top-1 and a forecast
    at the median speed of its last five full epochs since its machine or thread count last changed, or else of
    those it trained wholly under that setting before (a run back from a lent GPU forecasts at its earlier CPU
    speed, not the GPU's): what a closing note reports for a run that spans sittings."""
    run = root / name
    if (done := ended(name, root)) is not None:
        return done
    if not (run / "state" / "state.safetensors").exists():
        return "started, no resume state saved yet" if (run / "config.json").exists() else "not started"
    from resattn.train.environment import hardware_spans
    from resattn.train.state import state_info

    info = state_info(run / "state")
    iteration = int(info["iteration"])
    # speeds under another machine or thread count (an earlier sitting's --jobs, a lent GPU) say nothing about the
    # next hours: forecast from epochs trained wholly under the setting of the latest span, in it or in earlier ones
    log = info.get("hardware_log") or []
    changed = max([int(e.get("from_iteration", 0)) for e in log], default=0)
    epochs = []
    if (run / "metrics.jsonl").exists():
        for line in (run / "metrics.jsonl").read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            if isinstance(record, dict) and not record.get("partial_epoch") and record.get("progress"):
                epochs.append(record)
    if not epochs:
        return f"iteration {iteration:,}, no epoch finished yet"
    last = epochs[-1]
    total, total_epochs = round(last["iteration"] / last["progress"]), round(last["epoch"] / last["progress"])
    batch = json.loads((run / "config.json").read_text())["batch_size"]
    per_epoch = total / total_epochs
    since = [e for e in epochs if (e["epoch"] - 1) * per_epoch >= changed][-5:]  # begun after the change
    alike = [(start, end) for machine, start, end in hardware_spans(log, total) if machine == log[-1]["hardware"]] \
        if log else []
    before = [e for e in epochs if any(start <= (e["epoch"] - 1) * per_epoch and e["epoch"] * per_epoch <= end
                                       for start, end in alike)][-5:]  # wholly under the latest span's setting
    recent = since or before or epochs[-5:]
    speed = statistics.median(e["images_per_s"] for e in recent)
    hours = (total - iteration) * batch / speed / 3600
    which = ("the last epoch" if len(recent) == 1 else f"the last {len(recent)} epochs") + (
        " since its machine or thread count last changed" if since and changed else
        " it trained earlier under its latest machine and thread count" if before and changed else
        "; none yet since its machine or thread count changed" if changed else "")
    return (f"iteration {iteration:,} of {total:,} ({iteration / total:.1%}); test top-1 {last['test_top1']:.2%} "
            f"after epoch {last['epoch']} of {total_epochs}; at {speed:.1f} images/s (the median of {which}) "
            f"about {hours:.1f} h of training left")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--cifar", help="CIFAR-10 source: 'cifar10' (torchvision), a folder or cifar10-jpeg.zip")
    p.add_argument("--imagenette", help="Imagenette source: a folder or imagenette-224.zip")
    p.add_argument("--root", default=os.path.join("~", ".cache", "resattn", "zoo"), help="outputs and resume state")
    p.add_argument("--cache-dir", default=os.path.join("~", ".cache", "resattn", "data"), help="decoded-data cache")
    p.add_argument("--only", nargs="*", choices=sorted(RUNS), help="run only these (in the set's order)")
    p.add_argument("--threads", type=int, help="CPU threads per run (default: all cores, divided among --jobs)")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at once (on 2 cores, two 1-thread runs train about 1.4x the images of one 2-thread run)")
    p.add_argument("--retries", type=int, default=1,
                   help="times a failed run is started again from its resume state before the set stops")
    p.add_argument("--dry-run", action="store_true", help="print the commands and what is done")
    p.add_argument("--status", action="store_true", help="print where each run stands and stop")
    args = p.parse_args(argv)
    root = Path(os.path.expanduser(args.root))
    if args.status:
        for name in RUNS:
            if not args.only or name in args.only:
                print(f"[zoo] {name}: {status(name, root)}")
        return 0
    sources = {"cifar": args.cifar, "imagenette": args.imagenette}
    pending: list[tuple[str, Callable[[int | None], list[str]]]] = []
    for name, (kind, _) in RUNS.items():
        if args.only and name not in args.only:
            continue
        if (done := ended(name, root)) is not None:
            print(f"[zoo] {name}: {done}", flush=True)
        elif not sources[kind]:
            print(f"[zoo] {name}: skipped (no --{kind} source)", flush=True)
        else:
            data, cache = os.path.expanduser(sources[kind]), os.path.expanduser(args.cache_dir)
            pending.append((name, partial(command, name, data, root, cache)))
    if args.dry_run:
        for number, (name, cmd) in enumerate(pending):
            threads = args.threads or share(args.jobs, len(pending) - number)
            print(f"[zoo] {name}: {' '.join(cmd(threads))}", flush=True)
        return 0
    return run_all(pending, root, args.jobs, threads=args.threads, retries=args.retries)


def share(jobs: int, runs_left: int) -> int | None:
    """Threads for a run started while ``runs_left`` runs (itself included) remain to run or are running: the
    cores divided among as many runs as will share them (``None``, all cores, for one). A run keeps its threads to
    its end, so a run started beside another stays on its share after the other ends, until the next sitting."""
    sharing = min(jobs, runs_left)
    return None if sharing <= 1 else max(1, (os.cpu_count() or 1) // sharing)


def run_all(pending: list[tuple[str, Callable[[int | None], list[str]]]], root: Path, jobs: int = 1,
            poll: float = 2.0, threads: int | None = None, retries: int = 1) -> int:
    """Run ``pending`` (name, command for a thread count) in order, ``jobs`` at a time, each with ``threads`` or
    its :func:`share` of the cores. A run that fails is started again from its resume state, up to ``retries``
    times (the runs are unattended for hours: one transient failure should not idle the machine until the next
    sitting). Once a run fails for good or is stopped before its end, no new run starts; the return value is its
    exit code (a stopped run: 1), after the others have ended."""
    running: dict[str, subprocess.Popen] = {}
    makers = dict(pending)
    failures: dict[str, int] = {}

    def stop_all(signum: int, frame: object) -> None:  # noqa: ARG001 - signal handler signature
        for child in running.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)  # each trainer saves its state and stops
        raise SystemExit(f"stopped by signal {signum}; run the same command again to continue")

    previous = signal.signal(signal.SIGTERM, stop_all)
    queue, result = list(pending), 0
    try:
        while queue or running:
            while queue and len(running) < jobs and result == 0:
                name, make = queue.pop(0)
                cmd = make(threads or share(jobs, len(running) + 1 + len(queue)))
                print(f"[zoo] {name}: {' '.join(cmd)}", flush=True)
                (root / name).mkdir(parents=True, exist_ok=True)
                with (root / name / "train.log").open("a") as log:  # the child keeps its own handle
                    running[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
            if result != 0:
                queue.clear()
            for name, child in list(running.items()):
                code = child.poll()
                if code is None:
                    continue
                del running[name]
                if code != 0:
                    failures[name] = failures.get(name, 0) + 1
                    again = failures[name] <= retries and result == 0
                    print(f"[zoo] {name}: failed with exit code {code}; see {root / name / 'train.log'}"
                          + (f"; starting it again from its resume state (retry {failures[name]} of {retries})"
                             if again else ""), flush=True)
                    if again:
                        queue.insert(0, (name, makers[name]))
                    else:
                        result = result or code
                elif not (root / name / "model.safetensors").exists():  # stopped resumably (SIGTERM)
                    print(f"[zoo] {name}: stopped before the end; run the same command again to continue", flush=True)
                    result = result or 1
                else:
                    print(f"[zoo] {name}: finished", flush=True)
            if running:
                time.sleep(poll)
    except KeyboardInterrupt:
        for child in running.values():
            child.send_signal(signal.SIGTERM)
            child.wait()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
