"""The package's architecture, enforced: layers, no import cycles, small modules and functions.

Layers, lowest first (README "Layout"). A module may import from its own layer or lower ones, never
higher: the pipeline reads top-down (grid → stages → foundations) and later work cannot quietly tangle it.
A module over 300 lines or a function over 80 needs a one-line ``# size: <why>`` comment (at the top of the
module, or on the line above the ``def``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "readaptir"
LAYERS = [
    ["errors", "runtime", "fs", "paths", "conf", "provenance", "logs", "attention"],
    ["config", "data", "store", "tracking"],
    ["models"],
    ["readapt", "retrieval", "evaluate"],
    ["train", "harness"],
    ["grid"],
    ["report", "resources", "__init__", "cli", "__main__"],
]
MAX_MODULE, MAX_FUNCTION = 300, 80


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = path.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"{module} is in no layer: add its package to LAYERS (and the README)")


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """readaptir modules imported by ``path`` (``from x import y`` counts y when y is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n in modules and n.startswith("readaptir")}
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(p, modules) - {m} for m, p in modules.items()}


def test_every_module_has_a_layer():
    for m in _modules():
        _layer(m)


def test_no_import_runs_up_a_layer():
    bad = [
        f"{m} (layer {_layer(m)}) imports {d} (layer {_layer(d)})"
        for m, deps in _graph().items()
        if m != "readaptir"  # the package face re-exports the public API from every layer
        for d in deps
        if _layer(d) > _layer(m)
    ]
    assert not bad, "\n".join(bad)


def test_no_import_cycle():
    graph = {m: d for m, d in _graph().items() if m != "readaptir"}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if d == "readaptir":
                continue
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " → ".join(stack[stack.index(d) :] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def _sized(lines: list[str], at: int) -> bool:
    return "# size:" in lines[at] if 0 <= at < len(lines) else False


@pytest.mark.parametrize("name", sorted(_modules()))
def test_modules_and_functions_stay_small(name):
    path = _modules()[name]
    text = path.read_text()
    lines = text.splitlines()
    if len(lines) > MAX_MODULE:
        assert any("# size:" in line for line in lines[:40]), f"{path}: {len(lines)} lines > {MAX_MODULE}"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = node.end_lineno - node.lineno + 1
            first = min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1
            if n > MAX_FUNCTION:
                assert _sized(lines, first - 1) or _sized(lines, first), (
                    f"{path}:{node.lineno} {node.name} is {n} lines > {MAX_FUNCTION}"
                )
