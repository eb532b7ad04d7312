"""HTML that the explorer's pages and the offline lecture share: colorbars as text, pictures and formulas as
embedded PNG, and a lecture as one self-contained document (one ``<section>`` per scene).

A colorbar's numbers are page text (:data:`TICK_PX`), not pixels of a picture, so a narrow column never shrinks
or cuts them: at least 14 px at 1280 px wide, legible on a projector. The offline document references nothing
outside itself (no network, no fonts, no scripts from elsewhere), so it opens from a USB stick.
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Callable
from html import escape
from typing import Any

import numpy as np
from PIL import Image

from .maps import Scale, ticks

__all__ = ["TICK_PX", "colorbar_html", "formula_png", "jpeg_uri", "lecture_html", "markdown_html", "minus", "png_uri",
           "scene_fragment", "scene_html"]

#: Size of the numbers under every map.
TICK_PX = 16


def minus(text: str) -> str:
    """Typographic minus signs for negative numbers (a hyphen reads as a dash from the back of a room)."""
    return re.sub(r"(?<![\w.])-(?=\d)", "−", text)


def colorbar_html(scale: Scale, cmap_name: str, note: str | None = None, under_picture: bool = True) -> str:
    """A colorbar as elements: the gradient, then the low, middle (0 on a diverging scale) and high numbers in
    :data:`TICK_PX` dark text (class ``ra-tick``), then what the scale spans (``note``, default the scale's
    description) and the colormap. ``under_picture``: drawn right under a picture, it is pulled up to it;
    after text (a row of labelled thumbnails) it keeps its distance, so it never covers the last line."""
    from matplotlib import colormaps

    rgb = (colormaps[cmap_name](np.linspace(0, 1, 11))[:, :3] * 255).round().astype(int)
    stops = ", ".join(f"rgb({r},{g},{b}) {10 * i}%" for i, (r, g, b) in enumerate(rgb))
    numbers = "".join(f'<span class="ra-tick">{escape(minus(t))}</span>' for t in ticks(scale))
    margin = "-0.6rem 0 0.2rem 0" if under_picture else "0.4rem 0 0.2rem 0"
    return (f'<div class="ra-colorbar" style="margin:{margin}">'
            f'<div style="height:14px;border:1px solid #444;background:linear-gradient(to right, {stops})"></div>'
            f'<div style="display:flex;justify-content:space-between;font-size:{TICK_PX}px;line-height:1.3;'
            f'font-weight:600;color:#111;font-variant-numeric:tabular-nums">{numbers}</div>'
            f'<div class="ra-scale" style="font-size:15px;line-height:1.3;color:#262730">'
            f'colours: {escape(minus(note or scale.description), quote=False)} ({escape(cmap_name)})</div></div>')


def png_uri(picture: np.ndarray | bytes) -> str:
    """A ``data:`` URI of a picture (H×W×3 uint8, or PNG bytes): embedded, nothing to fetch."""
    if not isinstance(picture, bytes):
        buffer = io.BytesIO()
        Image.fromarray(picture).save(buffer, format="PNG", compress_level=6)
        picture = buffer.getvalue()
    return "data:image/png;base64," + base64.b64encode(picture).decode("ascii")


def jpeg_uri(picture: np.ndarray) -> str:
    """A ``data:`` URI of an H×W×3 uint8 picture as JPEG (quality 95, no chroma subsampling): about a third of
    the PNG's bytes for the lecture's 320-px overlays, for pages sent to a room of students over one network. On
    the shipped lecture's pictures the error is 1.32 of 255 levels per channel on average, 6 at the 99th
    percentile, 18 at most (``scripts/bench_lecture_payload.py``); the colorbars beside them are exact."""
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="JPEG", quality=95, subsampling=0)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def formula_png(tex: str, display: bool = False) -> bytes | None:
    """A formula drawn by matplotlib's mathtext as PNG, or None when mathtext cannot parse it."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import mathtext

    buffer = io.BytesIO()
    try:
        mathtext.math_to_image(f"${tex}$", buffer, dpi=200 if display else 150, format="png")
    except (ValueError, RuntimeError):
        return None
    return buffer.getvalue()


def _formula(tex: str, display: bool) -> str:
    png = formula_png(tex, display)
    if png is None:  # shown as its source, never dropped
        return f'<code class="formula">{escape(tex)}</code>'
    # mathtext draws at 12 pt: scaled to the text's 20 px inline and half as large again on a line of its own
    height = Image.open(io.BytesIO(png)).height / (200 if display else 150) * 72 * (20 / 12) * (1.5 if display else 1)
    tag = f'<img class="formula" alt="{escape(tex)}" src="{png_uri(png)}" style="height:{height:.0f}px">'
    return f'<span class="display">{tag}</span>' if display else tag  # a span: a div would end the paragraph


def markdown_html(text: str) -> str:
    """The little Markdown lecture texts use, as HTML: paragraphs, **bold**, *italic*, `code`, and $inline$ and
    $$display$$ formulas (embedded pictures)."""
    formulas: list[str] = []

    def keep(match: re.Match[str]) -> str:
        display = match.group(0).startswith("$$")
        formulas.append(_formula(match.group(1 if display else 2).strip(), display))
        return f"\x00{len(formulas) - 1}\x00"

    text = re.sub(r"\$\$(.+?)\$\$|\$(.+?)\$", keep, text, flags=re.DOTALL)
    html = escape(text, quote=False)
    html = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html, flags=re.DOTALL)
    html = re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"<em>\1</em>", html, flags=re.DOTALL)
    html = re.sub(r"`([^`]+)`", r"<code>\1</code>", html)
    html = re.sub(r"\x00(\d+)\x00", lambda m: formulas[int(m.group(1))], html)
    return "".join(f"<p>{p.strip()}</p>" for p in re.split(r"\n\s*\n", html) if p.strip())


