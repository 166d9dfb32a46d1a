"""The folders are the layers (README, "Layout"): every import inside the package points down the tree."""

from __future__ import annotations

import ast
from pathlib import Path

import phononbench

PACKAGE = Path(phononbench.__file__).parent
ORDER = ["vocabulary", "science", "compute", "running", "reading", "app", "top"]
TOP = {"cli", "__init__"}


def _layer(module: str) -> str:
    """``phononbench.science.ingest`` -> science; the shared modules at the top are the vocabulary."""
    parts = module.split(".")[1:] or ["__init__"]
    if parts[0] in ORDER:  # a layer's module, or the layer itself (from phononbench.reading import ranking)
        return parts[0]
    return "top" if parts[0] in TOP else "vocabulary"


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every phononbench import in the file, at any depth, but those only type checkers see."""
    tree = ast.parse(path.read_text())
    hidden = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
              for child in node.body for n in ast.walk(child)}
    found = []
    for node in ast.walk(tree):
        if id(node) in hidden:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("phononbench"):
            if node.module == "phononbench":  # from phononbench import science (a layer) or a top module
                found += [(node.lineno, f"phononbench.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("phononbench")]
    return found


def test_every_import_points_down_the_layers():
    upward = []
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > 30 and {p.parent.name for p in modules} >= {"science", "compute", "running", "reading", "app"}
    for path in modules:
        name = ".".join(("phononbench", *path.relative_to(PACKAGE).with_suffix("").parts))
        source = _layer(name)
        for line, target in _imports(path):
            if ORDER.index(_layer(target)) > ORDER.index(source):
                upward.append(f"{path.relative_to(PACKAGE)}:{line} ({source}) imports {target} ({_layer(target)})")
    assert upward == []


def test_the_check_finds_an_upward_import(tmp_path):
    """The rule can fail: a science module that imported the pipeline would be named."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from phononbench.running.pipeline import run_benchmark\n"
                   "    from phononbench.reading import ranking\n    import phononbench.app.webapp\n")
    assert [_layer(t) for _, t in _imports(bad)] == ["running", "reading", "app"]
    assert _layer("phononbench.science.bad") == "science" and _layer("phononbench.records") == "vocabulary"
