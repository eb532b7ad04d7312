"""The shape of the code (issue 21): small modules with one job each, classes that fit in a reader's head, and
imports that run only downwards through the layers the README's layout section names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: resattn's top-level modules and packages, lowest layer first: a module may import only from its own layer's
#: package or from a lower layer (the README's "Layout" section draws the same picture).
LAYERS: list[set[str]] = [
    {"_version", "blocks", "counting", "paper", "preprocess", "maps", "graphs", "lecture"},  # leaves
    {"attention", "data", "html", "confidence"},                                  # attention; data; HTML; calibrations
    {"networks", "inspect", "images", "attribution"},                             # networks; looking inside them
    {"registry", "archive"},                                                      # named models; uploaded archives
    {"checkpoint"},                                                               # safe files of named models
    {"masks", "parts", "train"},                                                  # masks, their parts; training
    {"faithfulness", "evaluate", "scenes"},                                       # faithfulness; trained files; lectures
    {"jobs"},                                                                     # background fine-tuning jobs
]
LAYER = {name: depth for depth, names in enumerate(LAYERS) for name in names}

MAX_MODULE_LINES = 500
MAX_CLASS_LINES = 250
#: A module over the limit must say in its docstring why it is one piece.
ONE_PIECE = "one piece"


def _sources(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def _top(path: Path) -> str:
    """The resattn top-level module or package a file belongs to (``train`` for ``resattn/train/loop.py``)."""
    rel = path.relative_to(ROOT / "resattn")
    return rel.parts[0].removesuffix(".py")


def _resattn_imports(path: Path) -> set[str]:
    """The resattn top-level modules ``path`` imports, relative imports resolved."""
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - node.level + 1])
                full = base + (node.module.split(".") if node.module else [])
                names = [".".join(full + [a.name]) for a in node.names] if not node.module else [".".join(full)]
            elif node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "resattn" and len(parts) > 1 and parts[1] in LAYER:
                found.add(parts[1])
    return found


def test_every_resattn_module_has_a_layer():
    tops = {_top(p) for p in _sources("resattn") if p.name != "__init__.py" or p.parent != ROOT / "resattn"}
    assert tops - set(LAYER) == set(), "add the new module to LAYERS (and to the README's layout section)"


@pytest.mark.parametrize("path", _sources("resattn"), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_run_down_the_layers(path):
    if path == ROOT / "resattn" / "__init__.py":
        return  # the package root re-exports from every layer and is imported by none of them
    own = _top(path)
    upward = {m for m in _resattn_imports(path) if m != own and LAYER[m] >= LAYER[own]}
    assert upward == set(), f"{path.relative_to(ROOT)} imports from its own layer or above: {sorted(upward)}"


def test_nothing_in_the_package_imports_the_package_root_or_the_app():
    for path in _sources("resattn"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            depth = len(path.relative_to(ROOT / "resattn").parts)  # 1 for resattn/x.py, 2 for resattn/pkg/x.py
            if isinstance(node, ast.ImportFrom) and node.level == depth and node.module is None:
                names = {a.name for a in node.names}  # from the root, only submodules may be imported
                assert names <= set(LAYER), f"{path.relative_to(ROOT)} imports {sorted(names - set(LAYER))} from the root"
            modules = ([a.name for a in node.names] if isinstance(node, ast.Import)
                       else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            for module in modules:
                assert module.split(".")[0] not in {"app", "ui", "views", "streamlit"}, (path, module)
                assert module != "resattn", f"{path.relative_to(ROOT)} imports the package root"


def test_the_apps_shared_parts_never_import_its_pages():
    for path in _sources("app/ui"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any(n.split(".")[0] in {"views", "main"} for n in names), (path, names)


@pytest.mark.parametrize("path", _sources("resattn", "app"), ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_are_small_or_say_why_not(path):
    text = path.read_text()
    lines = text.count("\n")
    if lines > MAX_MODULE_LINES:
        doc = ast.get_docstring(ast.parse(text)) or ""
        assert ONE_PIECE in doc, f"{path.relative_to(ROOT)} has {lines} lines and no word on why it is {ONE_PIECE}"


@pytest.mark.parametrize("path", _sources("resattn", "app"), ids=lambda p: str(p.relative_to(ROOT)))
def test_classes_fit_in_a_readers_head(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ClassDef):
            size = node.end_lineno - node.lineno + 1  # type: ignore[operator]
            assert size <= MAX_CLASS_LINES, f"{path.relative_to(ROOT)}: class {node.name} has {size} lines"


def test_the_layer_check_can_fail(tmp_path, monkeypatch):
    """A module that imports from a higher layer is caught (the check is not vacuous)."""
    fake = ROOT / "resattn" / "blocks.py"
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: "from .train import train\n"
                        if self == fake else Path.read_bytes(self).decode())
    with pytest.raises(AssertionError, match="train"):
        test_imports_run_down_the_layers(fake)