STYLE = """
body { font-family: system-ui, sans-serif; margin: 0; color: #111; background: #fff; }
section { min-height: 100vh; box-sizing: border-box; padding: 2.5rem 4rem; border-bottom: 1px solid #ccc; }
h1 { font-size: 2.2rem; margin: 0.3rem 0 1rem 0; } .where { font-size: 1.1rem; color: #333; }
p { font-size: 1.25rem; line-height: 1.5; max-width: 70rem; } .display { display: block; margin: 0.6rem 0; }
img.formula { vertical-align: middle; } .question { background: #e8f0fe; padding: 0.8rem 1rem; font-size: 1.2rem; }
.panels { display: grid; grid-template-columns: repeat(4, minmax(0, 1fr)); gap: 1.2rem; margin: 1rem 0; }
.panel img { width: 100%; image-rendering: auto; } .panel .title { font-weight: 600; margin-bottom: 0.3rem; }
.ra-colorbar { margin: 0 !important; } .caption { font-size: 15px; color: #262730; }
table { border-collapse: collapse; font-size: 1.05rem; } td, th { border: 1px solid #bbb; padding: 0.3rem 0.6rem; }
ul.facts li { font-size: 1.15rem; margin: 0.3rem 0; }
"""
#: A scene inside another page (a lecture follower's explorer page, in the shadow root of its own element):
#: the page's width and font, no full-screen sections.
EMBEDDED_STYLE = STYLE.replace("body {", ":host, body {") + """
:host { font-family: inherit; color: inherit; background: transparent; }
section { min-height: 0; padding: 0.5rem 0 1rem 0; border: 0; } h1 { font-size: 2rem; }
.panels { grid-template-columns: repeat(auto-fill, minmax(16rem, 1fr)); }
"""
KEYS = """document.addEventListener('keydown', (e) => {
  const all = [...document.querySelectorAll('section')];
  const now = all.findIndex((s) => s.getBoundingClientRect().top > -10);
  const step = (e.key === 'ArrowRight' || e.key === ' ' || e.key === 'PageDown') ? 1
    : (e.key === 'ArrowLeft' || e.key === 'PageUp') ? -1 : 0;
  if (!step) return;
  e.preventDefault();
  const next = all[Math.min(Math.max((now < 0 ? all.length - 1 : now) + step, 0), all.length - 1)];
  next.scrollIntoView();
});"""


def _table(rows: list[dict]) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{escape(str(k))}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{escape(minus(_cell(v)))}</td>" for v in row.values()) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _cell(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def scene_html(rendered: Any, total: int, picture_uri: Callable[[np.ndarray], str] = png_uri) -> str:
    """One :class:`resattn.scenes.Rendered` scene as a ``<section>``: "Scene k of n", title, text, question,
    pictures (embedded by ``picture_uri``) with colorbars, table, facts."""
    scene = rendered.scene
    parts = [f'<section id="scene-{scene.number}"><div class="where"><strong>Scene {scene.number} of {total}</strong></div>',
             f"<h1>{escape(scene.title)}</h1>", markdown_html(scene.text)]
    if scene.question:
        parts.append(f'<div class="question"><strong>Question for the class:</strong> '
                     f"{markdown_html(scene.question)[3:-4]}</div>")
    if rendered.panels:
        parts.append('<div class="panels">')
        for panel in rendered.panels:
            bar = colorbar_html(panel.scale, panel.cmap) if panel.scale is not None and panel.cmap else ""
            caption = f'<div class="caption">{escape(minus(panel.caption))}</div>' if panel.caption else ""
            parts.append(f'<div class="panel"><div class="title">{escape(panel.title)}</div>'
                         f'<img alt="{escape(panel.title)}" src="{picture_uri(panel.picture)}">{bar}{caption}</div>')
        parts.append("</div>")
    parts.append(_table(rendered.table))
    if rendered.facts:
        parts.append('<ul class="facts">' + "".join(f"<li>{markdown_html(f)[3:-4]}</li>" for f in rendered.facts)
                     + "</ul>")
    return "".join(parts) + "</section>"


def scene_fragment(rendered: Any, total: int) -> str:
    """:func:`scene_html` with :data:`EMBEDDED_STYLE` and JPEG pictures (:func:`jpeg_uri`), to be shown inside
    another page: what a lecture follower's page receives at each change."""
    return f"<style>{EMBEDDED_STYLE}</style>{scene_html(rendered, total, jpeg_uri)}"


def lecture_html(lecture: Any, rendered: list[Any]) -> str:
    """The whole :class:`resattn.lecture.Lecture` as one self-contained HTML document (pictures embedded, nothing fetched)."""
    sections = "\n".join(scene_html(r, len(lecture.scenes)) for r in rendered)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(lecture.title)}</title>'
            f"<style>{STYLE}</style></head><body>\n{sections}\n<script>{KEYS}</script></body></html>\n")
