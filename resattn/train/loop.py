"""The training loop: one epoch as a step generator, its evaluation and metrics line, the final checkpoint, and
:func:`train`, which drains the steps and turns SIGTERM into a resumable stop."""

from __future__ import annotations

import dataclasses
import json
import signal
import sys
import time
from collections.abc import Callable, Generator, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..checkpoint import save_checkpoint
from ..data import augment_crop_flip, augment_resized_crop_flip
from .build import Run, prepare
from .callbacks import EpochCallback, MaskSnapshots
from .environment import hardware_summary
from .evaluation import evaluate_model, full_precision
from .recipes import TrainConfig, lr_at

__all__ = ["Diverged", "epoch_steps", "end_epoch", "finish", "train", "run_steps", "public_recipe"]

_T = TypeVar("_T")


class _Stop(Exception):
    pass


class Diverged(RuntimeError):
    """The run's loss or weights became NaN or infinite: it stops, and no checkpoint is written."""


#: Iterations between checks that the running loss is finite (each check waits for the device).
FINITE_EVERY = 10


def _check_loss(loss_sum: torch.Tensor, iteration: int, lr: float) -> None:
    if not torch.isfinite(loss_sum):
        raise Diverged(f"training diverged: the loss became {float(loss_sum)} by iteration {iteration} (learning "
                       f"rate {lr:g}); try a lower --lr")


def check_weights(run: Run, when: str) -> None:
    """:class:`Diverged` if any weight or batch-norm statistic of the run's model is NaN or infinite."""
    for name, value in run.model.state_dict().items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise Diverged(f"training diverged: {name} holds NaN or infinite values {when}; try a lower --lr "
                           "or --weight-decay")


