"""The ImageNet networks against the authors' official Caffe definitions, run as graphs over the model's modules.

``Attention-56-deploy.prototxt`` and ``Attention-92-deploy.prototxt`` (``shared/reference/caffe/``, beside the
repository) are the deploy files the authors published. Each is parsed and executed layer by layer with the
parameters of ``create_model``'s own modules: every Caffe Convolution on exactly one ``nn.Conv2d``, every BN on
exactly one ``nn.BatchNorm2d``, the InnerProduct on ``fc``, and no module of the model left over. Strides,
paddings, the max-pool's ceil-mode arithmetic, the ``Interp`` resizing and which blob feeds which layer all come
from the file, so equal outputs (float64, random BN statistics) mean the model wires the official graph, down to
where each skip connection reads from and which pre-activation each projection shortcut uses.

The folder is reference data outside the repository; when it is missing the test fails (CI clones beside it),
unless ``RESATTN_NO_REFERENCE=1`` says to skip.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import resattn
from resattn import PreActBottleneck

try:  # tests/ may or may not be a package
    from .prototxt import WEIGHTED, Layer, Net, caffe_avg_pool, caffe_max_pool, interp_weights, load_net, run
except ImportError:
    from prototxt import WEIGHTED, Layer, Net, caffe_avg_pool, caffe_max_pool, interp_weights, load_net, run

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "caffe"
OFFICIAL = [
    ("attention56_imagenet", "Attention-56-deploy.prototxt"),
    ("attention92_imagenet", "Attention-92-deploy.prototxt"),
]
TOLERANCE = 1e-9  # relative, in float64: only rounding may differ

STAGES = {"A": 1, "B": 2, "C": 3}
UNIT_CONVS = {"branch1/conv1_1x1": "conv1", "branch1/conv2_3x3": "conv2", "branch1/conv3_1x1": "conv3",
              "branch2/conv1_1x1": "shortcut"}
HEAD_CONVS = {"linear_1": "2", "linear_2": "5"}  # the 1×1 convs of the mask head, BN-ReLU-conv-BN-ReLU-conv
# The model's BN right before each conv: a unit's bn1 pre-activates both conv1 and the projection shortcut.
BN_BEFORE = {"conv1": "bn1", "shortcut": "bn1", "conv2": "bn2", "conv3": "bn3", "2": "0", "5": "3"}


def reference_net(filename: str) -> Net:
    """The parsed official file; a clear failure when the reference folder is missing."""
    path = REFERENCE / filename
    if not path.is_file():
        if os.environ.get("RESATTN_NO_REFERENCE") == "1":
            pytest.skip(f"RESATTN_NO_REFERENCE=1 and {path} is missing")
        pytest.fail(
            f"official Caffe definition not found at {path}: the tests expect the repository checked out beside "
            "shared/ (shared/reference/caffe/). Set RESATTN_NO_REFERENCE=1 to skip this check.",
            pytrace=False,
        )
    return load_net(path)


def unit_path(unit: str) -> str:
    """The model path of the residual unit the official files call ``unit`` (p=1, t=2, r=1 layout).

    In an attention module the files call the pre-processing unit ``trunk/res1`` (the mask branch pools from its
    output), the two trunk units ``trunk/res2`` and ``trunk/res3``, and the post-processing unit by the module's
    own name.
    """
    if m := re.fullmatch(r"pre_res_(\d)", unit):
        return f"stage{m[1]}.unit"
    if m := re.fullmatch(r"post_res_4_(\d)", unit):
        return f"tail.{int(m[1]) - 1}"
    m = re.fullmatch(r"Attention([ABC])_(\d+)(?:/(.*))?", unit)
    if m is None:
        raise KeyError(f"no model unit for Caffe unit {unit!r}")
    module, rest = f"stage{STAGES[m[1]]}.module{m[2]}", m[3]
    if rest is None:
        return f"{module}.post.0"
    if rest == "trunk/res1":
        return f"{module}.pre.0"
    if n := re.fullmatch(r"trunk/res(\d+)", rest):
        return f"{module}.trunk.{int(n[1]) - 2}"
    if n := re.fullmatch(r"mask/(down|up)_sample/res(\d+)_(\d+)", rest):
        return f"{module}.mask.{n[1]}.{int(n[2]) - 1}.{int(n[3]) - 1}"
    if n := re.fullmatch(r"mask/skip/res(\d+)", rest):
        return f"{module}.mask.skips.{int(n[1]) - 1}"
    raise KeyError(f"no model unit for Caffe unit {unit!r}")


def conv_path(name: str) -> str:
    """The model path of the Conv2d / Linear that the Caffe Convolution / InnerProduct ``name`` uses."""
    if name == "conv1":
        return "stem.conv"
    if name == "classifier":
        return "fc"
    if m := re.fullmatch(r"(Attention[ABC]_\d+)/mask/(linear_[12])", name):
        return f"{unit_path(m[1]).removesuffix('.post.0')}.mask.head.{HEAD_CONVS[m[2]]}"
    unit, _, conv = name.rpartition("/")
    unit, _, branch = unit.rpartition("/")
    return f"{unit_path(unit)}.{UNIT_CONVS[f'{branch}/{conv}']}"


def bn_path(net: Net, layer: Layer, paths: dict[str, str]) -> str:
    """The model path of the BatchNorm2d that the Caffe BN ``layer`` uses, found from the layers that read it.

    Caffe names a BN after the blob it normalises; the model owns it in the unit or head it pre-activates.
    """
    owners = set()
    for reader in net.readers(layer):
        if reader.in_place and reader.type == "ReLU":
            continue
        if reader.type == "Convolution":
            owner, _, conv = paths[reader.name].rpartition(".")
            owners.add(f"{owner}.{BN_BEFORE[conv]}")
        elif reader.type == "Pooling" and reader.param("pooling_param", "pool") == "AVE":
            owners.add("norm")  # BN-ReLU before the global pool
        elif reader.type == "Pooling" and reader.name == "pool1_3x3_s2":
            owners.add("stem.bn")  # conv-BN-ReLU-pool
        else:
            raise AssertionError(f"BN {layer.name!r} is read by {reader.type} {reader.name!r}")
    assert len(owners) == 1, f"BN {layer.name!r} would be {sorted(owners)}"
    return owners.pop()


def map_layers(net: Net, model: nn.Module) -> dict[str, nn.Module]:
    """Caffe layer name → model module for every weighted layer, asserting a one-to-one correspondence."""
    paths: dict[str, str] = {}
    for layer in net.layers:
        if layer.type in ("Convolution", "InnerProduct"):
            paths[layer.name] = conv_path(layer.name)
    for layer in net.layers:
        if layer.type == "BN":
            paths[layer.name] = bn_path(net, layer, paths)
    weighted = {name: m for name, m in model.named_modules() if isinstance(m, tuple(WEIGHTED.values()))}
    used = Counter(paths.values())
    twice = sorted(path for path, count in used.items() if count > 1)
    assert not twice, f"model modules used by more than one Caffe layer: {twice}"
    unknown = sorted(set(used) - set(weighted))
    assert not unknown, f"Caffe layers mapped to paths that are no Conv2d/BatchNorm2d/Linear of the model: {unknown}"
    unused = sorted(set(weighted) - set(used))
    assert not unused, f"model modules no Caffe layer uses: {unused}"
    return {name: weighted[path] for name, path in paths.items()}


def randomize(model: nn.Module) -> None:
    """Non-trivial BN statistics and affine parameters (so that every BN mapping matters), and O(1) activations.

    Under the default He initialisation every unit roughly doubles the activations' variance, so by stage 3 the
    mask logits reach 1e3–1e6 and every sigmoid is saturated to exactly 0 or 1, which would hide any wiring error
    inside a mask branch. Scaling each unit's last conv by 0.1 keeps the logits within about ±15.
    """
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
            elif isinstance(m, nn.Linear):
                m.bias.normal_(0, 0.1)
            elif isinstance(m, PreActBottleneck):
                m.conv3.weight.mul_(0.1)


def relative_difference(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm())  # ‖a − b‖ / ‖b‖


@pytest.mark.parametrize("name,filename", OFFICIAL)
def test_model_computes_the_official_caffe_graph(name, filename):
    """Every residual unit's output and the logits equal the official graph's, run over the model's modules.

    The per-unit comparison points at the first unit (in the file's order) where the wiring departs from the
    official one; the logits comparison covers the whole network, including the parameter-free layers.
    """
    net = reference_net(filename)
    torch.manual_seed(0)
    model = resattn.create_model(name, num_classes=1000)
    assert (model.config.p, model.config.t, model.config.r) == (1, 2, 1), "the official files are p=1, t=2, r=1"
    randomize(model)
    model = model.double().eval()
    modules = map_layers(net, model)
    (shape,) = net.inputs.values()  # 1×3×224×224 in both files
    x = torch.randn(shape, dtype=torch.float64)

    unit_outputs: dict[str, Tensor] = {}
    hooks = [
        unit.register_forward_hook(lambda _m, _i, out, path=path: unit_outputs.__setitem__(path, out))
        for path, unit in model.named_modules()
        if isinstance(unit, PreActBottleneck)
    ]
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        for hook in hooks:
            hook.remove()

    # A unit's output is the Eltwise SUM that carries the unit's own name in the file.
    units = {unit_path(m[1]) for m in (re.fullmatch(r"(.+)/branch1/conv1_1x1", n) for n in modules) if m}
    assert units == set(unit_outputs), "units with a conv1 in the file != the model's PreActBottlenecks"
    compared: list[tuple[str, str, float]] = []
    saturated: dict[str, float] = {}
    graph: dict[str, Tensor] = {}

    def observe(layer: Layer, out: Tensor) -> None:
        if layer.type == "Eltwise" and layer.name + "/branch1/conv1_1x1" in modules:
            path = unit_path(layer.name)
            compared.append((layer.name, path, relative_difference(out, unit_outputs[path])))
        elif layer.type == "Sigmoid":
            saturated[layer.name] = float(((out - 0.5).abs() > 0.4999).double().mean())
        elif layer.type == "InnerProduct":
            graph["logits"] = out

    with torch.no_grad():
        run(net, {"data": x}, modules, observe)

    assert len(compared) == len(unit_outputs)
    # the check itself: saturated masks would make the mask branches' wiring invisible in the outputs
    assert max(saturated.values()) < 0.05, f"saturated masks (fraction of |M - 0.5| > 0.4999): {saturated}"
    diverged = [(caffe, path, diff) for caffe, path, diff in compared if not diff < TOLERANCE]
    assert not diverged, (
        f"{len(diverged)} of {len(compared)} residual units differ from the official graph; the first is Caffe "
        f"{diverged[0][0]!r} = model {diverged[0][1]!r} (relative difference {diverged[0][2]:.2e})"
    )
    assert relative_difference(graph["logits"], logits) < TOLERANCE


def test_the_caffe_primitives_follow_caffes_loops():
    """The runner's pooling and Interp equal literal transcriptions of Caffe's and DeepLab's CPU loops.

    They are what the network comparison trusts, so they are checked against the C++ loop structure itself:
    ``PoolingLayer::Forward_cpu`` (MAX clips windows to the image; AVE divides by the window clipped to the
    padded image) and DeepLab's ``caffe_cpu_interp2``.
    """
    torch.manual_seed(0)

    def pooled(x: Tensor, kernel: int, stride: int, pad: int, kind: str) -> Tensor:
        height, width = x.shape[-2:]
        out_h = math.ceil((height + 2 * pad - kernel) / stride) + 1
        out_w = math.ceil((width + 2 * pad - kernel) / stride) + 1
        out_h -= pad > 0 and (out_h - 1) * stride >= height + pad
        out_w -= pad > 0 and (out_w - 1) * stride >= width + pad
        out = torch.empty(*x.shape[:-2], out_h, out_w, dtype=x.dtype)
        for ph in range(out_h):
            for pw in range(out_w):
                hstart, wstart = ph * stride - pad, pw * stride - pad
                if kind == "MAX":
                    hend, wend = min(hstart + kernel, height), min(wstart + kernel, width)
                    hstart, wstart = max(hstart, 0), max(wstart, 0)
                    out[..., ph, pw] = x[..., hstart:hend, wstart:wend].amax(dim=(-2, -1))
                else:
                    hend, wend = min(hstart + kernel, height + pad), min(wstart + kernel, width + pad)
                    size = (hend - hstart) * (wend - wstart)
                    hstart, wstart, hend, wend = max(hstart, 0), max(wstart, 0), min(hend, height), min(wend, width)
                    out[..., ph, pw] = x[..., hstart:hend, wstart:wend].sum(dim=(-2, -1)) / size
        return out

    for height, width in ((56, 56), (7, 7), (8, 15), (5, 6)):
        x = torch.randn(2, 3, height, width, dtype=torch.float64)
        for pad in (0, 1):
            torch.testing.assert_close(caffe_max_pool(x, 3, 2, pad), pooled(x, 3, 2, pad, "MAX"), rtol=0, atol=0)
            torch.testing.assert_close(caffe_avg_pool(x, 3, 2, pad), pooled(x, 3, 2, pad, "AVE"))
    # Caffe rounds up: 56 → 28 and 8 → 4 where PyTorch's default (floor) gives 27 and 3
    assert caffe_max_pool(torch.zeros(1, 1, 56, 8), 3, 2, 0).shape[-2:] == (28, 4)
    small = torch.randn(2, 3, 5, 5, dtype=torch.float64)  # a window the size of the map: the global mean
    torch.testing.assert_close(caffe_avg_pool(small, 5, 1, 0), small.mean(dim=(-2, -1), keepdim=True))

    def interp(x: Tensor, height2: int, width2: int) -> Tensor:
        height1, width1 = x.shape[-2:]
        rheight = (height1 - 1) / (height2 - 1) if height2 > 1 else 0.0
        rwidth = (width1 - 1) / (width2 - 1) if width2 > 1 else 0.0
        out = torch.empty(*x.shape[:-2], height2, width2, dtype=x.dtype)
        for h2 in range(height2):
            h1r = rheight * h2
            h1 = int(h1r)
            h1p = 1 if h1 < height1 - 1 else 0
            h1lambda = h1r - h1
            for w2 in range(width2):
                w1r = rwidth * w2
                w1 = int(w1r)
                w1p = 1 if w1 < width1 - 1 else 0
                w1lambda = w1r - w1
                top = (1 - w1lambda) * x[..., h1, w1] + w1lambda * x[..., h1, w1 + w1p]
                bottom = (1 - w1lambda) * x[..., h1 + h1p, w1] + w1lambda * x[..., h1 + h1p, w1 + w1p]
                out[..., h2, w2] = (1 - h1lambda) * top + h1lambda * bottom
        return out

    sizes = [((7, 7), (14, 14)), ((4, 4), (7, 7)), ((3, 5), (8, 11)), ((28, 28), (56, 56)), ((1, 2), (3, 1))]
    for (h1, w1), (h2, w2) in sizes:
        x = torch.randn(2, 3, h1, w1, dtype=torch.float64)
        rows, cols = interp_weights(h1, h2), interp_weights(w1, w2)
        torch.testing.assert_close(rows @ x @ cols.T, interp(x, h2, w2))
