"""Explore's parts view and channel atlas (issue 25), driven headlessly with AppTest on the tiny checkpoints of
test_app: the parts are drawn with their energy and channels, a part's channels open one by one, the atlas shows
every channel a page at a time, and channel attention's range is said where its parts are shown."""

from __future__ import annotations

import re

import pytest

try:
    from .test_app import app, captions, checkpoints, no_exceptions, use_model  # noqa: F401 - fixtures
except ImportError:
    from test_app import app, captions, checkpoints, no_exceptions, use_model  # noqa: F401


def _markdown(at) -> str:
    return "\n".join(m.value for m in at.markdown)


def _part_captions(at) -> list[str]:
    return [c for c in captions(at).splitlines() if re.match(r"part \d+: \d+% of the parts' energy", c)]


def test_the_parts_view_draws_each_part_with_its_energy_and_channels(app):
    at = app.radio(key="reduction").set_value("parts").run()
    no_exceptions(at)
    text = _markdown(at)
    found = re.search(r"\*\*(\d) parts explain (\d+)%\*\*", text)
    assert found, text
    k, explained = int(found.group(1)), int(found.group(2))
    assert 2 <= k <= 8 and 0 < explained <= 100
    assert "removing each channel's floor" in text and "not evidence of what the network uses" in text
    shown = _part_captions(at)
    assert len(shown) == k + 1  # every part, and the chosen part again beside its channels
    energies = [int(re.match(r"part \d+: (\d+)%", c).group(1)) for c in shown[:k]]
    assert energies == sorted(energies, reverse=True) and abs(sum(energies) - 100) <= k
    assert all("channels " in c for c in shown)
    assert any(c.startswith("channel ") and "range [" in c for c in captions(at).splitlines())
    # every part and the chosen channel has its colorbar as page text
    assert captions(at).count("colours: part weight: 0 to the part's own maximum (1)") == k + 1


def test_a_fixed_k_gives_that_many_parts_and_a_part_opens_channel_by_channel(app):
    at = app.radio(key="reduction").set_value("parts").run()
    at = at.select_slider(key="parts_k").set_value(3).run()
    no_exceptions(at)
    assert len(_part_captions(at)) == 4
    at = at.button(key="parts_open_1").click().run()
    no_exceptions(at)
    assert at.radio(key="parts_pick").value == 2
    assert any("Part 2, channel by channel" in h.value for h in at.subheader)
    before = [c for c in captions(at).splitlines() if c.startswith("channel ")]
    at = at.slider(key="parts_rank").set_value(2).run()
    after = [c for c in captions(at).splitlines() if c.startswith("channel ")]
    no_exceptions(at)
    assert before and after and before != after  # the second channel of the part, not the first again


def test_the_channel_atlas_shows_every_channel_a_page_at_a_time(app):
    at = app.radio(key="reduction").set_value("atlas").run()
    no_exceptions(at)
    tiles = [c for c in captions(at).splitlines() if c.startswith("ch ")]
    footer = re.search(r"Channels 1–(\d+) of (\d+)", "\n".join(c.value for c in at.caption))
    assert footer, [c.value for c in at.caption]
    shown, total = int(footer.group(1)), int(footer.group(2))
    assert len(tiles) == shown == min(24, total)
    numbers = [int(re.match(r"ch (\d+):", t).group(1)) for t in tiles]
    assert len(set(numbers)) == len(numbers)
    at = at.radio(key="atlas_order").set_value("part").run()
    no_exceptions(at)
    assert "grouped by the part each loads most on" in "\n".join(c.value for c in at.caption)
    if total > 24:
        at = at.slider(key="atlas_page").set_value(2).run()
        second = [int(re.match(r"ch (\d+):", t).group(1))
                  for t in captions(at).splitlines() if t.startswith("ch ")]
        assert not set(second) & set(numbers) or at.radio(key="atlas_order").value == "part"


def test_channel_attention_parts_say_how_its_range_was_handled(checkpoints, monkeypatch):
    from streamlit.testing.v1 import AppTest

    try:
        from .test_app import APP
    except ImportError:
        from test_app import APP
    from ui import state

    monkeypatch.setenv("RESATTN_CHECKPOINT_DIR", str(checkpoints))
    monkeypatch.setenv("RESATTN_APP_MODELS", "attention56_cifar:width_mult=0.25;attention=channel")
    at = AppTest.from_file(str(APP / "main.py"), default_timeout=300).run()
    at = at.toggle(key="show_random").set_value(True).run()
    channel = next(e.key for e in state.catalogue(include_random=True) if e.random)
    at = at.selectbox(key="model").set_value(channel).run()
    at = at.radio(key="reduction").set_value("parts").run()
    no_exceptions(at)
    assert "channel attention (values in −1…1) factorised as (1 + M) / 2" in _markdown(at)
    at = at.radio(key="contrast_explore").set_value("fixed").run()
    shown = [c for c in captions(at).splitlines() if c.startswith("channel ")]
    assert len(shown) == 1
    assert "colours: fixed scale −1–1 (channel attention f2) (RdBu_r)" in captions(at)  # the mask's own range


def test_compare_shows_each_models_parts_on_the_same_image(app):
    at = app.toggle(key="show_random").set_value(True).run()
    at.switch_page("views/compare.py").run()
    at = at.toggle(key="compare_parts").set_value(True).run()
    no_exceptions(at)
    lines = [m.value for m in at.markdown if re.search(r"parts explain \d+%|no spatial variation", m.value)]
    models = at.dataframe[0].value
    with_masks = [m for m, a in zip(models["model"], models["attention"]) if a != "none"]
    assert len(lines) == len(with_masks) >= 2
    for name, line in zip(with_masks, lines):
        assert name in line
    assert any("spatial NAL" in line for line in lines)  # the tiny random model's own attention and learning
    assert [c for i in at.image for c in i.captions if re.match(r"part \d+: \d+% of the energy", c)]


def test_a_parts_dataset_examples_come_from_a_configured_dataset(checkpoints, tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    try:
        from .test_app import APP, model_key
        from .test_data import make_tree, zip_tree
    except ImportError:
        from test_app import APP, model_key
        from test_data import make_tree, zip_tree

    data = zip_tree(make_tree(tmp_path / "tree", per_class=(1, 4), size=32), tmp_path / "pets.zip")  # cat/dog/frog
    monkeypatch.setenv("RESATTN_CHECKPOINT_DIR", str(checkpoints))
    monkeypatch.setenv("RESATTN_APP_MODELS", "none")
    monkeypatch.setenv("RESATTN_DATASETS", f"pets={data}")
    at = AppTest.from_file(str(APP / "main.py"), default_timeout=300).run()
    at = use_model(at, "a_tiny")  # a CIFAR-10 model: it knows cat, dog and frog
    at = at.radio(key="reduction").set_value("parts").run()
    assert at.selectbox(key="parts_dataset").options == ["pets"]
    at = at.button(key="parts_examples").click().run()
    no_exceptions(at)
    examples = [c for i in at.image for c in i.captions if "top-20% share" in c and c.startswith(("cat/", "dog/", "frog/"))]
    assert len(examples) == 6  # the six of the 12 test images where the part is most concentrated
    shares = [float(re.search(r"top-20% share ([\d.]+)", c).group(1)) for c in examples]
    assert shares == sorted(shares, reverse=True)
    assert "most concentrated" in "\n".join(c.value for c in at.caption)
    assert model_key(at, "a_tiny") == at.selectbox(key="model").value
