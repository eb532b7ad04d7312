"""Model registry: names to builders, overrides as keyword arguments (the timm idea).

``create_model("attention92_cifar", attention="spatial", learning="nal")`` builds a network; the name and the
overrides are kept on the model as ``model.resattn_spec`` so a checkpoint can rebuild exactly the same network.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from torch import nn

from .networks import NetworkConfig, PreActResNet, ResidualAttentionNetwork

__all__ = ["create_model", "list_models", "register_model", "model_config"]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}

#: Modules per stage on CIFAR: the same m in every stage (paper §4.1), depth 36m + 20.
CIFAR_M = {56: 1, 92: 2, 128: 3, 164: 4, 236: 6, 452: 6}
#: Modules per stage on ImageNet. 56 and 92 are Table 2 (1/1/1 and 1/2/3). The paper defines the deeper ones only
#: through their depth; we follow GluonCV's (m−1, m, m+1), which extends Table 2's 1/2/3 and keeps 36m + 20.
IMAGENET_MODULES = {56: (1, 1, 1), 92: (1, 2, 3), 128: (2, 3, 4), 164: (3, 4, 5), 236: (5, 6, 7), 452: (5, 6, 7)}
#: Attention-452 uses p=2, t=4, r=3 (Table 6 footnote); every other depth the defaults p=1, t=2, r=1.
PTR = {452: (2, 4, 3)}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator that adds a builder to the registry under ``name``."""

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = builder
        return builder

    return wrap


def list_models() -> list[str]:
    """All registered model names, sorted."""
    return sorted(_REGISTRY)


def model_config(name: str, **overrides: Any) -> NetworkConfig:
    """The :class:`NetworkConfig` that ``create_model(name, **overrides)`` builds (attention networks only)."""
    try:
        depth_part, variant = name.split("_")
        depth = int(depth_part.removeprefix("attention"))
    except ValueError:
        raise ValueError(f"{name!r} is not an attention network name") from None
    if not depth_part.startswith("attention") or variant not in ("cifar", "imagenet") or depth not in CIFAR_M:
        raise ValueError(f"{name!r} is not an attention network name")
    p, t, r = PTR.get(depth, (1, 2, 1))
    base = NetworkConfig(
        variant=variant,
        modules=IMAGENET_MODULES[depth] if variant == "imagenet" else (CIFAR_M[depth],) * 3,
        p=p,
        t=t,
        r=r,
        num_classes=1000 if variant == "imagenet" else 10,
        pools=(3, 2, 1) if variant == "imagenet" else (2, 1, 0),
    )
    known = {f.name for f in dataclasses.fields(NetworkConfig)} - {"variant"}
    unknown = set(overrides) - known
    if unknown:
        raise TypeError(f"unknown override(s) {sorted(unknown)} for {name}; allowed: {sorted(known)}")
    for key in ("modules", "pools"):
        if key in overrides:
            overrides[key] = tuple(int(v) for v in overrides[key])
    return dataclasses.replace(base, **overrides)


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build a registered network by name, e.g. ``"attention56_cifar"``, ``"attention92_imagenet"``.

    Overrides include ``attention`` ("mixed" | "channel" | "spatial"), ``learning`` ("arl" | "nal"),
    ``mask`` ("hourglass" | "local"), ``num_classes``, ``width_mult``, ``in_chans``, ``modules`` (per stage),
    ``p``, ``t``, ``r`` and ``pools``.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of {list_models()}")
    model = _REGISTRY[name](**overrides)
    model.resattn_spec = {"name": name, "overrides": dict(overrides)}
    return model


def _attention_builder(name: str) -> Callable[..., nn.Module]:
    def build(**overrides: Any) -> nn.Module:
        return ResidualAttentionNetwork(model_config(name, **overrides))

    build.__doc__ = f"Residual Attention Network {name} (see :func:`model_config`)."
    return build


for _depth in CIFAR_M:
    for _variant in ("cifar", "imagenet"):
        _name = f"attention{_depth}_{_variant}"
        register_model(_name)(_attention_builder(_name))


@register_model("resnet164_cifar")
def resnet164_cifar(num_classes: int = 10, in_chans: int = 3, width_mult: float = 1.0) -> nn.Module:
    """Pre-activation ResNet-164, the paper's CIFAR baseline (Tables 5 and 6)."""
    return PreActResNet((18, 18, 18), num_classes=num_classes, in_chans=in_chans, width_mult=width_mult)
