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
"""

from __future__ import annotations

import argparse
import hashlib
import json
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
from resattn.evaluate import evaluate_checkpoint  # noqa: E402
from resattn.preprocess import Preprocessing  # noqa: E402
from resattn.train import hardware_spans  # noqa: E402

def paper_text(meta: dict) -> str:
    """The paper's figure for the checkpoint's variant (error → accuracy), with a caveat where its data differ."""
    result = resattn.paper.paper_result(*resattn.paper.variant(meta))
    if result is None:
        return "–"
    if result.dataset == "ImageNet-1k":
        classes = len(meta.get("classes", ()))
        return (f"{result.accuracy:.2f}% top-1 on ImageNet-1k at 224 px, full width ({result.table}); "
                f"not comparable with {classes} classes of `{meta.get('dataset', 'another dataset')}`")
    return result.describe()


def budget_text(meta: dict, metrics: list[dict]) -> str:
    """Training time, speed and machine: per machine when the run was resumed on another one (its checkpoint's
    ``hardware_log``), with the epochs each trained, since speeds on a GPU and a CPU mean nothing averaged. The
    median epoch speed leads, so one epoch slowed by other work on the machine shows in the range, not the figure."""
    history = meta.get("hardware_log") or [{"hardware": meta["hardware"], "from_iteration": 0}]
    spans = hardware_spans(history, meta["metrics"]["iterations"])
    parts = []
    for machine, start, end in spans:
        mine = [m for m in metrics if start < m["iteration"] <= end] if len(spans) > 1 else metrics
        if not mine:
            continue
        seconds = sum(m["epoch_seconds"] for m in mine)
        speeds = [m["images_per_s"] for m in mine]
        span = f"epochs {mine[0]['epoch']}–{mine[-1]['epoch']}: " if len(spans) > 1 else ""
        parts.append(f"{span}{seconds:,.0f} s of training (median {statistics.median(speeds):.0f} images/s, "
                     f"range {min(speeds):.0f}–{max(speeds):.0f}) on {machine}")
    text = "; then ".join(parts)
    per_epoch = meta["metrics"]["iterations"] / meta["epochs"]
    spanning = [m["epoch"] for m in metrics for _, b, _ in spans[1:] if (m["epoch"] - 1) * per_epoch < b < m["iteration"]]
    if len(spans) > 1 and spanning:
        text += f" (epoch {spanning[0]} began on the first machine and ended on the next)"
    return text


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def card(run: Path, data: str, name: str, cache_dir: str | None, command: str | None,
         out_dir: Path = ROOT / "checkpoints", half: bool = False) -> str:
    """The model card's Markdown; copies the checkpoint to ``out_dir`` (in float16 with ``half``) and evaluates
    the copy on the way."""
    target = out_dir / f"{name}.safetensors"
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
    paper = paper_text(meta)
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
        + f"; normalised with mean {[round(v, 3) for v in prep.mean]}, std {[round(v, 3) for v in prep.std]} |",
        f"| recipe | `{recipe['recipe']}`: Nesterov SGD momentum 0.9, batch {recipe['batch_size']}, "
        + (f"one-cycle to lr {recipe['lr']} ({int(100 * recipe['warmup'])}% warm-up, cosine to 0)"
           if recipe["schedule"] == "onecycle" else f"lr {recipe['lr']} ÷10 at {recipe['milestones']}")
        + f", weight decay {recipe['weight_decay']} on "
        + ("conv/FC weights only" if recipe.get("weight_decay_scope") == "weights" else "every parameter")
        + f", label smoothing {recipe['label_smoothing']}; seed {meta['seed']} |",
        f"| budget | **{meta['epochs']:g} epochs** ({meta['metrics']['iterations']} iterations): "
        f"{budget_text(meta, metrics)}{partial_text} |",
        f"| result | **{100 * recorded:.2f}% final-epoch test top-1** (test loss {meta['metrics']['test_loss']:.3f}); "
        f"{file_text} |",
        f"| paper | {paper} |",
        "",
        f"Per class (%, {'this float16 file' if half else 'final epoch'}): " + per_class + ".",
        "",
        "Test top-1 per epoch (%): " + curve + ".",
        "",
        "Reproduce (the trainer prints and stores its whole configuration):",
        "",
        "```bash",
        command or f"python scripts/train_zoo.py --only {name} ...",
        f"python -m resattn.evaluate --checkpoint checkpoints/{name}.safetensors --data path/to/{meta['dataset']}.zip",
        "```",
    ]
    return "\n".join(lines) + "\n"


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
    args = p.parse_args(argv)
    if args.zoo:
        args.run = args.run or args.zoo_root.expanduser() / args.zoo
        args.name = args.name or args.zoo
        args.command = args.command or train_zoo.card_command(args.zoo)
    if args.run is None or args.name is None:
        p.error("give RUN_DIR and --name, or --zoo NAME")
    import torch

    torch.set_num_threads(1)
    text = card(args.run, args.data, args.name, args.cache_dir, args.command, args.out_dir, args.half)
    if args.notes:
        text += "\n" + args.notes.read_text()
    (args.out_dir / f"{args.name}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
