"""Lectures as files: a sequence of scenes, each naming a view of the explorer and a few sentences to say over it.

A lecture is a TOML file (``app/lectures/NAME.toml``; NAME, the file's stem, names it in URLs)::

    title = "Residual Attention Network (Wang et al., CVPR 2017)"

    [[scene]]
    title = "The attention module"
    text = "Each module splits into a trunk branch T and a soft mask branch M ..."   # Markdown, $formulas$ allowed
    question = "What should H be where M is 0?"                                    # optional, asked of the class
    [scene.view]
    page = "explore"                    # which page the view belongs to (see VIEW_FIELDS)
    model = "attention56_imagenette_mixed_arl"   # a checkpoint's file stem
    image = "china"                     # a gallery photo (first label starting with it) or a file beside the lecture
    stage = 2

Every field is checked when the file is read: an unknown page, field or value raises :class:`LectureError` naming
the scene (number and title) and the field, so a teacher fixes the file before the class, not during it. Which
models and images exist is checked later, by whoever renders the scene (:mod:`resattn.scenes`), with the same
kind of message.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 reads TOML with tomli (a dependency there only)
    import tomli as tomllib

__all__ = [
    "PAGES",
    "VIEW_FIELDS",
    "Lecture",
    "LectureError",
    "Scene",
    "View",
    "find_lectures",
    "load_lecture",
    "parse_lecture",
]

#: What a view may say, per page: field -> allowed values (a tuple), or a type for free values.
_COMMON: dict[str, Any] = {"model": str, "image": str}
VIEW_FIELDS: dict[str, dict[str, Any]] = {
    # the picture and one module's M, T, H (or the mask's parts)
    "explore": {**_COMMON, "stage": (1, 2, 3), "module": int, "reduction": ("mean", "max", "channel", "topk", "parts"),
                "channel": int, "k": int, "contrast": ("fixed", "stretch")},
    # the mask beside an attribution of the predicted class
    "attribution": {**_COMMON, "stage": (1, 2, 3), "module": int,
                    "method": ("gradcam", "guided_gradcam", "integrated_gradients", "occlusion"),
                    "contrast": ("fixed", "stretch")},
    # several models on one image: their masks, or the paper's Fig. 4 quantity, or the results tables
    "compare": {"models": list, "image": str, "stage": (1, 2, 3), "show": ("masks", "fig4", "tables")},
    # the inside of one soft mask: every map of its hourglass path
    "learn": {**_COMMON, "stage": (1, 2, 3), "module": int, "show": ("mask_path", "formulas")},
    # words only (formulas in the text)
    "text": {},
}
PAGES: tuple[str, ...] = tuple(VIEW_FIELDS)
#: What a field means when a scene leaves it out.
DEFAULTS: dict[str, Any] = {"stage": 1, "module": 1, "reduction": "mean", "channel": 0, "k": 8, "contrast": "stretch",
                            "method": "gradcam", "show": None}


class LectureError(ValueError):
    """A lecture file that cannot be used, with the scene and field at fault in the message."""


@dataclass(frozen=True)
class View:
    """What a scene shows: a page and its settings (``fields``, checked against :data:`VIEW_FIELDS`)."""

    page: str
    fields: dict[str, Any] = field(default_factory=dict)

    def get(self, name: str) -> Any:
        """The field's value, or its default (:data:`DEFAULTS`)."""
        return self.fields.get(name, DEFAULTS.get(name))


@dataclass(frozen=True)
class Scene:
    """One step of a lecture: a title, a few sentences (Markdown), an optional question and a view."""

    number: int  # 1-based
    title: str
    text: str
    view: View
    question: str | None = None


@dataclass(frozen=True)
class Lecture:
    """A lecture read from ``path``: its name (the file's stem), title and scenes."""

    name: str
    title: str
    scenes: tuple[Scene, ...]
    path: Path | None = None

    @property
    def folder(self) -> Path | None:
        """Where the lecture's own images live (beside the file)."""
        return self.path.parent if self.path else None


def _where(number: int, title: str | None) -> str:
    return f"scene {number}" + (f" ({title!r})" if title else "")


