"""Resume state: weights, optimizer momentum and RNG states as safetensors, with the run's progress as JSON
metadata, written atomically so a run can be stopped at any moment. The format is kept across versions (a run
stopped by earlier code resumes bit-for-bit: ``tests/data/resume_fixture``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..checkpoint import _unwrap

__all__ = ["save_state", "load_state", "state_info"]


def _state_tensors(model: nn.Module, optimizer: torch.optim.Optimizer, aug: torch.Generator) -> dict[str, Tensor]:
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in _unwrap(model).state_dict().items()}
    for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"]):
        buf = optimizer.state.get(p, {}).get("momentum_buffer")
        if buf is not None:
            tensors[f"opt.{i}"] = buf.detach().cpu().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.aug"] = aug.get_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    return tensors


def save_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, aug: torch.Generator, info: dict) -> None:
    """Write resume state atomically: ``state.safetensors`` (tensors) with ``info`` as JSON metadata."""
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / "state.safetensors.tmp"
    save_file(_state_tensors(model, optimizer, aug), str(tmp), metadata={"info": json.dumps(info)})
    os.replace(tmp, path / "state.safetensors")


def state_info(path: Path) -> dict:
    """The ``info`` :func:`save_state` wrote in ``path`` (the iteration, the config), without loading tensors."""
    from safetensors import safe_open

    with safe_open(str(path / "state.safetensors"), "pt") as fh:
        return json.loads(fh.metadata()["info"])


def load_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, aug: torch.Generator) -> dict:
    """Restore what :func:`save_state` wrote; returns its ``info``."""
    file = path / "state.safetensors"
    info = state_info(path)
    tensors = load_file(str(file))
    _unwrap(model).load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        if f"opt.{i}" in tensors:
            optimizer.state[p]["momentum_buffer"] = tensors[f"opt.{i}"].to(p.device)
    torch.set_rng_state(tensors["rng.torch"])
    aug.set_state(tensors["rng.aug"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return info
