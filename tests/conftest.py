"""Shared fixtures: tiny models keep the suite fast on a 2-core CPU."""

from __future__ import annotations

import pytest
import torch

import resattn

# One intra-op thread: tests are tiny, and a second OpenMP thread starved by other load slows them many-fold.
torch.set_num_threads(1)


@pytest.fixture
def tiny_cifar():
    """A quarter-width Attention-56 (CIFAR topology), in eval mode, with non-trivial BN statistics."""
    torch.manual_seed(0)
    model = resattn.create_model("attention56_cifar", width_mult=0.25)
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 32, 32))  # move BN running stats away from their initial values
    return model.eval()


@pytest.fixture(autouse=True)
def private_jobs_dir(tmp_path, monkeypatch):
    """Every test sees its own empty jobs folder (a user's finished jobs would otherwise join the model picker)."""
    monkeypatch.setenv("RESATTN_JOBS_DIR", str(tmp_path / "jobs"))
