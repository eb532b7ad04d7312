"""The deletion / insertion panel for a projector (issue 24): chart titles that fit side by side at 1280 px, a
toggle that promises no time it cannot keep, progress while each map is computed and scored, and the maps' colorbars
as page text."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from resattn import faithfulness as F

try:
    from .test_app import app, captions, checkpoints, colorbars, no_exceptions, use_model  # noqa: F401 - fixtures
except ImportError:
    from test_app import app, captions, checkpoints, colorbars, no_exceptions, use_model  # noqa: F401

#: The chart's width at 1280 px: the page's main column beside the sidebar, less the chart's margins.
CHART_PX = 800
#: A generous estimate of a character's width in a plotly title, as a fraction of the font size.
CHAR_EM = 0.6


def _result(names: list[str]):
    from ui import faithful_panels

    fractions = np.linspace(0, 1, 5)
    curve = {n: np.linspace(1, 0, 5) for n in names}
    return faithful_panels.DeletionResult(names, {}, fractions, curve, curve, {}, (32, 32), 4, 2.0, 0.1)


def test_the_two_curve_titles_fit_over_their_halves_at_1280_px():
    from ui import faithful_panels

    figure = faithful_panels._curve_figure(_result(["mask", "gradcam"]), "bird")
    titles = [a for a in figure.layout.annotations if a.text in faithful_panels.CURVE_TITLES]
    assert [a.text for a in titles] == list(faithful_panels.CURVE_TITLES)
    spans = []
    for title, axis in zip(titles, (figure.layout.xaxis, figure.layout.xaxis2)):
        width = len(title.text) * title.font.size * CHAR_EM
        low, high = (d * CHART_PX for d in axis.domain)
        assert width <= high - low, (title.text, width, high - low)  # within its own half
        spans.append((title.x * CHART_PX - width / 2, title.x * CHART_PX + width / 2))
    assert spans[0][1] < spans[1][0] and spans[0][0] >= 0 and spans[1][1] <= CHART_PX  # apart and inside
    assert all(a.font.size >= 14 for a in titles)


def test_deletion_curves_report_progress_per_map_while_computing_and_scoring(tiny_cifar):
    from ui import faithful_panels

    names = ["mask", "gradcam", "random"]
    calls: list[tuple[int, int, str]] = []
    x = torch.randn(1, 3, 32, 32)
    result = faithful_panels.deletion_curves(tiny_cifar, x, 3, 1, 1, names, ig_steps=2, steps=4,
                                             progress=lambda done, total, text: calls.append((done, total, text)))
    assert {total for _, total, _ in calls} == {2 * len(names)}
    assert [done for done, _, _ in calls] == sorted(done for done, _, _ in calls) and calls[-1][0] == 2 * len(names)
    scoring = [text for _, _, text in calls if text.startswith("scoring ")]
    assert scoring == [f"scoring {F.MAP_NAMES[n]} (10 perturbed images)" for n in names]  # the bar moves per map
    direct = F.faithfulness_curves(tiny_cifar, x, 3, result.maps, 4)  # all maps at once, as before
    for n in names:
        np.testing.assert_allclose(result.deletion[n], direct[n]["deletion"].probabilities, atol=1e-6)
        np.testing.assert_allclose(result.insertion[n], direct[n]["insertion"].probabilities, atol=1e-6)


def test_the_toggle_names_the_work_and_the_maps_have_colorbars_as_page_text(app):
    at = use_model(app, "a_tiny")
    at.switch_page("views/attribution.py").run()
    toggle = at.toggle(key="faithful_deletion")
    assert "few seconds" not in toggle.label
    maps = len(F.DELETION_MAPS)
    assert f"{maps} maps, {2 * (F.DEFAULT_STEPS + 1) * maps} perturbed images to score" in toggle.label
    assert "progress bar" in toggle.label
    before = len(colorbars(at))
    at = toggle.set_value(True).run()
    no_exceptions(at)
    drawn = [c.value for c in at.caption if c.value.startswith(tuple(F.MAP_NAMES.values()))]
    assert len(drawn) >= 4  # the maps that ordered the pixels, each named under its picture (a flat one is not drawn)
    # each with its colorbar as page text (16-px numbers, never cut), none drawn into the picture
    assert len(colorbars(at)) - before == len(drawn)
    assert not [c for i in at.image for c in i.captions if c.startswith(tuple(F.MAP_NAMES.values()))]


def test_the_sanity_maps_have_colorbars_as_page_text(app):
    at = use_model(app, "a_tiny")
    at.switch_page("views/learn.py").run()
    at.multiselect(key="sanity_maps").set_value(["mask"]).run()
    before = len(colorbars(at))
    at.toggle(key="sanity_run").set_value(True).run()
    no_exceptions(at)
    steps = [c for c in captions(at).splitlines() if c.startswith(("trained · ", "→ "))]
    assert len(steps) == 7 and all("range [" in c for c in steps)  # every step of the cascade, with its range
    assert len(colorbars(at)) - before == 7  # and its colorbar as page text, stating its scale
    assert not [c for i in at.image for c in i.captions if c.startswith(("trained · ", "→ "))]
