"""Safe checkpoints: weights in safetensors, metadata as JSON inside the same file.

Loading never unpickles anything, so a checkpoint from anywhere (a download, a colleague, the explorer's
checkpoint folder) cannot run code. Every way a file can be wrong (not safetensors, a pickle, truncated, corrupt
header, missing or foreign metadata, weights that do not fit the named model) raises :class:`CheckpointError` with
a message a user can act on.

Every checkpoint records ``arch_revision``, the revision of the network code it was trained under
(:data:`resattn.networks.ARCH_REVISION`). A checkpoint without it predates the record and is revision 1, whose
max-pools were ``MaxPool2d(3, 2, padding=1)``: it is rebuilt with that pooling (``pooling="pad1"``), so it computes
what it was trained to compute. A checkpoint from a newer revision is refused: this code cannot build it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from ._version import __version__
from .networks import ARCH_REVISION

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "read_meta", "build_overrides", "file_hash", "META_KEY"]

META_KEY = "resattn"
FORMAT_VERSION = 1
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


class CheckpointError(ValueError):
    """A checkpoint file cannot be used; the message says why and what to do."""


def save_checkpoint(path: str | os.PathLike[str], model: nn.Module, meta: dict[str, Any], half: bool = False) -> None:
    """Write ``model``'s weights and ``meta`` to a ``.safetensors`` file, atomically.

    ``model`` must come from :func:`resattn.create_model` (its name and overrides are stored so that
    :func:`load_checkpoint` can rebuild it). ``meta`` should hold ``classes``, ``input_size``, ``mean``, ``std``,
    ``dataset``, ``metrics`` and ``recipe``; the model name, overrides and package version are added here.
    ``half=True`` stores floating-point tensors in float16 (half the file); loading always returns a float32 model.
    """
    spec = getattr(model, "resattn_spec", None)
    if spec is None:
        raise CheckpointError("model was not built by resattn.create_model, so it cannot be rebuilt on load")
    full = {**meta, "model": spec["name"], "overrides": spec["overrides"], "version": __version__, "format": FORMAT_VERSION,
            "arch_revision": ARCH_REVISION, "storage": "float16" if half else "float32"}
    try:
        text = json.dumps(full, sort_keys=True)
    except TypeError as exc:
        raise CheckpointError(f"meta must be JSON-serialisable: {exc}") from exc
    state = {k: v.detach().to("cpu").contiguous() for k, v in _unwrap(model).state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    data = st_save(state, metadata={META_KEY: text})
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel or torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _read_bytes(source: str | os.PathLike[str] | bytes) -> tuple[bytes, str]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), "uploaded file"
    path = Path(source)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    return path.read_bytes(), str(path)


def _looks_like_pickle(data: bytes) -> bool:
    """torch.save writes a zip ("PK"); a bare pickle starts with the PROTO opcode 0x80 (protocol 2+)."""
    return data[:2] == b"PK" or data[:1] == b"\x80"


def _parse_meta(data: bytes, where: str) -> dict[str, Any]:
    if len(data) < 8:
        raise CheckpointError(f"{where} is empty or truncated ({len(data)} bytes); it is not a safetensors file")
    (header_len,) = struct.unpack("<Q", data[:8])
    plausible = header_len <= _MAX_HEADER and data[8:9] == b"{"
    if not plausible and _looks_like_pickle(data):
        raise CheckpointError(
            f"{where} is a pickle or torch.save archive. resattn only loads .safetensors checkpoints, because "
            "unpickling a file can run arbitrary code. Convert trusted weights with resattn.save_checkpoint."
        )
    if not plausible or 8 + header_len > len(data):
        raise CheckpointError(f"{where} is not a safetensors file, or it is truncated (header length {header_len})")
    try:
        header = json.loads(data[8 : 8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{where} has a corrupt safetensors header: {exc}") from exc
    text = (header.get("__metadata__") or {}).get(META_KEY) if isinstance(header, dict) else None
    if not text:
        raise CheckpointError(
            f"{where} is a safetensors file but not a resattn checkpoint (no '{META_KEY}' metadata); "
            "save it with resattn.save_checkpoint"
        )
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{where} has corrupt resattn metadata: {exc}") from exc
    if not isinstance(meta, dict) or "model" not in meta:
        raise CheckpointError(f"{where} has resattn metadata without a model name")
    return meta


def read_meta(source: str | os.PathLike[str] | bytes) -> dict[str, Any]:
    """The metadata of a checkpoint without loading its weights (reads only the header of a file)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _parse_meta(bytes(source), "uploaded file")
    path = Path(source)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) == 8:
            (n,) = struct.unpack("<Q", head)
            if n <= _MAX_HEADER and 8 + n <= size:
                head += fh.read(n)
    return _parse_meta(head, str(path))


