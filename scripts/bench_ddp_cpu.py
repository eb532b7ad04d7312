"""CPU training throughput of one process against data-parallel processes at the same global batch.

    python scripts/bench_ddp_cpu.py [--model attention56_cifar] [--batch-size 64] [--processes 2] [--steps 8]

* one process: ``--batch-size`` images per step on all cores (``torch.set_num_threads(os.cpu_count())``).
* data-parallel: ``--processes`` processes (gloo, as ``torchrun --nproc-per-node N -m resattn.train`` runs on a CPU),
  each with ``cpu_count / N`` threads and ``batch-size / N`` images; gradients averaged, so one step still learns
  from ``--batch-size`` images. Batch norm then normalises over each process's share, as on several GPUs without
  synchronised BN.

Both use the trainer's fast CPU path (channels_last, float32, Nesterov SGD) on random images. Prints images/s of
each and the ratio; record it in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import resattn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import _step_fn  # noqa: E402


def _model(name: str) -> torch.nn.Module:
    return resattn.create_model(name).to(memory_format=torch.channels_last)


def _train(model: torch.nn.Module, batch: int, size: int, steps: int, warmup: int) -> float:
    """Images/s of this process over ``steps`` timed steps of ``batch`` random images."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))

    step = _step_fn(model, optimizer, x, y, contextlib.nullcontext())  # bench_train's step, so the two agree
    for _ in range(warmup):
        step()
    if dist.is_initialized():
        dist.barrier()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if dist.is_initialized():
        dist.barrier()
    return steps * batch / (time.perf_counter() - t0)


def _worker(rank: int, args: argparse.Namespace, port: int, results: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.processes))
    dist.init_process_group("gloo", rank=rank, world_size=args.processes)
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(_model(args.model))  # wrapped after channels_last, as the trainer
    ips = _train(model, args.batch_size // args.processes, args.size, args.steps, args.warmup)
    results[rank] = ips
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="attention56_cifar", help="registered model name")
    p.add_argument("--batch-size", type=int, default=64, help="global images per step (the paper's CIFAR batch)")
    p.add_argument("--size", type=int, default=32, help="input side length")
    p.add_argument("--processes", type=int, default=2, help="data-parallel processes")
    p.add_argument("--steps", type=int, default=8, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    p.add_argument("--port", type=int, default=29517, help="rendezvous port on 127.0.0.1")
    args = p.parse_args()
    if args.batch_size % args.processes:
        p.error(f"--batch-size {args.batch_size} is not divisible by --processes {args.processes}")
    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    torch.manual_seed(0)
    single = _train(_model(args.model), args.batch_size, args.size, args.steps, args.warmup)
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(args, args.port, results), nprocs=args.processes, join=True)
        per_process = [results[r] for r in range(args.processes)]
    together = sum(per_process)
    threads = max(1, cores // args.processes)
    print(f"{args.model}, global batch {args.batch_size}, {args.size}x{args.size}, {platform.machine()} CPU, "
          f"{cores} cores, torch {torch.__version__}")
    print(f"{'setting':<44} {'train img/s':>12}")
    print(f"{f'1 process, {cores} threads, batch {args.batch_size}':<44} {single:>12.1f}")
    print(f"{f'{args.processes} processes x {threads} threads, batch {args.batch_size // args.processes} each':<44} "
          f"{together:>12.1f}")
    print(f"{'ratio data-parallel / one process':<44} {together / single:>11.2f}x")


if __name__ == "__main__":
    main()
