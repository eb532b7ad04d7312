"""A job's trainer options and how its trainer is run: the Train page's presets (:func:`fine_tune_options`),
checking and completing submitted options, the ARL/NAL pair, a job's label, and the trainer's command line and
environment.

Device: CUDA when ``torch.cuda.is_available()`` (the trainer's bf16 / channels_last path), through
``python -m torch.distributed.run --standalone --nproc_per_node N`` (torchrun) when there are N > 1 GPUs; else
the CPU with ``--threads max(1, cores − 1)`` at niceness 10, leaving a core to the app.

Data: ``--data`` may name a configured dataset (``RESATTN_DATASETS="cifar10=/data/cifar10-jpeg.zip,
imagenette=/data/imagenette-224.zip"``) or any path the trainer accepts; paths are made absolute, since the
trainer runs in the job's folder.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from .config import ENV_DATASETS, ENV_PASSPHRASE, HERE, JobError, configured_datasets

#: Trainer options that name paths: made absolute at submission, since the trainer runs in the job's folder.
PATH_OPTIONS = ("--data", "--init-from", "--cache-dir")
#: Trainer options the job system sets itself.
MANAGED_OPTIONS = ("--out", "--state-dir", "--checkpoint", "--resume", "--progress")


def _option(options: Sequence[str], name: str) -> str | None:
    """The value of ``--name VALUE`` or ``--name=VALUE`` in an option list (the last one wins), else None."""
    value = None
    for i, item in enumerate(options):
        if item == name and i + 1 < len(options):
            value = options[i + 1]
        elif item.startswith(name + "="):
            value = item.split("=", 1)[1]
    return value


def _without(options: Sequence[str], name: str) -> list[str]:
    """``options`` without ``--name VALUE`` / ``--name=VALUE``."""
    out, skip = [], False
    for item in options:
        if skip:
            skip = False
        elif item == name:
            skip = True
        elif not item.startswith(name + "="):
            out.append(item)
    return out


# ---------------------------------------------------------------------------------------------- the trainer


def trainer_command(
    options: Sequence[str], folder: str | os.PathLike[str], device: str = "cpu", nproc: int = 1,
    threads: int | None = None, python: str = sys.executable, checkpoint: str | os.PathLike[str] | None = None,
) -> list[str]:
    """The command a supervisor runs: ``resattn.train`` with the job's options, writing into ``folder`` (the
    checkpoint to ``checkpoint``, default ``folder/model.safetensors``).

    ``device="cuda"`` with ``nproc`` > 1 runs under torchrun (``python -m torch.distributed.run --standalone
    --nproc_per_node N``, the same program as the ``torchrun`` script); a CPU job gets ``--threads``.
    """
    folder = Path(folder)
    extra = ["--out", str(folder), "--state-dir", str(folder / "state"), "--progress", "bar"]
    if checkpoint is not None:
        extra += ["--checkpoint", str(checkpoint)]
    if _option(options, "--device") is None:
        extra += ["--device", device]
    if device == "cpu" and threads and _option(options, "--threads") is None:
        extra += ["--threads", str(threads)]
    train = ["-m", "resattn.train", *options, *extra]
    if device == "cuda" and nproc > 1:
        return [python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *train]
    return [python, *train]


def trainer_env(device: str, threads: int | None, base: dict[str, str] | None = None) -> dict[str, str]:
    """The trainer's environment: ``resattn`` importable from this checkout, one progress line per second in the
    log, unbuffered output, the thread cap on a CPU, and no job-system secrets."""
    env = dict(os.environ if base is None else base)
    env.pop(ENV_PASSPHRASE, None)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE.parents[1]), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env["TQDM_MININTERVAL"] = "1"
    if device == "cpu" and threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


# ---------------------------------------------------------------------------------------------- presets and labels


def fine_tune_options(
    base: str | os.PathLike[str] | None,
    data: str | None,
    *,
    train_only: str = "stage3",
    epochs: float = 1.0,
    lr: float | None = 0.05,
    classes: Sequence[str] | None = None,
    label_noise: float = 0.0,
    batch_size: int | None = None,
    train_limit: int | None = None,
    test_limit: int | None = None,
    probe: int = 4,
    seed: int = 0,
    extra: Sequence[str] = (),
) -> list[str]:
    """Trainer options for the presets of the Train page: fine-tune ``base`` (``--init-from``) training only
    ``train_only`` (``stage3``: the last stage and the classifier; ``all``; ``head``), on a subset of
    ``classes``, with label noise at ``label_noise`` (the paper's Table 5 protocol), writing the masks of
    ``probe`` fixed test images after every epoch."""
    options: list[str] = []
    if base is not None:
        options += ["--init-from", str(base)]
    if data is not None:
        options += ["--data", str(data)]
    options += ["--train-only", train_only, "--epochs", f"{epochs:g}", "--seed", str(seed), "--probe", str(probe)]
    if lr is not None:
        options += ["--lr", f"{lr:g}"]
    if classes:
        options += ["--classes", ",".join(classes)]
    if label_noise:
        options += ["--label-noise", f"{label_noise:g}"]
    for name, value in (("--batch-size", batch_size), ("--train-limit", train_limit), ("--test-limit", test_limit)):
        if value is not None:  # a 0 is passed on (and refused at submit), not dropped for a default
            options += [name, str(value)]
    return options + list(extra)


def safe_file_name(name: str, default: str = "upload.zip") -> str:
    """A file name a user sent (an upload's), reduced to letters, digits, ``._-`` and spaces, at most 80
    characters, without any folder: what is kept of it is safe as a file name and as text on a page."""
    kept = re.sub(r"[^A-Za-z0-9._ -]+", "_", Path(name.replace("\\", "/")).name).strip(" .")
    if len(kept) > 80:
        suffix = Path(kept).suffix[:10]
        kept = kept[: 80 - len(suffix)] + suffix
    return kept or default


def describe_options(options: Sequence[str], upload: str | None = None) -> str:
    """A one-line label for a job: what is trained, from what, on what."""
    parts = []
    base = _option(options, "--init-from")
    parts.append(f"from {Path(base).stem}" if base else f"{_option(options, '--model') or 'attention56_cifar'} "
                 f"from scratch ({(_option(options, '--learning') or 'arl').upper()})")
    trained = _option(options, "--train-only") or "all"
    parts.append({"stage3": "last stage", "head": "classifier only"}.get(trained, "whole network"))
    data = _option(options, "--data") or "cifar10"
    parts.append(f"on uploaded {upload}" if upload else
                 f"on {Path(data).name.removesuffix('.zip') if os.sep in data or data.endswith('.zip') else data}")
    classes = _option(options, "--classes")
    if classes:
        parts.append(f"{len([c for c in classes.split(',') if c.strip()])} classes")
    noise = _option(options, "--label-noise")
    if noise and float(noise) > 0:
        parts.append(f"label noise {float(noise):g}")
    epochs = _option(options, "--epochs")
    if epochs:
        parts.append(f"{float(epochs):g} epoch{'s' if float(epochs) != 1 else ''}")
    return " · ".join(parts)


# ---------------------------------------------------------------------------------------------- the ARL/NAL pair


def counterpart(checkpoint: str | os.PathLike[str], candidates: Sequence[str | os.PathLike[str]]) -> Path | None:
    """The checkpoint among ``candidates`` that matches ``checkpoint`` (same model, dataset and overrides)
    except for ARL vs NAL, or None. The ARL/NAL pair from checkpoints is fine-tuned from both."""
    from ..checkpoint import CheckpointError, read_meta

    meta = read_meta(checkpoint)
    mine = dict(meta.get("overrides") or {})
    learning = mine.pop("learning", "arl")
    for candidate in candidates:
        if Path(candidate).resolve() == Path(checkpoint).resolve():
            continue
        try:
            other = read_meta(candidate)
        except CheckpointError:
            continue
        theirs = dict(other.get("overrides") or {})
        if (other.get("model") == meta.get("model") and other.get("dataset") == meta.get("dataset")
                and theirs.pop("learning", "arl") != learning and theirs == mine):
            return Path(candidate)
    return None


def pair_options(options: Sequence[str], candidates: Sequence[str | os.PathLike[str]] = ()) -> list[list[str]]:
    """[ARL options, NAL options] for an ARL vs NAL pair on the same data, seed and budget: with ``--init-from``
    the given checkpoint and its :func:`counterpart` among ``candidates``; without, ``--learning arl`` / ``nal``
    from scratch. :class:`JobError` if the counterpart is missing."""
    options = _without(options, "--learning")
    base = _option(options, "--init-from")
    if base is None:
        return [options + ["--learning", "arl"], options + ["--learning", "nal"]]
    from ..checkpoint import read_meta

    other = counterpart(base, candidates)
    if other is None:
        raise JobError(f"no checkpoint matches {Path(base).name} with the other attention learning "
                       "(same model, dataset and overrides); the pair needs both")
    pair = {str((read_meta(p).get("overrides") or {}).get("learning", "arl")): p for p in (base, other)}
    return [_without(options, "--init-from") + ["--init-from", str(pair[k])] for k in ("arl", "nal")]


# ---------------------------------------------------------------------------------------------- checking


def check_options(options: Sequence[str]) -> None:
    """:class:`JobError` if ``options`` set one of :data:`MANAGED_OPTIONS` or are not valid ``resattn.train``
    options: refused at submission, not found out by a failed job."""
    for name in MANAGED_OPTIONS:
        if any(o == name or o.startswith(name + "=") for o in options):
            raise JobError(f"{name} is set by the job system (every job writes into its own folder)")
    from ..train import build_parser

    parser = build_parser()

    def refuse(message: str) -> None:
        raise JobError(f"invalid training options: {message}")

    parser.error = refuse  # type: ignore[method-assign]
    parser.parse_args(list(options))


def prepare_options(options: Sequence[str]) -> list[str]:
    """Submitted options made ready to queue: a configured dataset name replaced by its path, checked
    (:func:`check_options`), paths made absolute, ``--data`` and ``--init-from`` checked to exist and load."""
    options = list(options)
    if options[:1] == ["--"]:
        options = options[1:]
    data = _option(options, "--data")
    datasets = configured_datasets()
    if data in datasets:
        data = datasets[data]
        options = _without(options, "--data") + ["--data", data]
    check_options(options)
    for name in PATH_OPTIONS:  # the trainer runs in the job's folder: relative paths must not change meaning
        value = _option(options, name)
        if value is not None and value != "cifar10":
            prefix, path = ("cifar10:", value[8:]) if value.startswith("cifar10:") else ("", value)
            options = _without(options, name) + [name, prefix + os.path.abspath(os.path.expanduser(path))]
    data = _option(options, "--data")
    if data is not None and data != "cifar10" and not data.startswith("cifar10:") and not os.path.exists(data):
        known = (f" (configured datasets: {', '.join(datasets)})" if datasets
                 else f" (set {ENV_DATASETS} to name datasets)")
        raise JobError(f"--data {data}: no such dataset file or folder{known}")
    classes = _option(options, "--classes")
    if classes and data is not None and os.path.exists(data):
        _check_classes([c.strip() for c in classes.split(",") if c.strip()], data)
    base = _option(options, "--init-from")
    if base is not None:
        from ..checkpoint import read_meta

        read_meta(base)  # resattn.CheckpointError now, not a failed job later
    return options


def _check_classes(wanted: Sequence[str], data: str) -> None:
    """:class:`JobError` unless every class of ``--classes`` is in the dataset (read from its listing)."""
    from ..data import DataError, class_names, open_split

    try:
        folders = open_split(data, "train").classes
    except DataError as exc:
        raise JobError(f"--data {data}: {exc}") from exc
    known = set(folders) | set(class_names(folders))
    missing = [c for c in wanted if c not in known]
    if missing:
        raise JobError(f"--classes: {', '.join(repr(c) for c in missing)} not in the dataset (classes: "
                       f"{', '.join(class_names(folders))})")
