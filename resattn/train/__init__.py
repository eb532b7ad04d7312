"""Train a Residual Attention Network: ``python -m resattn.train --help``.

A small loop library with two recipes, exact resume, label noise and DistributedDataParallel under ``torchrun``.
One module per concern: :mod:`.recipes` (recipes, configuration, schedule), :mod:`.environment` (device,
threads, process group, machine description), :mod:`.state` (resume state), :mod:`.build` (data, model and
optimizer of a :class:`Run`), :mod:`.loop` (epochs, evaluation, final checkpoint), :mod:`.callbacks` (after each
epoch), :mod:`.evaluation` (accuracy on a split) and :mod:`.cli` (the command line).

* ``paper`` — the paper's CIFAR recipe (§4.1) read plainly: Nesterov SGD, momentum 0.9, weight decay 1e-4 on
  every parameter, batch 64, lr 0.1 divided by 10 at 64k and 96k iterations, stop at 160k; per-pixel mean
  subtraction; pad-4 crop and flip.
* ``fast`` — for short budgets (not the paper's): Nesterov SGD, batch 128, weight decay 5e-4 on conv and FC
  weights only (batch-norm scale/shift and biases exempt), a one-cycle schedule (linear warm-up over the first 25%
  of iterations to the peak lr, then cosine to zero), label smoothing 0.1, per-channel normalisation.
  ``benchmarks/README.md`` records what it reached.

``--weight-decay-scope`` overrides either recipe's choice. Fine-tuning: ``--init-from CHECKPOINT`` starts from a
checkpoint's weights (its architecture and input pipeline; a new classifier when the class count differs),
``--train-only {all,stage3,head}`` freezes the rest (frozen batch-norm statistics stay frozen), ``--classes``
keeps a subset of classes, and ``--probe N`` writes every module's mask for N fixed test images after each epoch.

Resume state (weights, optimizer buffers, iteration, RNG states) lives in ``--state-dir``, by default under
``~/.cache/resattn/runs/<run>``, written atomically as safetensors + JSON, so a run can be stopped at any time and
continued with ``--resume``. On a CPU a resumed run ends with the same weights as an uninterrupted one (tested).
On CUDA the loop enables cuDNN benchmark mode and TF32 for speed, so kernels are chosen per run and results are
not bitwise reproducible: a resumed run continues the same schedule, data order and augmentation stream, and its
weights match an uninterrupted run only up to that numerical noise. Under ``torchrun`` the batch size is per
process; the data order and augmentation depend only on the global batch, so N processes with batch B follow
one process with batch N·B (batch-norm statistics are per process, as plain DDP computes them).
``--cuda-graphs`` (one process on CUDA) replays each iteration as a CUDA graph (:mod:`resattn.graphs`).
Outputs go to ``--out``: ``config.json``, ``metrics.jsonl`` (one line per epoch) and the final checkpoint,
whose metadata carries the *final-epoch* test accuracy (never a best-epoch pick) and every machine the run trained
on (``hardware``; ``hardware_log`` with the iteration each began at, for a run resumed elsewhere).
"""

from __future__ import annotations

from .build import Run, build_optimizer, frozen_parts, prepare, select_classes
from .callbacks import EpochCallback, MaskSnapshots
from .cli import build_parser, main
from .environment import BF16_MARK, Runtime, hardware, hardware_spans, hardware_summary, respelled, setup_runtime, thread_words
from .evaluation import evaluate_model
from .loop import Diverged, end_epoch, epoch_steps, finish, public_recipe, run_steps, train
from .recipes import RECIPES, TRAIN_ONLY, TrainConfig, lr_at, step_milestones
from .state import load_state, save_state, state_info

__all__ = [
    "TrainConfig", "RECIPES", "Diverged", "TRAIN_ONLY", "Run", "EpochCallback", "MaskSnapshots", "prepare", "epoch_steps", "end_epoch",
    "finish", "train", "run_steps", "main", "lr_at", "step_milestones", "evaluate_model", "frozen_parts", "select_classes",
]
