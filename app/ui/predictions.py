"""What a model can name, and whether its prediction for this image is unsure: shown wherever predictions are.

A model names only its own classes (the photo model: Imagenette's ten); a photo of anything else still gets one of
them. Every page that shows a prediction lists the classes, and flags a prediction whose top-1 probability is below
the model's measured threshold (:mod:`resattn.confidence`: at most 5% of its own test images fall below it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import streamlit as st

from resattn import confidence, paper
from resattn.data import class_names

from . import state

#: More classes than this are summarised (a 1000-class model's list would fill the page).
LISTED = 12


def classes_line(meta: dict[str, Any]) -> str:
    """"This model can name 10 classes: a, b, …" — compact, for under the predictions."""
    names = class_names(list(meta.get("classes") or []))
    if not names:
        return "This model's class names are not recorded in its checkpoint."
    shown = ", ".join(names[:LISTED]) + (f", … ({len(names) - LISTED} more)" if len(names) > LISTED else "")
    return f"This model can name {len(names)} classes, and only these: {shown}."


def calibration(entry: state.ModelEntry) -> confidence.Calibration | None:
    """The entry's measured threshold, for exactly its file (None for random models and unmeasured files)."""
    if entry.path is None or not entry.key.startswith("sha256:"):
        return None
    return confidence.calibration_for(entry.path, entry.key.split(":", 1)[1])


def outcomes(entry: state.ModelEntry) -> paper.Outcomes | None:
    """Which of its test images the entry's file gets right, as measured with its threshold (None if not recorded),
    for McNemar's test between two checkpoints on the Compare page."""
    found = calibration(entry)
    return None if found is None else found.outcomes()


def unsure_text(entry: state.ModelEntry, probs: np.ndarray) -> str | None:
    """The notice for an unsure prediction, or None when the prediction is not flagged (or cannot be judged)."""
    found = calibration(entry)
    top = float(np.max(probs))
    if found is None or not found.unsure(top):
        return None
    return (f"This photo may show none of the classes this model knows. Its top prediction has probability "
            f"{top:.2f}, below {found.threshold:.2f}: fewer than {confidence.FLAGGED:.0%} of the model's own test "
            f"images ({found.dataset}) get a top-1 probability that low.")


def show(entry: state.ModelEntry, meta: dict[str, Any], probs: np.ndarray, container: Any = st) -> bool:
    """The class list and, when the prediction is unsure, the notice; returns whether it was unsure."""
    notice = unsure_text(entry, probs)
    if notice:
        container.warning(notice, icon=":material/help:")
    container.caption(classes_line(meta) + ("" if calibration(entry) or entry.random else
                                            " No unsure-prediction threshold was measured for this file."))
    return notice is not None
