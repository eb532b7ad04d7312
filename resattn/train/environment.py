"""Where a run executes: the device, CPU threads and (under ``torchrun``) the process group, and the one-line
machine description every checkpoint carries, with the machines of a run resumed elsewhere."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .recipes import TrainConfig

__all__ = ["Runtime", "setup_runtime", "native_bf16", "trains_in_bf16", "BF16_MARK", "hardware", "hardware_spans",
           "hardware_summary", "thread_words", "respelled"]

#: What a CPU session's machine description adds while it trains under bf16 autocast (``--cpu-bf16``); CUDA
#: trains in bf16 by default, so its descriptions carry no mark.
BF16_MARK = "; bf16 autocast"


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_runtime(config: TrainConfig) -> Runtime:
    """Pick the device, threads and (under torchrun) the process group."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    want_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    device = torch.device(f"cuda:{local_rank}" if want_cuda else "cpu")
    if want_cuda:
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
        torch.set_num_threads(config.threads or max(1, (os.cpu_count() or 1) // local_world))
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if want_cuda else "gloo")
    return Runtime(device, rank, world_size, local_rank)


def native_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX512_BF16 or AMX tiles). There bf16 autocast trains
    attention56_cifar 1.9x faster than float32 (a 2-core Zen 4 EPYC, ``scripts/bench_train.py --cpu-bf16``);
    elsewhere oneDNN emulates bf16, so ``--cpu-bf16 auto`` keeps float32."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, so looked up with a fallback
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def trains_in_bf16(config: TrainConfig, runtime: Runtime) -> bool:
    """Whether the training step runs under bf16 autocast: on CUDA unless ``--no-bf16``; on the CPU only when
    asked (``--cpu-bf16 on``, or ``auto`` on a CPU with :func:`native_bf16`), since it changes the run's numerics.
    Weights, gradients and optimizer state stay float32 either way, so a run may switch between sessions."""
    if runtime.device.type == "cuda":
        return config.bf16
    return config.cpu_bf16 == "on" or (config.cpu_bf16 == "auto" and native_bf16())


def thread_words(count: int) -> str:
    """A CPU thread count in words ("1 thread", "2 threads"), as machine descriptions and model cards print it."""
    return f"{count} thread{'' if count == 1 else 's'}"


def respelled(machine: str) -> str:
    """A stored machine description in today's spelling: checkpoints and resume state written before
    ``thread_words`` say "1 threads", and a run resumed on the same machine must not read that as a move."""
    return machine.replace(", 1 threads;", ", 1 thread;")


def hardware(runtime: Runtime) -> str:
    """A one-line description of the machine, stored with every run."""
    if runtime.device.type == "cuda":
        desc = f"{runtime.world_size}x {torch.cuda.get_device_name(runtime.device)}"
    else:
        desc = (f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                f"{thread_words(torch.get_num_threads())}")
    return f"{desc}; torch {torch.__version__}" + (f"; {runtime.world_size} processes" if runtime.world_size > 1 else "")


def hardware_spans(history: Sequence[dict[str, Any]], total: int) -> list[tuple[str, int, int]]:
    """A ``hardware_log`` as (machine, first iteration, end iteration) spans of a run of ``total`` iterations."""
    starts = [int(e["from_iteration"]) for e in history]
    return [(str(e["hardware"]), start, end) for e, start, end in zip(history, starts, starts[1:] + [total])]


def hardware_summary(history: Sequence[dict[str, Any]], total: int) -> str:
    """One line for a run's machines: the one machine, or each with the iterations it trained."""
    spans = hardware_spans(history, total)
    if len(spans) == 1:
        return spans[0][0]
    return "; then ".join(f"{machine} (iterations {start}–{end})" for machine, start, end in spans)