def load_checkpoint(source: str | os.PathLike[str] | bytes, map_location: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint names, load its weights, and return ``(model, meta)`` in eval mode.

    ``source`` is a path or the file's bytes (an upload). Raises :class:`CheckpointError` for any bad file.
    """
    from .registry import create_model, list_models

    data, where = _read_bytes(source)
    meta = _parse_meta(data, where)
    if meta["model"] not in list_models():
        raise CheckpointError(f"{where} names model {meta['model']!r}, which this resattn does not know")
    try:
        state = st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{where} is corrupt or truncated: {exc}") from exc
    overrides = build_overrides(meta, where)
    try:
        with torch.device("meta"):  # the network the metadata describes, with no memory behind its tensors
            skeleton = create_model(meta["model"], **overrides)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where} has overrides this resattn cannot build: {exc}") from exc
    _check_shapes(skeleton, state, meta["model"], where)
    model = create_model(meta["model"], **overrides)  # now as large as the file's own weights, no larger
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:3]
        raise CheckpointError(f"{where}: weights do not match model {meta['model']}: {' '.join(first)}") from exc
    model.to(map_location).eval()
    return model, meta


def _check_shapes(skeleton: nn.Module, state: dict[str, Any], name: str, where: str) -> None:
    """:class:`CheckpointError` unless the file holds every tensor of ``skeleton`` (built on the meta device) in
    its shape: metadata that describes a larger network than the file's weights (``width_mult: 500``) is refused
    before that network is allocated."""
    wanted = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    held = {k: tuple(v.shape) for k, v in state.items()}
    if wanted != held:
        wrong = sorted(set(wanted) ^ set(held)) or sorted(k for k in wanted if wanted[k] != held[k])
        size = sum(math.prod(s) for s in wanted.values())
        raise CheckpointError(f"{where}: weights do not match model {name}: its metadata describes a network of "
                              f"{size:,} values, the file holds {sum(math.prod(s) for s in held.values()):,} "
                              f"(first difference: {wrong[0]})")


def build_overrides(meta: dict[str, Any], where: str = "checkpoint") -> dict[str, Any]:
    """The ``create_model`` overrides that rebuild the network a checkpoint was trained as.

    Revision-1 checkpoints (no ``arch_revision``) of attention networks get ``pooling="pad1"``; a revision newer
    than this code's is refused with :class:`CheckpointError`.
    """
    revision = meta.get("arch_revision", 1)
    if not isinstance(revision, int) or isinstance(revision, bool) or revision < 1:
        raise CheckpointError(f"{where} has an invalid architecture revision {revision!r}")
    if revision > ARCH_REVISION:
        raise CheckpointError(
            f"{where} was written for architecture revision {revision}, but this resattn ({__version__}) only builds "
            f"revisions 1 to {ARCH_REVISION}: the network it describes computes something this version cannot. "
            "Upgrade resattn to load it."
        )
    overrides = dict(meta.get("overrides") or {})
    if revision < 2 and str(meta.get("model", "")).startswith("attention"):
        # revision 1 pooled with MaxPool2d(3, 2, padding=1); build exactly that, not the official pooling
        overrides.setdefault("pooling", "pad1")
    return overrides


def file_hash(source: str | os.PathLike[str] | bytes) -> str:
    """SHA-256 of a file's content (the explorer keys cached models by it)."""
    digest = hashlib.sha256()
    if isinstance(source, (bytes, bytearray, memoryview)):
        digest.update(source)
    else:
        with open(source, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()

