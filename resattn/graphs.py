"""CUDA graphs for training and evaluation: one replay per iteration instead of thousands of kernel launches.

Attention-56 for CIFAR is narrow (about 1 M parameters) and deep (hundreds of small convolutions, poolings and
interpolations in its soft-mask branches), so on a GPU an eager training step is bound by the CPU launching its
kernels, not by the GPU running them. :class:`GraphTrainStep` records one whole iteration — forward under bf16
autocast, the loss, backward and the Nesterov SGD update — once, and replays it for every later batch. The
learning rate lives in a device tensor that the step refills before each replay, so the schedule still applies,
and the update is PyTorch's fused SGD, whose arithmetic is that of the eager loop's. :class:`GraphForward` does
the same for evaluation with a fixed batch (a short last batch is padded, and its padding dropped).

Used by ``python -m resattn.train --cuda-graphs`` (single process, CUDA only). The first ``warmup`` iterations
run eagerly — they are real training steps, and they let cuDNN pick its kernels and the optimizer create its
momentum buffers before capture — then the graph is captured and replayed from the next iteration on.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GraphTrainStep", "GraphForward"]


def _autocast(bf16: bool) -> torch.autocast:
    # graph capture needs autocast's weight-cast cache off: a cached cast would be recorded once and never refreshed
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16, cache_enabled=False)


class GraphTrainStep:
    """One training iteration of ``module`` with ``optimizer`` (SGD), captured as a CUDA graph after ``warmup``
    eager iterations. Call it with a batch, its labels and the iteration's learning rate; it returns the batch's
    loss and logits (device tensors, valid until the next call)."""

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer, label_smoothing: float, bf16: bool,
                 warmup: int = 3) -> None:
        if not isinstance(optimizer, torch.optim.SGD):
            raise TypeError(f"GraphTrainStep supports SGD, not {type(optimizer).__name__}")
        self.module, self.optimizer = module, optimizer
        self.label_smoothing, self.bf16, self.warmup = label_smoothing, bf16, warmup
        device = next(p for p in module.parameters()).device
        # every group reads the same device tensor, refilled before each step: a captured float would be frozen
        self.lr = torch.zeros((), device=device)
        for group in optimizer.param_groups:
            group["lr"] = self.lr
            group["fused"], group["foreach"] = True, False  # the fused kernel reads a tensor lr on the device
            for param in group["params"]:  # buffers restored from a resume state must match their parameter's layout
                buf = optimizer.state.get(param, {}).get("momentum_buffer")
                if buf is not None:
                    optimizer.state[param]["momentum_buffer"] = torch.empty_like(param).copy_(buf)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.steps = 0
        self.failed = False  # capture failed: every later step runs eagerly
        self._x = self._labels = self._loss = self._logits = None

    def _step(self, x: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        with _autocast(self.bf16):
            logits = self.module(x)
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)
        loss.backward()
        self.optimizer.step()
        return loss, logits

    def _capture(self, x: Tensor, labels: Tensor) -> None:
        self._x, self._labels = x.clone(), labels.clone()
        self.optimizer.zero_grad(set_to_none=True)  # backward in the graph allocates the grads it then overwrites
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._loss, self._logits = self._step(self._x, self._labels)
        self.graph = graph

    def __call__(self, x: Tensor, labels: Tensor, lr: float) -> tuple[Tensor, Tensor]:
        self.lr.fill_(lr)
        if self.steps < self.warmup:
            self.steps += 1
            self.optimizer.zero_grad(set_to_none=True)
            if not x.is_cuda:
                return self._step(x, labels)
            side = torch.cuda.Stream()  # eager warm-up before a capture runs on a side stream (PyTorch's advice)
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                loss, logits = self._step(x, labels)
            torch.cuda.current_stream().wait_stream(side)
            # detached, so no autograd node of a warm-up step outlives it (a live one makes the capture's backward
            # warn about mismatched streams)
            return loss.detach(), logits.detach()
        if self.failed:
            self.optimizer.zero_grad(set_to_none=True)
            return self._step(x, labels)
        if self.graph is None or x.shape != self._x.shape:  # type: ignore[union-attr]
            try:
                self._capture(x, labels)  # recording runs nothing: the replay below is this iteration's step
            except RuntimeError as err:  # an operation that cannot be captured: train on, eagerly
                warnings.warn(f"CUDA graph capture failed, training eagerly: {err}", RuntimeWarning, stacklevel=2)
                self.failed, self.graph = True, None
                torch.cuda.synchronize()
                return self(x, labels, lr)
        else:
            self._x.copy_(x)  # type: ignore[union-attr]
            self._labels.copy_(labels)  # type: ignore[union-attr]
        self.steps += 1
        self.graph.replay()  # type: ignore[union-attr]
        return self._loss, self._logits  # type: ignore[return-value]


class GraphForward:
    """``module``'s inference forward pass at a fixed ``batch_size``, captured once (in eval mode, under bf16
    autocast if asked). Calling it with up to ``batch_size`` inputs returns their logits (valid until the next
    call); the module must stay in eval mode, and its weights may change in place between calls."""

    def __init__(self, module: nn.Module, batch_size: int, bf16: bool) -> None:
        self.module, self.batch_size, self.bf16 = module, batch_size, bf16
        self.graph: torch.cuda.CUDAGraph | None = None
        self._x: Tensor | None = None
        self._out: Tensor | None = None

    def _capture(self, like: Tensor) -> None:
        shape = (self.batch_size, *like.shape[1:])
        self._x = torch.zeros(shape, dtype=like.dtype, device=like.device)
        if like.is_contiguous(memory_format=torch.channels_last) and like.dim() == 4:
            self._x = self._x.contiguous(memory_format=torch.channels_last)
        forward: Callable[[Tensor], Tensor] = self.module
        with torch.no_grad():
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream), _autocast(self.bf16):  # warm-up: cuDNN chooses its kernels
                forward(self._x)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph), _autocast(self.bf16):
                self._out = forward(self._x)
        self.graph = graph

    def __call__(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        if n > self.batch_size:
            raise ValueError(f"batch of {n} is larger than the captured {self.batch_size}")
        if self.graph is None or x.shape[1:] != self._x.shape[1:]:  # type: ignore[union-attr]
            self._capture(x)
        self._x[:n].copy_(x)  # type: ignore[index]
        if n < self.batch_size:
            self._x[n:].zero_()  # type: ignore[index]
        self.graph.replay()  # type: ignore[union-attr]
        return self._out[:n]  # type: ignore[index]
