"""Render a lecture's scene (:mod:`resattn.lecture`): the pictures, colour scales, table and computed sentences
one scene shows, from shipped checkpoints and photos, without Streamlit.

The explorer's Lecture page and ``scripts/export_lecture.py`` draw the same :class:`Rendered` scene, so the
projector, every student's laptop and the offline copy show the same numbers; every number is computed here or
read from a checkpoint (its recorded final-epoch accuracy), never typed into the lecture.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from . import images, maps, paper
from . import parts as P
from .attention import ATTENTIONS, FIXED_BY_ACTIVATION
from .checkpoint import file_hash, load_checkpoint
from .confidence import calibration_for
from .inspect import inspect
from .lecture import LectureError, Scene
from .preprocess import Preprocessing

__all__ = ["SIDE", "Panel", "Rendered", "Resources", "render_scene"]

SIDE = 320  # pictures are drawn at this side
METHOD_NAMES = {"gradcam": "Grad-CAM", "guided_gradcam": "Guided Grad-CAM",
                "integrated_gradients": "Integrated Gradients", "occlusion": "Occlusion"}


@dataclass
class Panel:
    """One picture of a scene; ``scale`` and ``cmap`` are its colorbar (None for a photo)."""

    title: str
    picture: np.ndarray  # H×W×3 uint8
    scale: maps.Scale | None = None
    cmap: str | None = None
    caption: str = ""


@dataclass
class Rendered:
    """What a scene shows: panels, an optional table, computed sentences and how long it took."""

    scene: Scene
    panels: list[Panel] = field(default_factory=list)
    table: list[dict[str, Any]] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)
    seconds: float = 0.0


class Resources:
    """Where a lecture's models and photos come from: checkpoint files by stem in ``checkpoints``; photos from the
    gallery (the first label starting with the name) or from ``folder`` (the lecture's own)."""

    def __init__(self, checkpoints: str | Path, folder: str | Path | None = None) -> None:
        self.checkpoints = Path(checkpoints)
        self.folder = Path(folder) if folder else None

    def model(self, where: str, stem: str) -> tuple[torch.nn.Module, dict[str, Any], Path]:
        path = self.checkpoints / f"{stem}.safetensors"
        if not path.is_file():
            offered = ", ".join(sorted(p.stem for p in self.checkpoints.glob("*.safetensors"))) or "none"
            raise LectureError(f"{where}: no checkpoint {stem!r} in {self.checkpoints.name}/; there are: {offered}")
        model, meta = _load(str(path), path.stat().st_mtime_ns)
        return model, meta, path

    def image(self, where: str, name: str) -> tuple[Image.Image, str]:
        if self.folder is not None and (self.folder / name).is_file():
            return images.load_image((self.folder / name).read_bytes(), name), name
        for item in images.gallery():
            if item.label.lower().startswith(name.lower()):
                return images.load_image(item.read(), item.label), f"{item.label} ({item.source})"
        offered = ", ".join(repr(i.label) for i in images.gallery()) or "none"
        raise LectureError(f"{where}: no photo {name!r} beside the lecture or in the gallery ({offered})")


@lru_cache(maxsize=16)
def _load(path: str, mtime: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    model, meta = load_checkpoint(path)
    return model.eval(), meta


def _where(scene: Scene) -> str:
    return f"scene {scene.number} ({scene.title!r})"


def _picture(image: Image.Image, meta: dict[str, Any]) -> np.ndarray:
    """The region the model sees, at SIDE×SIDE."""
    region = Preprocessing.from_meta(meta).view(image)
    return np.asarray(region.convert("RGB").resize((SIDE, SIDE), Image.Resampling.BILINEAR))


def _prediction(trace: Any, meta: dict[str, Any]) -> tuple[int, str]:
    probs = torch.softmax(trace.logits.float(), dim=1)[0]
    top = int(probs.argmax())
    classes = list(meta.get("classes") or [])
    name = classes[top] if top < len(classes) else f"class {top}"
    return top, (f"The model predicts **{name}** (p = {float(probs[top]):.2f}); it names only its "
                 f"{len(classes)} classes.")


def _map_panel(title: str, values: np.ndarray, picture: np.ndarray, quantity: str, contrast: str,
               cmap: str | None = None) -> Panel:
    drawn = maps.heat(values, quantity, contrast, cmap, picture.shape[:2], over=picture)  # type: ignore[arg-type]
    return Panel(title, drawn.picture, drawn.scale, drawn.cmap, maps.describe(values).summary())


def _mask_quantity(meta: dict[str, Any]) -> str:
    return "channel_mask" if meta.get("overrides", {}).get("attention") == "channel" else "mask"


@dataclass
class _Seen:
    """The scene's photo through the scene's model: what every model-and-image scene starts from."""

    model: torch.nn.Module
    meta: dict[str, Any]
    x: torch.Tensor
    trace: Any
    record: Any  # the scene's module
    picture: np.ndarray
    top: int


def _see(scene: Scene, res: Resources, out: Rendered) -> _Seen:
    """Run the scene's photo through its model; add the photo panel and the prediction sentence to ``out``."""
    view, where = scene.view, _where(scene)
    model, meta, _ = res.model(where, view.get("model"))
    image, label = res.image(where, view.get("image"))
    x = Preprocessing.from_meta(meta)(image)
    trace = inspect(model, x)
    record = _record(trace, where, view.get("stage"), view.get("module"))
    picture = _picture(image, meta)
    top, sentence = _prediction(trace, meta)
    out.facts.append(sentence)
    out.panels.append(Panel(f"{label}: what the model sees", picture))
    return _Seen(model, meta, x, trace, record, picture, top)


def _explore(scene: Scene, res: Resources, out: Rendered) -> None:
    view = scene.view
    seen = _see(scene, res, out)
    meta, record, picture = seen.meta, seen.record, seen.picture
    mask = record.mask[0].numpy()
    if view.get("reduction") == "parts":
        found = P.mask_parts(mask, None, attention=meta.get("overrides", {}).get("attention"))
        part_scale = maps.Scale(0.0, 1.0, False, "fixed", "part weight: 0 to the part's own maximum (1)")
        for j in range(min(3, found.k)):
            heat = maps.colorize(maps.upsample(found.maps[j], picture.shape[:2]), 0.0, 1.0, P.PART_CMAP)
            out.panels.append(Panel(f"part {j + 1}: {found.energy[j]:.0%} of the energy",
                                    maps.overlay(picture, heat, 0.65), part_scale, P.PART_CMAP,
                                    f"channels {', '.join(map(str, found.top_channels(j, 5)))}"))
        out.facts.append(f"Stage {record.stage}, module {record.index}: {found.k} parts explain "
                         f"{found.explained:.0%} of the mask's spatial variation ({mask.shape[0]} channels).")
        return
    how = view.get("reduction")
    views = maps.module_views(mask, record.trunk[0].numpy(), record.output[0].numpy(), picture, how=how,
                              channel=min(view.get("channel"), mask.shape[0] - 1), k=view.get("k"),
                              mask_scale=_mask_quantity(meta), contrast=view.get("contrast"), alpha=0.6)  # type: ignore[arg-type]
    what = {"mean": "channel mean", "max": "channel max", "channel": f"channel {view.get('channel')}",
            "topk": f"top-{view.get('k')} channels"}[how]
    for v in views.values():
        out.panels.append(Panel(f"{v.name}, {what}", v.overlay, v.scale, v.cmap, v.stats.summary()))
    out.facts.append(f"Stage {record.stage}, module {record.index} ({mask.shape[0]} channels at "
                     f"{mask.shape[1]}×{mask.shape[2]}); mean of M {float(mask.mean()):.3f}, "
                     f"{float((mask > 0.5).mean()):.0%} of its entries above 0.5.")


def _record(trace: Any, where: str, stage: int, index: int) -> Any:
    try:
        return trace.module(stage, index)
    except KeyError:
        raise LectureError(f"{where}: the model has no attention module {index} in stage {stage}") from None


def _attribution(scene: Scene, res: Resources, out: Rendered) -> None:
    from .attribution import agreement, attribute

    view = scene.view
    seen = _see(scene, res, out)
    record, picture = seen.record, seen.picture
    mask = maps.reduce_channels(record.mask[0].numpy(), "mean")
    out.panels.append(_map_panel(f"M, stage {record.stage} module {record.index} (channel mean)", mask, picture,
                                 _mask_quantity(seen.meta), view.get("contrast")))
    method = view.get("method")
    amap = attribute(seen.model, seen.x, seen.top, method, stage=view.get("stage"))
    out.panels.append(_map_panel(f"{METHOD_NAMES[method]} for the predicted class", amap, picture, "attribution",
                                 view.get("contrast")))
    up = maps.upsample(mask, amap.shape)
    scores = agreement(up, amap)
    out.facts.append(f"Agreement of the mask with {METHOD_NAMES[method]}: Spearman ρ {scores['spearman']:.2f}, "
                     f"top-20% IoU {scores['top_iou']:.2f}. The mask is the same for every class; the attribution "
                     "is for one.")


def _outcomes(res: Resources, stems: list[str]) -> dict[str, paper.Outcomes]:
    """The shipped files' recorded per-image test results (``confidence.json``), for McNemar's test."""
    found = {}
    for stem in stems:
        path = res.checkpoints / f"{stem}.safetensors"
        entry = calibration_for(path, file_hash(path)) if path.is_file() else None
        outcomes = None if entry is None else entry.outcomes()
        if outcomes is not None:
            found[stem] = outcomes
    return found


def _compare(scene: Scene, res: Resources, out: Rendered) -> None:
    view, where = scene.view, _where(scene)
    show = view.get("show") or "masks"
    if show == "tables":
        stems = view.get("models") or sorted(p.stem for p in res.checkpoints.glob("*.safetensors"))
        metas = {stem: res.model(where, stem)[1] for stem in stems}
        out.table = [{k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()}
                     for row in paper.summary_rows(metas)]
        for row in paper.contrasts(metas, _outcomes(res, stems)):
            photos = " (photos)" if row.contrast.paper_gap() is None else ""
            out.facts.append(f"{row.contrast.table}, {row.contrast.question}{photos}: error gap {row.gap:.2f} points "
                             f"here; {row.contrast.words()} ({row.verdict()}).")
        return
    image, label = res.image(where, view.get("image"))
    stage = view.get("stage")
    kinds = set()  # the attention types shown, for what their activations fix
    for stem in view.get("models"):
        model, meta, _ = res.model(where, stem)
        kinds.add(paper.variant(meta)[1])
        trace = inspect(model, Preprocessing.from_meta(meta)(image))
        if show == "fig4":
            out.table.append({"model": stem, **{f"stage {s}": round(maps.mean_abs_response(t[0]), 3)
                                                for s, t in enumerate(trace.stage_outputs, start=1)}})
            continue
        mask = maps.reduce_channels(_record(trace, where, stage, 1).mask[0].numpy(), "mean")
        o = meta.get("overrides", {})
        out.panels.append(_map_panel(f"{stem}: {o.get('attention', 'mixed')} {str(o.get('learning', 'arl')).upper()}",
                                     mask, _picture(image, meta), _mask_quantity(meta), "stretch"))
    if show == "fig4":
        out.facts.append(f"Mean |output| of each stage on {label}: the quantity of the paper's Fig. 4, on one image.")
    else:
        out.facts.append(f"Stage {stage}, module 1, channel mean, each stretched to its own range: compare shapes, "
                         "not values.")
        out.facts.extend(f"Whatever the model learned, {FIXED_BY_ACTIVATION[k]}." for k in ATTENTIONS
                         if k in kinds and k in FIXED_BY_ACTIVATION)


def _learn(scene: Scene, res: Resources, out: Rendered) -> None:
    view = scene.view
    if view.get("show") == "formulas" or "model" not in view.fields:
        return
    seen = _see(scene, res, out)
    meta, record, picture = seen.meta, seen.record, seen.picture
    path = [(name, t[0].numpy()) for name, t in record.mask_path] + [("mask M", record.mask[0].numpy())]
    for name, tensor in path:
        quantity = _mask_quantity(meta) if name == "mask M" else "feature"
        panel = _map_panel(f"{name}: {tensor.shape[1]}×{tensor.shape[2]}", maps.reduce_channels(tensor, "mean"),
                           picture, quantity, "stretch")
        out.panels.append(panel)
    out.facts.append(f"The mask branch of stage {record.stage}, module {record.index}: down by max-pooling, "
                     "up by bilinear upsampling with skip connections, then the activation.")


RENDERERS = {"explore": _explore, "attribution": _attribution, "compare": _compare, "learn": _learn}


def render_scene(scene: Scene, resources: Resources) -> Rendered:
    """Compute everything ``scene`` shows; raises :class:`LectureError` naming the scene when a model or photo
    it names is missing."""
    start = time.perf_counter()
    out = Rendered(scene)
    renderer = RENDERERS.get(scene.view.page)
    if renderer is not None:
        renderer(scene, resources, out)
    out.seconds = time.perf_counter() - start
    return out
