"""The README's inspect example runs as written and the model-zoo table matches scripts/model_zoo.py's rows."""

from __future__ import annotations

import re
from pathlib import Path

import resattn

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_inspect_example_runs():
    block = re.search(r"```python\n(.*?)```", README, re.S).group(1)
    assert "resattn.inspect" in block and len(block.strip().splitlines()) <= 12
    exec(compile(block, "README.md", "exec"), {})


def test_zoo_table_lists_every_model_with_its_parameter_count():
    for name in resattn.list_models():
        row = re.search(rf"^\| `{name}` \|[^|]*\| ([0-9.]+)M \|", README, re.M)
        assert row, f"{name} missing from the README's model zoo"
        if "imagenet" not in name or name in ("attention56_imagenet", "attention92_imagenet"):
            count = resattn.count_params(resattn.create_model(name)) / 1e6
            assert float(row.group(1)) == round(count, 2)