def _drain(steps: Generator[None, None, _T]) -> _T:
    """Run a step generator to its end and return its value."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def epoch_steps(run: Run, stop_requested: Callable[[], bool]) -> Generator[None, None, tuple[dict[str, Any], bool]]:
    """Train from ``run.iteration`` to the end of its epoch (or a stop), one iteration per ``next``; returns the
    epoch's training statistics and whether the run was asked to stop. Raises ``_Stop`` for a stop in the middle
    of an epoch. :func:`run_steps` chains the epochs."""
    config, runtime = run.config, run.runtime
    epoch, start_batch = divmod(run.iteration, run.per_epoch)
    run.model.train()
    for part in run.frozen:
        part.eval()
    seen, t0, before = 0, time.perf_counter(), 0.0
    correct_sum = torch.zeros((), device=runtime.device)
    loss_sum = torch.zeros((), device=runtime.device)
    carried = run.epoch_totals if start_batch and run.epoch_totals else None
    if carried is not None and int(carried["iteration"]) == run.iteration:  # the part of this epoch before a stop
        seen, before = int(carried["seen"]), carried["elapsed"]
        loss_sum += carried["loss_sum"]
        correct_sum += carried["correct_sum"]
    else:
        carried = None
    autocast = torch.autocast(runtime.device.type, dtype=torch.bfloat16, enabled=run.bf16)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    show_bar = runtime.main and (config.progress == "bar" or (config.progress == "auto" and sys.stderr.isatty()))
    bar = None
    if show_bar:
        from tqdm import tqdm

        steps = min(run.per_epoch, run.total - epoch * run.per_epoch) - start_batch
        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{run.num_epochs}", unit="it", leave=False)
    stopping = False
    for images, labels in run.batches.epoch(epoch, start_batch):
        if run.iteration >= run.total:
            break
        lr = lr_at(config, run.iteration, run.total)
        if run.graph_step is None:  # a graph step takes the rate as an argument (its groups hold a device tensor)
            for group in run.optimizer.param_groups:
                group["lr"] = lr
        x = run.normalizer(images.to(runtime.device, non_blocking=True))
        # every rank draws the whole global batch's augmentation and keeps its own samples, so the stream (and
        # the result) does not depend on the number of processes
        shard = dict(rank=runtime.rank, world_size=runtime.world_size)
        x = (augment_crop_flip(x, generator=run.aug, **shard) if run.small
             else augment_resized_crop_flip(x, run.preprocessing.size, scale=(config.crop_scale, 1.0), generator=run.aug, **shard))
        x = x.contiguous(memory_format=memory_format)
        labels = labels.to(runtime.device, non_blocking=True)
        if run.graph_step is not None:
            loss, logits = run.graph_step(x, labels, lr)
        else:
            with autocast:
                logits = run.train_module(x)
                loss = F.cross_entropy(logits.float(), labels, label_smoothing=config.label_smoothing)
            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            run.optimizer.step()
        run.iteration += 1
        seen += len(labels)
        loss_sum += loss.detach() * len(labels)
        correct_sum += (logits.detach().argmax(1) == labels).sum()
        if run.iteration % FINITE_EVERY == 0:
            _check_loss(loss_sum, run.iteration, lr)
        if bar is not None:
            bar.update(1)
            if run.iteration % 10 == 0:
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}", lr=f"{lr:.3g}")
        yield
        stop_now = stop_requested() or (config.stop_after is not None and run.iteration - run.session_start >= config.stop_after)
        if runtime.main and (run.iteration % config.save_every == 0 or stop_now):
            # only a single process's totals are whole; a multi-process resume marks the epoch partial instead
            run.epoch_totals = {"iteration": run.iteration, "world_size": runtime.world_size, "seen": seen,
                                "loss_sum": float(loss_sum), "correct_sum": float(correct_sum),
                                "elapsed": before + time.perf_counter() - t0}
            run.save_state()
        if stop_now:
            stopping = True
            if run.iteration % run.per_epoch:  # mid-epoch: stop now; at an epoch's end, evaluate it first
                if bar is not None:
                    bar.close()
                raise _Stop
            break
    if bar is not None:
        bar.close()
    _check_loss(loss_sum, run.iteration, lr_at(config, max(run.iteration - 1, 0), run.total))
    elapsed = before + time.perf_counter() - t0
    run.epoch_totals = None  # the epoch ends here (or the run stops mid-epoch above, with its totals saved)
    if runtime.world_size > 1:
        for t in (loss_sum, correct_sum):
            dist.all_reduce(t)
        seen *= runtime.world_size
    stats = {"epoch": epoch + 1, "seen": seen, "loss_sum": float(loss_sum), "correct_sum": float(correct_sum),
             "elapsed": elapsed, "partial": start_batch > 0 and carried is None}
    return stats, stopping


def end_epoch(run: Run, stats: dict[str, Any], callbacks: Sequence[EpochCallback] = ()) -> dict[str, Any]:
    """Evaluate the epoch on the test split, append its metrics line, save the resume state, run the callbacks."""
    config, runtime = run.config, run.runtime
    check_weights(run, f"after epoch {stats['epoch']}")
    # the last epoch's figure is the checkpoint's: evaluate it in float32 without TF32 or a captured graph, as
    # `python -m resattn.evaluate` does, so the card reproduces on any machine (earlier epochs keep the fast path)
    last = run.iteration >= run.total
    low = config.bf16 and runtime.device.type == "cuda" and not last
    with full_precision() if last else nullcontext():
        test = evaluate_model(run.model, run.test_data, run.normalizer, runtime, config.eval_batch_size,
                              config.channels_last, low, len(run.train_data.classes),
                              forward=None if last else run.graph_eval)
    seen, elapsed = stats["seen"], stats["elapsed"]
    metrics = {
        "epoch": stats["epoch"],
        "iteration": run.iteration,
        "train_loss": stats["loss_sum"] / max(seen, 1),
        "train_top1": stats["correct_sum"] / max(seen, 1),
        "test_loss": test["loss"],
        "test_top1": test["top1"],
        "test_images": test["images"],
        "test_precision": "bf16" if low else "float32",
        "lr": lr_at(config, run.iteration - 1, run.total),
        "images_per_s": seen / elapsed if elapsed > 0 else 0.0,
        "epoch_seconds": elapsed,
        "partial_epoch": stats["partial"],
        "noisy_label_fraction": run.noisy_fraction,
        "progress": run.iteration / run.total,
    }
    if runtime.main:
        with (run.out / "metrics.jsonl").open("a") as fh:
            fh.write(json.dumps(metrics) + "\n")
        run.save_state()
        for callback in callbacks:
            callback(run, metrics)
    run.log(f"epoch {metrics['epoch']}/{run.num_epochs}: train loss {metrics['train_loss']:.4f} acc {metrics['train_top1']:.4f} | "
            f"test loss {test['loss']:.4f} acc {test['top1']:.4f} | {metrics['images_per_s']:.1f} img/s, {elapsed:.0f} s")
    return metrics


def finish(run: Run, metrics: dict[str, Any]) -> dict[str, Any]:
    """Write the final checkpoint (rank 0); its metadata carries the final epoch's test accuracy."""
    config = run.config
    final = {"test_top1": metrics["test_top1"], "test_loss": metrics["test_loss"],
             "test_images": metrics.get("test_images"), "train_top1": metrics["train_top1"],
             "epochs": run.total / run.per_epoch, "iterations": run.total, "label_noise": config.label_noise,
             "noisy_label_fraction": run.noisy_fraction, "final_epoch_reported": True}
    if run.runtime.main:
        history = run.hardware_history()
        meta = {
            **run.preprocessing.to_meta(),
            "classes": run.classes,
            **({"class_folders": run.train_data.classes} if run.classes != run.train_data.classes else {}),
            "dataset": _dataset_name(config.data),
            "metrics": final,
            "recipe": public_recipe(config),
            "seed": config.seed,
            "epochs": run.total / run.per_epoch,
            "label_noise": config.label_noise,
            "hardware": hardware_summary(history, run.total),
            "hardware_log": history,
        }
        if run.base_meta is not None:
            meta["init_from"] = {"checkpoint": Path(config.init_from).name, "model": run.base_meta.get("model"),  # type: ignore[arg-type]
                                 "dataset": run.base_meta.get("dataset"), "train_only": config.train_only}
        check_weights(run, "at the end of the run")  # a checkpoint of NaNs is never written
        target = Path(config.checkpoint) if config.checkpoint else run.out / "model.safetensors"
        target.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(target, run.model, meta)
        run.log(f"final-epoch test accuracy {final['test_top1']:.4f}; checkpoint {target}")
    if run.runtime.world_size > 1:
        dist.barrier()
    return final


