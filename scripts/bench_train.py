"""Training and inference throughput of attention56_cifar: the plain path against the fast path, in one run.

    python scripts/bench_train.py [--batch-size 128] [--steps 6] [--device cpu|cuda] [--compile] [--profile] [--cpu-bf16]
    python scripts/bench_train.py --model attention56_imagenet --width-mult 0.5 --size 128 --attention spatial

* plain: eager, NCHW (contiguous) tensors, float32.
* fast:  what ``resattn.train`` does: channels_last tensors and weights; on CUDA also bf16 autocast.
* with ``--cpu-bf16``, also the fast path under bf16 autocast on the CPU (``resattn.train --cpu-bf16``), which pays
  only where the processor has bf16 instructions (AVX512_BF16 or AMX).

Both paths start from the same weights and see the same batch, so their first-step losses must agree to float
tolerance (printed). Prints a table of images/s and the fast/plain ratio; record it in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import time

import torch
import torch.nn.functional as F

import resattn


def _step_fn(model, optimizer, x, y, autocast):
    def step() -> float:
        with autocast:
            loss = F.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    base: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, fast: bool, steps: int, warmup: int, compile: bool = False,
    bf16: bool | None = None,
) -> dict:
    """Training and inference images/s of a copy of ``base`` on the batch ``x``; ``bf16`` None means bf16 autocast
    exactly where the trainer uses it by default (the fast path on CUDA)."""
    device = x.device
    model = copy.deepcopy(base)
    fmt = torch.channels_last if fast else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    if compile:
        model = torch.compile(model)
    xs = x.contiguous(memory_format=fmt)
    bf16 = (fast and device.type == "cuda") if bf16 is None else bf16
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)
    step = _step_fn(model, optimizer, xs, y, autocast)
    first_loss = step()
    for _ in range(warmup - 1):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    train_ips = steps * len(x) / (time.perf_counter() - t0)
    model.eval()
    with torch.inference_mode(), autocast:
        for _ in range(warmup):
            model(xs)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            model(xs)
        _sync(device)
    infer_ips = steps * len(x) / (time.perf_counter() - t0)
    return {"first_loss": first_loss, "train": train_ips, "infer": infer_ips}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="attention56_cifar", help="registered model name")
    p.add_argument("--batch-size", type=int, default=128, help="images per step")
    p.add_argument("--size", type=int, default=32, help="input side length")
    p.add_argument("--attention", choices=("mixed", "channel", "spatial"), default="mixed", help="mask activation")
    p.add_argument("--width-mult", type=float, default=1.0, help="channel width multiplier")
    p.add_argument("--steps", type=int, default=6, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads")
    p.add_argument("--compile", action="store_true", help="also time the fast path under torch.compile")
    p.add_argument("--profile", action="store_true",
                   help="also print where the fast path's training steps spend their time, by operator")
    p.add_argument("--cpu-bf16", action="store_true", help="also time the fast path under bf16 autocast on the CPU")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    options = {k: v for k, v in (("attention", args.attention), ("width_mult", args.width_mult))
               if v != {"attention": "mixed", "width_mult": 1.0}[k]}  # the defaults: baselines take neither
    base = resattn.create_model(args.model, **options).to(device)
    x = torch.randn(args.batch_size, 3, args.size, args.size, device=device)
    y = torch.randint(0, 10, (args.batch_size,), device=device)
    plain = measure(base, x, y, fast=False, steps=args.steps, warmup=args.warmup)
    fast = measure(base, x, y, fast=True, steps=args.steps, warmup=args.warmup)
    rows = [("plain (eager NCHW fp32)", plain)]
    fast_name = "fast (channels_last" + (", bf16)" if device.type == "cuda" else ")")
    rows.append((fast_name, fast))
    if args.compile:
        rows.append(("fast + torch.compile", measure(base, x, y, fast=True, steps=args.steps, warmup=args.warmup, compile=True)))
    low = None
    if args.cpu_bf16 and device.type == "cpu":
        low = measure(base, x, y, fast=True, steps=args.steps, warmup=args.warmup, bf16=True)
        rows.append(("fast + bf16 autocast", low))
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.machine()} CPU, {args.threads} threads"
    print(f"{args.model} ({args.attention} attention, width x{args.width_mult:g}), batch {args.batch_size}, "
          f"{args.size}x{args.size}, {where}, torch {torch.__version__}")
    print(f"{'path':<28} {'train img/s':>12} {'infer img/s':>12} {'first loss':>12}")
    for name, r in rows:
        print(f"{name:<28} {r['train']:>12.1f} {r['infer']:>12.1f} {r['first_loss']:>12.6f}")
    print(f"{'ratio fast/plain':<28} {fast['train'] / plain['train']:>11.2f}x {fast['infer'] / plain['infer']:>11.2f}x")
    diff = abs(fast["first_loss"] - plain["first_loss"])
    tol = 1e-4 if device.type == "cpu" else 2e-2  # bf16 autocast on CUDA rounds more
    print(f"same batch, same weights: |loss difference| = {diff:.2e} ({'OK' if diff <= tol else 'MISMATCH'}, tolerance {tol:g})")
    if low is not None:
        print(f"{'ratio bf16/fast':<28} {low['train'] / fast['train']:>11.2f}x {low['infer'] / fast['infer']:>11.2f}x")
        print(f"bf16 autocast against float32, first step: |loss difference| = "
              f"{abs(low['first_loss'] - fast['first_loss']):.2e}")
    if args.profile:
        profile(base, x, y, args.steps)


#: Operator groups of the profile's summary: convolutions (compute-bound) and the element-wise work around them.
GROUPS = {
    "convolution": ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::cudnn_convolution"),
    "batch norm": ("aten::native_batch_norm", "aten::native_batch_norm_backward", "aten::cudnn_batch_norm",
                   "aten::cudnn_batch_norm_backward"),
    "ReLU": ("aten::clamp_min", "aten::threshold_backward", "aten::relu_"),
    "additions": ("aten::add", "aten::add_"),
}


def profile(base: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> None:
    """Print the share of the fast path's training time each group of :data:`GROUPS` takes (self time)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    model = copy.deepcopy(base).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=x.device.type == "cuda")
    step = _step_fn(model, optimizer, x.contiguous(memory_format=torch.channels_last), y, autocast)
    step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if x.device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        _sync(x.device)
    device_time = x.device.type == "cuda"
    times = {e.key: (e.self_device_time_total if device_time else e.self_cpu_time_total) for e in prof.key_averages()}
    total = sum(times.values())
    print(f"where the fast path's {steps} training steps spend their {'device' if device_time else 'CPU'} time (self time):")
    for group, names in GROUPS.items():
        print(f"  {group:<14} {100 * sum(times.get(n, 0) for n in names) / total:5.1f}%")
    rest = total - sum(times.get(n, 0) for names in GROUPS.values() for n in names)
    print(f"  {'everything else':<14} {100 * rest / total:5.1f}%")


if __name__ == "__main__":
    main()
