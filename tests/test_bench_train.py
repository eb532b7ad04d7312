"""scripts/bench_train.py --profile: the operator groups it reports are the operators a training step runs."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import torch

import resattn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import bench_train  # noqa: E402


def test_profile_attributes_a_training_steps_time_to_its_operator_groups(capsys):
    torch.manual_seed(0)
    model = resattn.create_model("attention56_cifar", width_mult=0.125)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    bench_train.profile(model, x, y, steps=1)
    shares = {name.strip(): float(share) for name, share in re.findall(r"^  (\D+?)\s+([\d.]+)%$", capsys.readouterr().out, re.M)}
    assert set(shares) == {*bench_train.GROUPS, "everything else"}
    assert abs(sum(shares.values()) - 100) < 0.5
    # a pre-activation network: every group runs, and convolutions are a real share, not a name that never matched
    assert all(shares[group] > 0 for group in bench_train.GROUPS) and shares["convolution"] > 5


def test_the_cpu_bf16_path_computes_in_bf16_and_stays_near_float32():
    torch.manual_seed(0)
    model = resattn.create_model("attention56_cifar", width_mult=0.125)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    fp32 = bench_train.measure(model, x, y, fast=True, steps=1, warmup=1)
    again = bench_train.measure(model, x, y, fast=True, steps=1, warmup=1)
    low = bench_train.measure(model, x, y, fast=True, steps=1, warmup=1, bf16=True)
    assert fp32["first_loss"] == again["first_loss"]  # same weights, same batch: float32 repeats itself
    assert low["first_loss"] != fp32["first_loss"]  # bf16 autocast really ran
    assert abs(low["first_loss"] - fp32["first_loss"]) < 0.01 * fp32["first_loss"]
