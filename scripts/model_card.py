"""Write a shipped checkpoint's model card from its run: ``python scripts/model_card.py --help``.

    python scripts/model_card.py RUN_DIR --data path/to/data.zip --name attention56_cifar_mixed_arl
    python scripts/model_card.py --zoo attention56_cifar_mixed_nal --data path/to/cifar10-jpeg.zip --half

``RUN_DIR`` is a training run's output folder (``model.safetensors``, ``metrics.jsonl``, ``config.json``; what
``scripts/train_zoo.py`` leaves under ``~/.cache/resattn/zoo/NAME``; ``--zoo NAME`` takes that folder, the name and
the card's training command from ``train_zoo.py``). The script copies the checkpoint to
``checkpoints/NAME.safetensors``, evaluates that copy with ``python -m resattn.evaluate``'s function on the test
split (so the card's accuracy is what anyone reproduces), counts parameters and MACs, and writes
``checkpoints/NAME.md`` with the recipe, the budget (epochs, training seconds from the metrics, hardware), the
final-epoch accuracy, per-class accuracy, the per-epoch curve and the paper's figure when one is given.

``--against OTHER.safetensors`` (a shipped checkpoint with its card beside it, trained on the same data) adds a
section that sets the run against it: both test curves over the training images seen, drawn to
``checkpoints/NAME-curve.png`` (the other's curve is the one its card states), and the paired comparison of the two
files on the same test images that ``python -m resattn.evaluate --compare`` prints (McNemar's exact test).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import resattn  # noqa: E402
import resattn.paper  # noqa: E402

sys.path.insert(0, str(ROOT / "scripts"))
import train_zoo  # noqa: E402
from resattn.evaluate import compare_checkpoints, evaluate_checkpoint  # noqa: E402
from resattn.preprocess import Preprocessing  # noqa: E402
from resattn.train import BF16_MARK, hardware_spans, respelled, step_milestones, thread_words  # noqa: E402

def paper_text(meta: dict) -> str:
    """The paper's figure for the checkpoint's variant (error → accuracy), with a caveat where its data differ."""
    model, attention, learning, mask = resattn.paper.variant(meta)
    result = resattn.paper.paper_result(model, attention, learning, mask)
    if result is None:
        on_cifar = resattn.paper.paper_result("attention56_cifar", attention, learning, mask)
        if model == "attention56_imagenet" and on_cifar is not None:
            # the paper compares attention types and learning rules on CIFAR-10 only: say where its figure is
            return (f"none on ImageNet for {attention} attention, {learning.upper()}: the paper compares these "
                    f"variants on CIFAR-10 only (Attention-56 {on_cifar.accuracy:.2f}%, {on_cifar.table})")
        return "–"
    if result.dataset == "ImageNet-1k":
        classes = len(meta.get("classes", ()))
        return (f"{result.accuracy:.2f}% top-1 on ImageNet-1k at 224 px, full width ({result.table}); "
                f"not comparable with {classes} classes of `{meta.get('dataset', 'another dataset')}`")
    return result.describe()


#: The thread count in a CPU run's hardware string (``resattn.train.environment.hardware``: "…, 2 cores, 1 thread";
#: checkpoints written before it was pluralised say "1 threads").
_THREADS = re.compile(r", (\d+) threads?\b")


def _bare(machine: str) -> str:
    """The computer of a hardware string: without its thread count and precision."""
    return _THREADS.sub("", machine).replace(BF16_MARK, "")


def _same_computer(machines: list[str]) -> str | None:
    """The computer, when ``machines`` differ only in thread count or precision (a run resumed on the same
    computer with another ``--jobs`` or ``--cpu-bf16``); else ``None``."""
    bare = {_bare(machine) for machine in machines}
    return bare.pop() if len(bare) == 1 and all(_THREADS.search(m) for m in machines) else None


def _precision(machine: str) -> str:
    """How a span of the run computed its training steps, from its hardware string."""
    return "bf16 autocast" if BF16_MARK in machine else "float32"


def _thread_words(machine: str) -> str:
    return thread_words(int(_THREADS.search(machine).group(1)))  # type: ignore[union-attr]


def budget_text(meta: dict, metrics: list[dict]) -> str:
    """Training time, speed and machine: per machine when the run was resumed on another one (its checkpoint's
    ``hardware_log``), with the epochs each trained, since speeds on a GPU and a CPU mean nothing averaged. A run
    that stayed on one computer but changed its thread count between sittings names the computer once and the
    thread count of each span. The median epoch speed leads, so one epoch slowed by other work on the machine
    shows in the range, not the figure."""
    history = meta.get("hardware_log") or [{"hardware": meta["hardware"], "from_iteration": 0}]
    spans = hardware_spans(history, meta["metrics"]["iterations"])
    machines = [machine for machine, _, _ in spans]
    computer = _same_computer(machines) if len(spans) > 1 else None
    threads_vary = len({_thread_words(m) for m in machines}) > 1 if computer else False
    precision_varies = len({_precision(m) for m in machines}) > 1 if computer else False
    changed = " and ".join(what for what, varies in (("thread count", threads_vary), ("precision", precision_varies))
                           if varies)
    parts = []
    for machine, start, end in spans:
        mine = [m for m in metrics if start < m["iteration"] <= end] if len(spans) > 1 else metrics
        if not mine:
            continue
        seconds = sum(m["epoch_seconds"] for m in mine)
        speeds = [m["images_per_s"] for m in mine]
        first, last = mine[0]["epoch"], mine[-1]["epoch"]
        span = "" if len(spans) == 1 else f"epoch {first}: " if first == last else f"epochs {first}–{last}: "
        where = (f"with {_thread_words(machine)}" + (f" in {_precision(machine)}" if precision_varies else "")
                 if computer else f"on {respelled(machine)}")
        parts.append(f"{span}{seconds:,.0f} s of training (median {statistics.median(speeds):.0f} images/s, "
                     f"range {min(speeds):.0f}–{max(speeds):.0f}) {where}")
    text = "; then ".join(parts)
    if computer:
        text = f"on {computer}, with the {changed} changed between sittings: {text}"
    per_epoch = meta["metrics"]["iterations"] / meta["epochs"]
    spanning = [m["epoch"] for m in metrics for _, b, _ in spans[1:] if (m["epoch"] - 1) * per_epoch < b < m["iteration"]]
    on, setting = ("with", "setting" if threads_vary and precision_varies else changed) if computer else ("on", "machine")
    if len(spans) == 2 and spanning:
        text += f" (epoch {spanning[0]} began {on} the first {setting} and ended {on} the next)"
    elif spanning:
        text += (f" (epoch{'s' if len(spanning) > 1 else ''} {', '.join(map(str, spanning))} began {on} one "
                 f"{setting} and ended {on} the next)")
    return text


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


#: How a card states its per-epoch curve (:func:`card` writes it, :func:`card_curve` reads it back).
CURVE_LINE = "Test top-1 per epoch (%): "


def card_curve(text: str) -> list[tuple[int, float]]:
    """The per-epoch test top-1 (epoch, percent) a card written by this script states."""
    for line in text.splitlines():
        if line.startswith(CURVE_LINE):
            items = line[len(CURVE_LINE):].rstrip(".").split(", ")
            return [(int(epoch), float(top1)) for epoch, top1 in (item.split(": ") for item in items)]
    raise ValueError(f"the card states no curve (no line starting {CURVE_LINE!r})")


def images_per_epoch(meta: dict) -> float:
    """Training images one epoch of the checkpoint's run saw: iterations per epoch times the batch."""
    return meta["metrics"]["iterations"] / meta["epochs"] * meta["recipe"]["batch_size"]