def train(config: TrainConfig, callbacks: Sequence[EpochCallback] = ()) -> dict[str, Any]:
    """Run (or resume) a training run; returns the final metrics. Rank 0 writes every output.

    ``callbacks`` run on rank 0 after every epoch (``config.probe`` adds :class:`MaskSnapshots`).
    """
    run = prepare(config)
    callbacks = list(callbacks)
    if run.runtime.main and run.config.probe:
        snapshots = MaskSnapshots.from_test_split(run, run.config.probe)
        if run.iteration == 0:
            snapshots.write(run, epoch=0)  # the masks before any training: the base checkpoint's, or the init's
        callbacks.append(snapshots)
    stop_flag = {"stop": False}

    def request_stop(signum: int, frame: Any) -> None:  # noqa: ARG001 - signal handler signature
        stop_flag["stop"] = True

    old_handler = signal.signal(signal.SIGTERM, request_stop) if run.runtime.main and _main_thread() else None
    try:
        return _drain(run_steps(run, lambda: stop_flag["stop"], callbacks))
    finally:
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)


def run_steps(run: Run, stop_requested: Callable[[], bool],
              callbacks: Sequence[EpochCallback] = ()) -> Generator[None, None, dict[str, Any]]:
    """The rest of a run one iteration at a time: train each epoch, evaluate it, write the final checkpoint.

    Yields after every iteration and returns :func:`finish`'s metrics, or ``{"stopped_at": iteration}`` after a
    stop (the state is saved; ``--resume`` continues). :func:`train` drains it; ``scripts/train_gpu_set.py``
    interleaves several runs' generators on one GPU.
    """
    metrics: dict[str, Any] = {}
    try:
        while run.iteration < run.total:
            stats, stopping = yield from epoch_steps(run, stop_requested)
            metrics = end_epoch(run, stats, callbacks)
            if stopping and run.iteration < run.total:
                raise _Stop
    except _Stop:
        run.log(f"stopped at iteration {run.iteration}; continue with --resume (state in {run.state_dir})")
        return {"stopped_at": run.iteration}
    if not metrics:  # resumed a run whose last epoch had already been evaluated
        metrics = json.loads((run.out / "metrics.jsonl").read_text().splitlines()[-1])
    return finish(run, metrics)


def public_recipe(config: TrainConfig) -> dict[str, Any]:
    """The run's configuration as stored in a checkpoint: local paths (output, state and cache folders) are
    dropped and the data source is reduced to its name, so a shipped checkpoint names no machine's paths."""
    recipe = dataclasses.asdict(config)
    for key in ("out", "state_dir", "cache_dir", "checkpoint", "progress"):
        recipe.pop(key, None)
    recipe["data"] = _dataset_name(config.data)
    if config.init_from:
        recipe["init_from"] = Path(config.init_from).name
    recipe["milestones"] = list(config.milestones)
    return recipe


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _dataset_name(source: str) -> str:
    name = Path(source.partition(":")[0] if source.startswith("cifar10") else source).name
    return name.removesuffix(".zip") or source