def _check_value(where: str, name: str, value: Any, allowed: Any) -> Any:
    if isinstance(allowed, tuple):
        if value not in allowed:
            raise LectureError(f"{where}: view field {name!r} is {value!r}; allowed: "
                               + ", ".join(repr(a) for a in allowed))
        return value
    if allowed is int and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise LectureError(f"{where}: view field {name!r} must be a whole number ≥ 0, not {value!r}")
    if allowed is str and (not isinstance(value, str) or not value.strip()):
        raise LectureError(f"{where}: view field {name!r} must be a non-empty text, not {value!r}")
    if allowed is list and (not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value)):
        raise LectureError(f"{where}: view field {name!r} must be a list of checkpoint names, not {value!r}")
    return value


def _view(where: str, raw: Any) -> View:
    if not isinstance(raw, dict):
        raise LectureError(f"{where}: 'view' must be a table ([scene.view]) with at least 'page'")
    page = raw.get("page")
    if page not in VIEW_FIELDS:
        raise LectureError(f"{where}: view field 'page' is {page!r}; allowed: " + ", ".join(map(repr, PAGES)))
    known = VIEW_FIELDS[page]
    fields: dict[str, Any] = {}
    for name, value in raw.items():
        if name == "page":
            continue
        if name not in known:
            raise LectureError(f"{where}: unknown view field {name!r} for page {page!r}; known: "
                               + (", ".join(sorted(known)) or "none"))
        fields[name] = _check_value(where, name, value, known[name])
    pictures = fields.get("show") not in ("tables", "formulas")  # every other view draws the model on a photo
    if pictures and page != "text":
        needed = ("models", "image") if page == "compare" else ("model", "image")
        for name in needed:
            if name not in fields:
                raise LectureError(f"{where}: a {page!r} view needs {name!r} ("
                                   + ("checkpoint names" if name == "models" else "a checkpoint's file stem"
                                      if name == "model" else "a gallery photo or a file beside the lecture") + ")")
    return View(page, fields)


def _scene(number: int, raw: Any) -> Scene:
    if not isinstance(raw, dict):
        raise LectureError(f"scene {number}: must be a table ([[scene]])")
    title = raw.get("title")
    where = _where(number, title if isinstance(title, str) else None)
    unknown = sorted(set(raw) - {"title", "text", "question", "view"})
    if unknown:
        raise LectureError(f"{where}: unknown field {unknown[0]!r}; known: question, text, title, view")
    for name in ("title", "text"):
        if not isinstance(raw.get(name), str) or not raw[name].strip():
            raise LectureError(f"{where}: field {name!r} is missing or empty")
    question = raw.get("question")
    if question is not None and (not isinstance(question, str) or not question.strip()):
        raise LectureError(f"{where}: field 'question' must be a non-empty text when given")
    return Scene(number, raw["title"].strip(), raw["text"].strip(), _view(where, raw.get("view", {"page": "text"})),
                 question.strip() if question else None)


def parse_lecture(text: str, name: str = "lecture", path: Path | None = None) -> Lecture:
    """A lecture from TOML ``text``; raises :class:`LectureError` (with the scene and field) when it is unusable."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise LectureError(f"{name}: not valid TOML: {exc}") from None
    unknown = sorted(set(raw) - {"title", "scene"})
    if unknown:
        raise LectureError(f"{name}: unknown top-level field {unknown[0]!r}; known: scene, title")
    if not isinstance(raw.get("title"), str) or not raw["title"].strip():
        raise LectureError(f"{name}: the lecture needs a 'title'")
    scenes = raw.get("scene")
    if not isinstance(scenes, list) or not scenes:
        raise LectureError(f"{name}: the lecture has no scenes (add [[scene]] tables)")
    return Lecture(name, raw["title"].strip(), tuple(_scene(i, s) for i, s in enumerate(scenes, start=1)), path)


def load_lecture(path: str | Path) -> Lecture:
    """Read and check the lecture file at ``path`` (its stem is the lecture's name)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LectureError(f"cannot read the lecture {path.name}: {exc}") from None
    return parse_lecture(text, path.stem, path)


def find_lectures(folder: str | Path) -> dict[str, Path]:
    """The lecture files in ``folder`` by name (file stem), sorted."""
    folder = Path(folder)
    return {p.stem: p for p in sorted(folder.glob("*.toml"))} if folder.is_dir() else {}
