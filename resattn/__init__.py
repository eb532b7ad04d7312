"""resattn: a faithful Residual Attention Network (Wang et al., CVPR 2017) with tools to see its soft masks.

Quick start::

    import torch, resattn
    model = resattn.create_model("attention56_cifar")
    trace = resattn.inspect(model, torch.randn(1, 3, 32, 32))
    m = trace.module(stage=1, index=1).mask      # the soft mask M of stage 1, module 1
"""

from ._version import __version__
from .attention import AttentionModule, HourglassMask, LocalMask, MaskActivation
from .blocks import PreActBottleneck
from .checkpoint import CheckpointError, file_hash, load_checkpoint, read_meta, save_checkpoint
from .counting import count_macs, count_params
from .inspect import ModuleRecord, Trace, inspect, knockout
from .networks import NetworkConfig, PreActResNet, ResidualAttentionNetwork
from .registry import create_model, list_models, model_config, register_model


__all__ = [
    "AttentionModule",
    "CheckpointError",
    "HourglassMask",
    "LocalMask",
    "MaskActivation",
    "ModuleRecord",
    "NetworkConfig",
    "PreActBottleneck",
    "PreActResNet",
    "ResidualAttentionNetwork",
    "Trace",
    "__version__",
    "count_macs",
    "count_params",
    "create_model",
    "file_hash",
    "inspect",
    "knockout",
    "list_models",
    "load_checkpoint",
    "model_config",
    "read_meta",
    "register_model",
    "save_checkpoint",
]