def plot_curves(curves: dict[str, list[tuple[float, float]]], out: Path, drops: tuple[float, ...] = ()) -> None:
    """Test top-1 (%) against training images seen (millions), one line per run, in projector-sized type; a dotted
    line at each of ``drops`` (images seen) where the first run's step schedule divides the learning rate by 10."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5), dpi=100)
    for label, points in curves.items():
        ax.plot([x / 1e6 for x, _ in points], [y for _, y in points], marker="o", markersize=3, label=label)
    for i, seen in enumerate(drops):
        ax.axvline(seen / 1e6, color="0.4", linestyle=":", linewidth=1.5,
                   label=f"{next(iter(curves))}: learning rate ÷ 10" if i == 0 else None)
    ax.set_xlabel("training images seen (millions)", fontsize=14)
    ax.set_ylabel("test top-1 after each epoch (%)", fontsize=14)
    ax.tick_params(labelsize=12)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=12, loc="lower right")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def against_text(name: str, target: Path, metrics: list[dict], meta: dict, other: Path, data: str,
                 cache_dir: str | None, out_dir: Path) -> str:
    """The card's section setting this run against the shipped checkpoint ``other``: both curves (a PNG beside the
    card) and their paired comparison on the same test images."""
    other_card = other.with_suffix(".md")
    if not other_card.is_file():
        raise SystemExit(f"{other} has no card beside it ({other_card.name}): its curve is read from the card")
    other_meta = resattn.read_meta(other)
    if other_meta.get("dataset") != meta.get("dataset"):
        raise SystemExit(f"{other.name} was trained on {other_meta.get('dataset')!r}, this run on "
                         f"{meta.get('dataset')!r}: their curves and test images are not comparable")
    try:
        other_curve = card_curve(other_card.read_text())
    except ValueError as error:
        raise SystemExit(f"{other_card}: {error}") from None
    batch, other_per_epoch = meta["recipe"]["batch_size"], images_per_epoch(other_meta)
    other_total = other_meta["metrics"]["iterations"] * other_meta["recipe"]["batch_size"]
    mine = [(m["iteration"] * batch, 100 * m["test_top1"]) for m in metrics]
    theirs = [(min(e * other_per_epoch, other_total), top1) for e, top1 in other_curve]
    label = f"this run (`{meta['recipe']['recipe']}`)"
    other_label = f"{other.stem} (`{other_meta['recipe']['recipe']}`)"
    figure = out_dir / f"{name}-curve.png"
    recipe = meta["recipe"]
    drops = tuple(m * batch for m in step_milestones(recipe.get("milestones") or (), meta["metrics"]["iterations"])) \
        if recipe.get("schedule") == "step" else ()
    plot_curves({f"{name} ({recipe['recipe']})": mine, other_label.replace("`", ""): theirs}, figure, drops)
    paired = compare_checkpoints(str(target), str(other), data, cache_dir=cache_dir)["paired"]
    beyond = paired["mcnemar_p"] < resattn.paper.SIGNIFICANCE
    at_their_end = [top1 for seen, top1 in mine if seen <= other_total]
    reach = (f" When it had seen as many images as {other.stem} saw in all ({other_total / 1e6:.2f} M), this run "
             f"stood at {at_their_end[-1]:.2f}% (the other ended at {theirs[-1][1]:.2f}%)."
             if at_their_end and mine[-1][0] > other_total else "")
    return "\n".join([
        f"## Against `{other.stem}`",
        "",
        f"![Test top-1 after each epoch against training images seen: {name} and {other.stem}]({figure.name})",
        "",
        f"Test top-1 after each epoch against the training images seen: {label}, {mine[-1][0] / 1e6:.2f} M images "
        f"in {len(mine)} epochs, and {other_label}, {other_total / 1e6:.2f} M in {len(theirs)} (the curve its card "
        f"states).{reach}" + (f" The dotted lines mark where this run's learning rate was divided by 10 (after "
                              f"{' and '.join(f'{d / 1e6:.2f} M' for d in drops)} images)." if drops else ""),
        "",
        f"The two files on the same {paired['images']:,} test images: both right on {paired['both']:,}, only this "
        f"model on {paired['only_a']:,}, only {other.stem} on {paired['only_b']:,}, neither on {paired['neither']:,}. "
        f"Gap {paired['gap_points']:+.2f} ± {paired['gap_se_points']:.2f} points (paired standard error); "
        f"McNemar's exact {resattn.paper.p_words(paired['mcnemar_p'])}: "
        + ("beyond" if beyond else "within") + " test-set noise (one seed each: it says nothing about seed-to-seed "
        "spread).",
        "",
        "```bash",
        f"python -m resattn.evaluate --checkpoint checkpoints/{name}.safetensors --compare "
        f"checkpoints/{other.name} --data path/to/{meta['dataset']}.zip",
        "```",
    ]) + "\n"


def card(run: Path, data: str, name: str, cache_dir: str | None, command: str | None,
         out_dir: Path = ROOT / "checkpoints", half: bool = False, against: Path | None = None) -> str:
    """The model card's Markdown; copies the checkpoint to ``out_dir`` (in float16 with ``half``) and evaluates
    the copy on the way; ``against`` (a shipped checkpoint) adds :func:`against_text`."""
    target = out_dir / f"{name}.safetensors"
    out_dir.mkdir(parents=True, exist_ok=True)  # --out-dir may name a folder still to make (a rehearsal's)
    if half:
        trained, trained_meta = resattn.load_checkpoint(run / "model.safetensors")
        resattn.save_checkpoint(target, trained, trained_meta, half=True)
    else:
        shutil.copyfile(run / "model.safetensors", target)
    model, meta = resattn.load_checkpoint(target)
    result = evaluate_checkpoint(str(target), data, cache_dir=cache_dir)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    recipe = meta["recipe"]
    prep = Preprocessing.from_meta(meta)
    overrides = meta.get("overrides", {})
    attention, learning = overrides.get("attention", "mixed"), overrides.get("learning", "arl")
    params = resattn.count_params(model) / 1e6
    macs = resattn.count_macs(model, prep.size) / 1e9
    # an epoch resumed from state written before epoch totals were kept, or resumed in a multi-process run,
    # reports only its resumed part
    partial = [m["epoch"] for m in metrics if m.get("partial_epoch")]
    partial_text = (f"; epoch{'s' if len(partial) > 1 else ''} {', '.join(map(str, partial))} resumed from a stop "
                    f"count{'' if len(partial) > 1 else 's'} only the time after the resume" if partial else "")
    recorded = meta["metrics"]["test_top1"]
    if abs(recorded - result["top1"]) > (0.002 if half else 1e-9):
        raise SystemExit(f"evaluation gives {result['top1']:.4f}, the run recorded {recorded:.4f}: not writing a card")
    storage = "float16 storage (loads as float32)" if half else "float32 storage"
    # the headline is what training measured at its last epoch; a float16 copy can differ by a few images
    file_text = (f"`python -m resattn.evaluate` on this {'float16 ' if half else ''}file gives {result['top1']:.4f}"
                 + (f" (test loss {result['loss']:.3f})" if half else ""))
    learning_text = "attention residual learning, H = (1 + M)·T" if learning == "arl" else "naive attention learning, H = M·T"
    width = f", width ×{overrides['width_mult']}" if overrides.get("width_mult", 1.0) != 1.0 else ""
    paper = paper_text(meta) + (f"; this run: {gap}" if (gap := resattn.paper.against_paper(meta)) else "")
    per_class = ", ".join(f"{c} {100 * a:.1f}" for c, a in result["per_class"].items())
    curve = ", ".join(f"{m['epoch']}: {100 * m['test_top1']:.2f}" for m in metrics)
    lines = [
        f"# {name}",
        "",
        f"`{meta['model']}`{width}, **{attention} attention**, **{learning_text}**, "
        f"{overrides.get('mask', 'hourglass')} mask, architecture revision {meta.get('arch_revision', 1)}"
        + (" (the official Caffe pooling)" if meta.get("arch_revision", 1) >= 2 else " (padding-1 pooling)")
        + f". {params:.2f}M parameters, {macs:.2f}G MACs per {prep.size}×{prep.size} image.",
        "",
        "| | |",
        "|---|---|",
        f"| file | `{name}.safetensors` (sha256 starts `{_sha256(target)[:16]}`), {storage} |",
        f"| data | `{meta['dataset']}`: {len(meta['classes'])} classes ({', '.join(meta['classes'])}); "
        f"test split {result['images']} images |",
        f"| input | {prep.size}×{prep.size}; "
        + (f"the {prep.size}×{prep.size} image as it is" if prep.resize == prep.size else
           f"shorter side resized to {prep.resize}, centre crop (training: random-resized crops, smallest area "
           f"{recipe.get('crop_scale', 0.08)}, and flips)")
        + (f"; minus the training set's per-pixel mean image (the paper's CIFAR recipe; its channel averages "
           f"{[round(v, 3) for v in prep.mean]}), not divided by a std |" if prep.mean_image is not None else
           f"; normalised with mean {[round(v, 3) for v in prep.mean]}, std {[round(v, 3) for v in prep.std]} |"),
        f"| recipe | `{recipe['recipe']}`: Nesterov SGD momentum 0.9, batch {recipe['batch_size']}, "
        + (f"one-cycle to lr {recipe['lr']} ({int(100 * recipe['warmup'])}% warm-up, cosine to 0)"
           if recipe["schedule"] == "onecycle" else f"lr {recipe['lr']} ÷10 at iterations "
           + " and ".join(f"{m:,}" for m in step_milestones(recipe["milestones"], meta["metrics"]["iterations"])))
        + f", weight decay {recipe['weight_decay']} on "
        + ("conv/FC weights only" if recipe.get("weight_decay_scope") == "weights" else "every parameter")
        + f", label smoothing {recipe['label_smoothing']}; seed {meta['seed']} |",
        f"| budget | **{meta['epochs']:g} epochs** ({meta['metrics']['iterations']:,} iterations): "
        f"{budget_text(meta, metrics)}{partial_text} |",
        f"| result | **{100 * recorded:.2f}% final-epoch test top-1** (test loss {meta['metrics']['test_loss']:.3f}); "
        f"{file_text} |",
        f"| paper | {paper} |",
        "",
        f"Per class (%, {'this float16 file' if half else 'final epoch'}): " + per_class + ".",
        "",
        CURVE_LINE + curve + ".",
        "",
        "Reproduce (the trainer prints and stores its whole configuration):",
        "",
        "```bash",
        command or f"python scripts/train_zoo.py --only {name} ...",
        f"python -m resattn.evaluate --checkpoint checkpoints/{name}.safetensors --data path/to/{meta['dataset']}.zip",
        "```",
    ]
    text = "\n".join(lines) + "\n"
    if against is not None:
        text += "\n" + against_text(name, target, metrics, meta, against, data, cache_dir, out_dir)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run", type=Path, nargs="?", help="the training run's output folder")
    p.add_argument("--zoo", choices=sorted(train_zoo.RUNS),
                   help="a run of scripts/train_zoo.py: its folder under --zoo-root, its name and its command")
    p.add_argument("--zoo-root", type=Path, default=Path("~", ".cache", "resattn", "zoo"), help="train_zoo's --root")
    p.add_argument("--data", required=True, help="the dataset (folder or zip) to evaluate on")
    p.add_argument("--name", help="the checkpoint's name in checkpoints/ (with --zoo: the run's name)")
    p.add_argument("--cache-dir", help="decoded-data cache")
    p.add_argument("--command", help="the training command line to print in the card")
    p.add_argument("--notes", type=Path, help="a Markdown file whose text is appended to the card")
    p.add_argument("--out-dir", type=Path, default=ROOT / "checkpoints", help="where the checkpoint and card go")
    p.add_argument("--half", action="store_true", help="store the weights in float16 (half the file)")
    p.add_argument("--against", type=Path, metavar="OTHER.safetensors",
                   help="a shipped checkpoint (its card beside it) to set this run against: both curves and their "
                        "paired comparison on the same test images")
    args = p.parse_args(argv)
    if args.zoo:
        args.run = args.run or args.zoo_root.expanduser() / args.zoo
        args.name = args.name or args.zoo
        args.command = args.command or train_zoo.card_command(args.zoo)
    if args.run is None or args.name is None:
        p.error("give RUN_DIR and --name, or --zoo NAME")
    import torch

    torch.set_num_threads(1)
    if args.against is not None and not args.against.is_file():
        p.error(f"--against {args.against}: no such checkpoint")
    text = card(args.run, args.data, args.name, args.cache_dir, args.command, args.out_dir, args.half, args.against)
    if args.notes:
        text += "\n" + args.notes.read_text()
    (args.out_dir / f"{args.name}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
