"""The package's layers import only downward, and only ``cli`` imports mpma inside functions.

Order (lowest first): config -> data, models -> objectives -> eval -> tasks -> engine -> hub ->
inference, viz -> pipelines, demo -> cli. A module may import its own package and any lower layer;
layers of equal rank (data and models; inference and viz; pipelines and demo) do not import each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "mpma"
RANK = {"config": 0, "data": 1, "models": 1, "objectives": 2, "eval": 3, "tasks": 4, "engine": 5, "hub": 6,
        "inference": 7, "viz": 7, "pipelines": 8, "demo": 8, "cli": 9}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> list[tuple[str, int, bool]]:
    """(imported mpma module, line, inside a function) for every import in ``path``, relative ones resolved.
    Imports under ``if TYPE_CHECKING:`` are left out (they never run)."""
    tree = ast.parse(path.read_text())
    package = module_name(path).split(".") if path.name == "__init__.py" else module_name(path).split(".")[:-1]
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING"
                   for n in ast.walk(node)}
    local = {id(n) for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
             for n in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            names = [".".join([*base, node.module] if node.module else base)] if node.level or node.module else []
        else:
            continue
        found += [(name, node.lineno, id(node) in local) for name in names if name == "mpma" or name.startswith("mpma.")]
    return found


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in RANK else None


SOURCES = sorted(p for p in SRC.rglob("*.py"))


def test_every_top_level_package_has_a_layer():
    packages = {p.relative_to(SRC).parts[0].removesuffix(".py") for p in SOURCES} - {"__init__"}
    assert packages <= set(RANK), f"packages without a layer: {sorted(packages - set(RANK))}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_go_downward(path):
    here = layer(module_name(path))
    upward = []
    for name, line, inside_function in imported_modules(path):
        there = layer(name)
        if here is None or there is None or there == here:
            continue
        if RANK[there] >= RANK[here]:
            upward.append(f"line {line}: {here} imports {name} ({there}, rank {RANK[there]} >= {RANK[here]})")
    assert not upward, "\n".join(upward)


@pytest.mark.parametrize("path", [p for p in SOURCES if layer(module_name(p)) != "cli"], ids=lambda p: str(p.relative_to(SRC)))
def test_no_function_local_imports_of_mpma_outside_cli(path):
    local = [f"line {line}: {name}" for name, line, inside in imported_modules(path) if inside]
    assert not local, "import at the top of the module instead:\n" + "\n".join(local)


def test_the_checker_sees_an_upward_and_a_local_import(tmp_path):
    """The checks above would catch a violation (a planted one is found)."""
    planted = SRC / "models" / "_planted_for_test.py"
    planted.write_text("from mpma.pipelines import finetuning\n\n\ndef f():\n    import mpma.data.text\n")
    try:
        found = imported_modules(planted)
        assert ("mpma.pipelines", 1, False) in found and ("mpma.data.text", 5, True) in found
        with pytest.raises(AssertionError, match="models imports mpma.pipelines"):
            test_imports_go_downward(planted)
        with pytest.raises(AssertionError, match="line 5: mpma.data.text"):
            test_no_function_local_imports_of_mpma_outside_cli(planted)
    finally:
        planted.unlink()
