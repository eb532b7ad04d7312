"""Read a Caffe prototxt network definition and run it as a graph over a PyTorch model's own modules.

``test_prototxt.py`` uses this to check the network wiring against the authors' official deploy files. The
runner takes the weights from the model's modules but everything else from the file: which blob feeds which
layer, every stride and padding, the pooling arithmetic (Caffe's, written out here, not the model's pooling
module) and the bilinear resizing (DeepLab's ``Interp`` kernel, written out here, not ``F.interpolate``). It
knows only the layer types and fields those files use and raises on anything else, so nothing in a file is
silently ignored.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import reduce
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Layer",
    "Net",
    "caffe_avg_pool",
    "caffe_max_pool",
    "caffe_pooled_size",
    "interp_weights",
    "load_net",
    "parse_net",
    "parse_text_format",
    "run",
]

#: A text-format protobuf message: every field as the list of its values (fields may repeat).
Message = dict[str, list]

_TOKEN = re.compile(r'\s+|#[^\n]*|(?P<token>"(?:[^"\\\n]|\\.)*"|[{}:]|[^\s{}:"#]+)')
_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INT = re.compile(r"[-+]?\d+")


def _tokens(text: str) -> Iterator[str]:
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise ValueError(f"cannot read prototxt at offset {pos}: {text[pos:pos + 30]!r}")
        pos = match.end()
        if match["token"]:
            yield match["token"]


def _scalar(token: str) -> str | int | float | bool:
    if token.startswith('"'):
        return ast.literal_eval(token)
    if _INT.fullmatch(token):
        return int(token)
    if token in ("true", "false"):
        return token == "true"
    try:
        return float(token)
    except ValueError:
        return token  # an enum value such as MAX or SUM


def parse_text_format(text: str) -> Message:
    """Parse protobuf text format (``field: value`` and ``field { ... }``) into nested :data:`Message` dicts."""
    tokens = list(_tokens(text))
    pos = 0

    def take() -> str:
        nonlocal pos
        if pos == len(tokens):
            raise ValueError("prototxt ends inside a message: a '}' is missing")
        pos += 1
        return tokens[pos - 1]

    def message(nested: bool) -> Message:
        fields: Message = {}
        while pos < len(tokens) or nested:
            name = take()
            if name == "}" and nested:
                return fields
            if not _FIELD.fullmatch(name):
                raise ValueError(f"expected a field name, got {name!r}")
            value = take()
            if value == ":":
                value = take()
            fields.setdefault(name, []).append(message(nested=True) if value == "{" else _scalar(value))
        return fields

    return message(nested=False)


@dataclass(frozen=True)
class Layer:
    """One ``layer { ... }`` of a network definition."""

    name: str
    type: str
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    params: Mapping[str, Message]  # the ``*_param`` messages by field name

    @property
    def in_place(self) -> bool:
        """Whether the layer overwrites its input blob (Caffe's in-place ReLU)."""
        return self.tops == self.bottoms

    def param(self, message: str, field: str, default: object = None) -> object:
        """The single value of ``message.field``; ``default`` when absent (absent and no default: KeyError)."""
        values = self.params.get(message, {}).get(field)
        if values is None:
            if default is None:
                raise KeyError(f"layer {self.name!r} has no {message}.{field}")
            return default
        if len(values) != 1:
            raise ValueError(f"layer {self.name!r} repeats {message}.{field}: {values}")
        return values[0]


@dataclass(frozen=True)
class Net:
    """A parsed network definition: its input blobs with their declared shapes, and its layers in file order."""

    name: str
    inputs: Mapping[str, tuple[int, ...]]
    layers: tuple[Layer, ...]

    def readers(self, layer: Layer) -> list[Layer]:
        """The later layers that read ``layer``'s output, in file order (in-place layers on it included)."""
        start = self.layers.index(layer) + 1
        return [other for other in self.layers[start:] if set(other.bottoms) & set(layer.tops)]


def _strings(message: Message, field: str) -> tuple[str, ...]:
    values = tuple(message.get(field, ()))
    if not all(isinstance(v, str) for v in values):
        raise ValueError(f"{field} must be strings, got {values}")
    return values


def parse_net(text: str) -> Net:
    """Parse a deploy prototxt: ``name``, ``input`` + ``input_dim`` (4 per input) and ``layer`` messages."""
    top = parse_text_format(text)
    unknown = set(top) - {"name", "input", "input_dim", "layer"}
    if unknown:
        raise ValueError(f"unsupported top-level fields {sorted(unknown)}")
    names = _strings(top, "input")
    dims = top.get("input_dim", [])
    if len(dims) != 4 * len(names):
        raise ValueError(f"{len(names)} inputs need {4 * len(names)} input_dim values, got {len(dims)}")
    inputs = {name: tuple(dims[4 * i: 4 * i + 4]) for i, name in enumerate(names)}
    layers = []
    for message in top.get("layer", []):
        unknown = {f for f in message if f not in ("name", "type", "bottom", "top") and not f.endswith("_param")}
        if unknown:
            raise ValueError(f"unsupported layer fields {sorted(unknown)}")
        (name,), (kind,) = _strings(message, "name"), _strings(message, "type")
        params = {f: v[0] for f, v in message.items() if f.endswith("_param") and len(v) == 1}
        if len(params) != sum(f.endswith("_param") for f in message):
            raise ValueError(f"layer {name!r} repeats a *_param message")
        layers.append(Layer(name, kind, _strings(message, "bottom"), _strings(message, "top"), params))
    net = Net(_strings(top, "name")[0] if "name" in top else "", inputs, tuple(layers))
    written = list(inputs) + [t for layer in net.layers if not layer.in_place for t in layer.tops]
    if len(written) != len(set(written)):
        raise ValueError("a blob is written by two layers that are not in place: readers() would be ambiguous")
    return net


def load_net(path: str | Path) -> Net:
    """:func:`parse_net` of the file at ``path``."""
    return parse_net(Path(path).read_text(encoding="utf-8"))


# ---- Caffe's arithmetic ------------------------------------------------------------------------------------------


def caffe_pooled_size(size: int, kernel: int, stride: int, pad: int) -> int:
    """Caffe's pooled size: ``ceil((size + 2·pad − kernel) / stride) + 1``, less a last window that would start
    in the padding (``PoolingLayer::Reshape``). PyTorch's default rounds down instead."""
    out = math.ceil((size + 2 * pad - kernel) / stride) + 1
    if pad > 0 and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _window_padding(size: int, kernel: int, stride: int, pad: int) -> tuple[int, int, int]:
    """Output size, and the padding before / after ``size`` that makes every Caffe window a full window."""
    out = caffe_pooled_size(size, kernel, stride, pad)
    return out, pad, (out - 1) * stride + kernel - size - pad  # a negative "after" crops (F.pad allows it)


def caffe_max_pool(x: Tensor, kernel: int, stride: int, pad: int) -> Tensor:
    """Caffe's MAX pooling. Each window is clipped to the image, which is the same as padding with −inf as far
    as the windows reach, then pooling without padding."""
    (out_h, top, bottom), (out_w, left, right) = (_window_padding(n, kernel, stride, pad) for n in x.shape[-2:])
    out = F.max_pool2d(F.pad(x, (left, right, top, bottom), value=-math.inf), kernel, stride)
    assert out.shape[-2:] == (out_h, out_w)
    return out


def caffe_avg_pool(x: Tensor, kernel: int, stride: int, pad: int) -> Tensor:
    """Caffe's AVE pooling: the sum over the window's part inside the image, divided by the size of the window
    clipped to the *padded* image (padding counts, what lies beyond it does not)."""
    (out_h, top, bottom), (out_w, left, right) = (_window_padding(n, kernel, stride, pad) for n in x.shape[-2:])
    sums = F.avg_pool2d(F.pad(x, (left, right, top, bottom)), kernel, stride, divisor_override=1)

    def counts(size: int, out: int) -> Tensor:
        starts = torch.arange(out) * stride - pad
        return (torch.clamp(starts + kernel, max=size + pad) - starts).to(x.dtype)

    return sums / (counts(x.shape[-2], out_h)[:, None] * counts(x.shape[-1], out_w)[None, :])


def interp_weights(size_in: int, size_out: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """The (size_out × size_in) matrix of DeepLab's ``Interp`` along one axis (``caffe_cpu_interp2``).

    Output index i reads input position r = i·(size_in − 1)/(size_out − 1), from floor(r) and the next index
    (the same one at the last), weighted 1 − frac(r) and frac(r). DeepLab computes the ratio in single precision;
    this computes it in the tensor's precision, so a float64 comparison is not limited by a float32 ratio.
    """
    ratio = (size_in - 1) / (size_out - 1) if size_out > 1 else 0.0
    weights = torch.zeros(size_out, size_in, dtype=dtype)
    for i in range(size_out):
        position = ratio * i
        low = int(position)
        high = low + 1 if low < size_in - 1 else low
        weights[i, low] += 1 - (position - low)
        weights[i, high] += position - low
    return weights


# ---- the runner --------------------------------------------------------------------------------------------------

# The *_param fields each supported layer type may carry; any other field is refused.
_FIELDS: dict[str, dict[str, set[str]]] = {
    "Convolution": {"convolution_param": {"num_output", "kernel_size", "stride", "pad", "bias_term"}},
    "BN": {"bn_param": {"frozen"}},
    "ReLU": {},
    "Pooling": {"pooling_param": {"pool", "kernel_size", "stride", "pad"}},
    "Eltwise": {"eltwise_param": {"operation"}},
    "Interp": {},
    "Sigmoid": {},
    "InnerProduct": {"inner_product_param": {"num_output"}},
    "Softmax": {},
}
#: Layer types whose parameters come from a model module.
WEIGHTED: dict[str, type[nn.Module]] = {"Convolution": nn.Conv2d, "BN": nn.BatchNorm2d, "InnerProduct": nn.Linear}


def _check_supported(layer: Layer) -> None:
    if layer.type not in _FIELDS:
        raise NotImplementedError(f"layer {layer.name!r}: type {layer.type!r} is not supported")
    allowed = _FIELDS[layer.type]
    for message, fields in layer.params.items():
        extra = set(fields) - allowed.get(message, set())
        if message not in allowed or extra:
            raise NotImplementedError(f"layer {layer.name!r}: {message} {sorted(extra or fields)} is not supported")


def _expect_same(layer: Layer, in_file: dict[str, object], in_model: dict[str, object]) -> None:
    if in_file != in_model:
        raise AssertionError(f"layer {layer.name!r}: the file has {in_file}, the model's module has {in_model}")


def _convolution(layer: Layer, x: Tensor, conv: nn.Conv2d) -> Tensor:
    kernel = layer.param("convolution_param", "kernel_size")
    stride = layer.param("convolution_param", "stride", 1)
    pad = layer.param("convolution_param", "pad", 0)
    _expect_same(
        layer,
        dict(in_channels=x.shape[1], out_channels=layer.param("convolution_param", "num_output"),
             kernel_size=(kernel, kernel), stride=(stride, stride), padding=(pad, pad), dilation=(1, 1), groups=1,
             bias=layer.param("convolution_param", "bias_term", True)),
        dict(in_channels=conv.in_channels, out_channels=conv.out_channels, kernel_size=conv.kernel_size,
             stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
             bias=conv.bias is not None),
    )
    return F.conv2d(x, conv.weight, conv.bias, stride=stride, padding=pad)


def _batch_norm(layer: Layer, x: Tensor, bn: nn.BatchNorm2d) -> Tensor:
    # The authors' "BN" layer normalises with stored statistics when frozen, then applies its scale and shift.
    _expect_same(
        layer,
        dict(frozen=True, channels=x.shape[1], affine=True, running_stats=True),
        dict(frozen=layer.param("bn_param", "frozen", False), channels=bn.num_features, affine=bn.affine,
             running_stats=bn.track_running_stats),
    )
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, training=False, eps=bn.eps)


def _pooling(layer: Layer, x: Tensor) -> Tensor:
    kind = layer.param("pooling_param", "pool", "MAX")  # Caffe's default is MAX
    kernel = layer.param("pooling_param", "kernel_size")
    stride = layer.param("pooling_param", "stride", 1)
    pad = layer.param("pooling_param", "pad", 0)
    if kind == "MAX":
        return caffe_max_pool(x, kernel, stride, pad)
    if kind == "AVE":
        return caffe_avg_pool(x, kernel, stride, pad)
    raise NotImplementedError(f"layer {layer.name!r}: pool {kind} is not supported")


def _eltwise(layer: Layer, *xs: Tensor) -> Tensor:
    operation = layer.param("eltwise_param", "operation", "SUM")  # Caffe's default is SUM
    if operation == "SUM":
        return reduce(torch.add, xs)
    if operation == "PROD":
        return reduce(torch.mul, xs)
    raise NotImplementedError(f"layer {layer.name!r}: operation {operation} is not supported")


def _interp(layer: Layer, x: Tensor, like: Tensor) -> Tensor:
    # With two bottoms, Interp resizes the first to the spatial size of the second.
    rows = interp_weights(x.shape[-2], like.shape[-2], x.dtype)
    cols = interp_weights(x.shape[-1], like.shape[-1], x.dtype)
    return rows @ x @ cols.T


def _inner_product(layer: Layer, x: Tensor, fc: nn.Linear) -> Tensor:
    x = torch.flatten(x, 1)
    _expect_same(
        layer,
        dict(in_features=x.shape[1], out_features=layer.param("inner_product_param", "num_output"), bias=True),
        dict(in_features=fc.in_features, out_features=fc.out_features, bias=fc.bias is not None),
    )
    return F.linear(x, fc.weight, fc.bias)


_OPS: dict[str, Callable[..., Tensor]] = {
    "Pooling": _pooling,
    "Eltwise": _eltwise,
    "Interp": _interp,
    "ReLU": lambda layer, x: F.relu(x),
    "Sigmoid": lambda layer, x: torch.sigmoid(x),
    "Softmax": lambda layer, x: F.softmax(x, dim=1),  # Caffe's default axis is 1, the channels
}
_WEIGHTED_OPS: dict[str, Callable[..., Tensor]] = {
    "Convolution": _convolution,
    "BN": _batch_norm,
    "InnerProduct": _inner_product,
}


def run(
    net: Net,
    inputs: Mapping[str, Tensor],
    modules: Mapping[str, nn.Module],
    observe: Callable[[Layer, Tensor], None] | None = None,
) -> dict[str, Tensor]:
    """Execute ``net`` layer by layer in file order and return the blobs no layer reads (the net's outputs).

    ``modules`` maps the name of every Convolution, BN and InnerProduct layer to the module whose parameters it
    uses; the layer's own geometry is asserted against that module. ``observe(layer, output)`` is called after
    every layer. Blobs are dropped after their last reader, so memory stays near that of a plain forward pass.
    """
    for layer in net.layers:
        _check_supported(layer)
        if len(layer.tops) != 1:
            raise NotImplementedError(f"layer {layer.name!r} has {len(layer.tops)} tops")
    if set(inputs) != set(net.inputs):
        raise ValueError(f"the net's inputs are {sorted(net.inputs)}, got {sorted(inputs)}")
    last_read = {blob: i for i, layer in enumerate(net.layers) for blob in layer.bottoms}
    blobs: dict[str, Tensor] = dict(inputs)
    for i, layer in enumerate(net.layers):
        missing = [b for b in layer.bottoms if b not in blobs]
        if missing:
            raise ValueError(f"layer {layer.name!r} reads {missing} before any layer writes it")
        xs = [blobs[b] for b in layer.bottoms]
        if layer.type in _WEIGHTED_OPS:
            module = modules[layer.name]
            if not isinstance(module, WEIGHTED[layer.type]):
                raise AssertionError(f"layer {layer.name!r} ({layer.type}) is mapped to a {type(module).__name__}")
            out = _WEIGHTED_OPS[layer.type](layer, *xs, module)
        else:
            out = _OPS[layer.type](layer, *xs)
        for blob in layer.bottoms:
            if last_read[blob] == i:
                del blobs[blob]
        blobs[layer.tops[0]] = out
        if observe is not None:
            observe(layer, out)
    return blobs

