"""When a prediction is unsure: a threshold on the top-1 probability, measured on the model's own test split.

A model names only its own classes (the photo model: Imagenette's ten), so a photo of anything else still gets one
of them, often with a low probability. The rule: a prediction is *unsure* when its top-1 probability is below the
threshold under which :data:`FLAGGED` (5%) of the model's own test images fall. So on the data it was trained for,
at most one image in twenty is flagged; a photo of something else is flagged when the model spreads its belief as
it rarely does on its own classes. It is a heuristic, not a detector of unknown classes: a confident wrong answer
on a foreign photo is not flagged.

Thresholds of the shipped checkpoints live in ``checkpoints/confidence.json``, each with the checkpoint's file hash
(an entry for another file is ignored) and the command that measured it
(``python scripts/calibrate_confidence.py --checkpoint C --data D``). The same pass over the test split records
which images the checkpoint gets right (:meth:`Calibration.correct_images`), so the explorer can compare two
checkpoints image by image (McNemar's test, :func:`resattn.paper.paired_comparison`) without the data.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import paper

__all__ = ["FLAGGED", "Calibration", "threshold_for", "load_calibrations", "save_calibration", "calibration_for",
           "labels_digest", "pack_correct"]

#: The share of the model's own test images a threshold may flag.
FLAGGED = 0.05
FILE_NAME = "confidence.json"


@dataclass(frozen=True)
class Calibration:
    """A model's unsure-prediction threshold and how it was measured."""

    checkpoint: str  # file name
    file_hash: str  # resattn.file_hash of that file: an entry for another file is never used
    threshold: float  # top-1 probability below which a prediction is unsure
    flagged: float  # the share of the test images below it (at most FLAGGED)
    images: int  # test images measured
    dataset: str  # which split: e.g. "imagenette-224 val (3,925 images)"
    command: str  # the command that measured it
    labels_sha256: str = ""  # labels_digest of the split's labels in order: which images, in which order
    correct: str = ""  # pack_correct of which of those images the checkpoint gets right ("" if not recorded)

    def unsure(self, top_probability: float) -> bool:
        """True when a prediction with this top-1 probability is flagged as unsure."""
        return top_probability < self.threshold

    def correct_images(self) -> np.ndarray | None:
        """One boolean per test image, in the split's order: whether the checkpoint's top-1 is right (``None``
        when this entry has no per-image record, or a record of the wrong length)."""
        if not self.correct or not self.labels_sha256:
            return None
        try:
            packed = base64.b64decode(self.correct, validate=True)
        except ValueError:  # binascii.Error: not base64
            return None
        if len(packed) != (self.images + 7) // 8:
            return None
        return np.unpackbits(np.frombuffer(packed, np.uint8), count=self.images).astype(bool)

    def outcomes(self) -> paper.Outcomes | None:
        """The per-image record as ``paper.Outcomes`` (the split's digest and the booleans), for McNemar's test
        between two checkpoints; ``None`` when there is no usable record."""
        correct = self.correct_images()
        return None if correct is None else paper.Outcomes(self.labels_sha256, correct)


def labels_digest(labels: np.ndarray) -> str:
    """A digest of a split's labels in order (int64): equal for two evaluations of the same images in one order."""
    return hashlib.sha256(np.ascontiguousarray(labels, dtype=np.int64).tobytes()).hexdigest()


def pack_correct(correct: np.ndarray) -> str:
    """Per-image booleans as base64 of their bits (10,000 images: 1,668 characters)."""
    return base64.b64encode(np.packbits(np.asarray(correct, bool))).decode("ascii")


def threshold_for(top_probabilities: np.ndarray, flagged: float = FLAGGED) -> tuple[float, float]:
    """The highest threshold that flags at most ``flagged`` of the images (those with a top-1 probability strictly
    below it), and the share it flags."""
    values = np.sort(np.asarray(top_probabilities, dtype=np.float64).ravel())
    if values.size == 0:
        raise ValueError("no probabilities to calibrate on")
    if not 0 <= flagged < 1:
        raise ValueError(f"flagged must be in [0, 1), got {flagged}")
    threshold = float(values[int(np.floor(flagged * values.size))])
    return threshold, float(np.mean(values < threshold))


def load_calibrations(path: str | os.PathLike[str]) -> dict[str, Calibration]:
    """The calibrations in a ``confidence.json`` by checkpoint file name ({} when the file is missing)."""
    path = Path(path)
    if not path.is_file():
        return {}
    raw = json.loads(path.read_text())
    return {name: Calibration(**entry) for name, entry in raw.items()}


def save_calibration(path: str | os.PathLike[str], calibration: Calibration) -> None:
    """Add or replace one checkpoint's entry, keeping the others (sorted, so the file diffs cleanly)."""
    path = Path(path)
    entries = {name: asdict(c) for name, c in load_calibrations(path).items()}
    entries[calibration.checkpoint] = asdict(calibration)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(dict(sorted(entries.items())), indent=1) + "\n")
    os.replace(tmp, path)


def calibration_for(checkpoint: str | os.PathLike[str] | None, file_hash: str | None,
                    folder: str | os.PathLike[str] | None = None) -> Calibration | None:
    """The calibration of this checkpoint file, if one was measured for exactly this file."""
    if checkpoint is None or file_hash is None:
        return None
    name = Path(checkpoint).name
    found = load_calibrations(Path(folder or Path(checkpoint).parent) / FILE_NAME).get(name)
    return found if found is not None and found.file_hash == file_hash else None
