"""The package's layers, read from its source: each module imports only from its own layer or
the ones below it, the core imports nothing but torch and the standard library, and no import
cycle exists (imports inside functions count too)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lance"

# lowest first; a module may import from its own layer and those below it
LAYERS = {
    "lance.errors": 0,
    "lance.core": 1,
    "lance.analysis": 2,
    "lance.models": 3,
    "lance.data": 3,
    "lance.experiments": 4,
    "lance.book": 5,
    "lance.cli": 6,
    "lance.__main__": 7,
}
# the public face (lance/__init__.py) may gather names from these layers only
FACADE_MAX = 3
CORE_THIRD_PARTY = {"torch"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _layer(module: str) -> int:
    for prefix, rank in LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            return rank
    raise AssertionError(f"{module} is in no layer; add its folder to LAYERS")


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    base = package.split(".")[: len(package.split(".")) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imports(module: str) -> set[str]:
    """Every module ``module`` imports, at the top or inside a function; ``from lance.x import y``
    counts as ``lance.x.y`` when that is a module."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node)
            subs = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES]
            found.update(subs or [base])
    return found


def _internal(module: str) -> set[str]:
    return {m for m in imports(module) if m == "lance" or m.startswith("lance.")}


def test_every_module_is_in_a_layer():
    for module in MODULES:
        if module != "lance":
            _layer(module)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "lance"))
def test_imports_go_down_only(module):
    rank = _layer(module)
    for target in _internal(module):
        assert target != "lance", (f"{module} imports the package's public face (lance/__init__.py); "
                                   f"import the module that defines the name")
        assert _layer(target) <= rank, f"{module} (layer {rank}) imports {target} (layer {_layer(target)})"


def test_the_public_face_gathers_from_the_lower_layers_only():
    for target in _internal("lance"):
        assert _layer(target) <= FACADE_MAX, f"lance/__init__.py imports {target}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "lance" and _layer(m) == 1))
def test_the_core_needs_torch_and_the_standard_library_only(module):
    for target in imports(module):
        top = target.split(".")[0]
        if top in ("lance", "__future__") or top in sys.stdlib_module_names:
            continue
        assert top in CORE_THIRD_PARTY, f"{module} imports {target}: the core uses torch only"


def test_no_import_cycle():
    graph = {m: {t for t in _internal(m) if t in MODULES and t != "lance"} for m in MODULES if m != "lance"}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycle = path[path.index(t):] + [t]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_the_checker_sees_an_upward_import(tmp_path, monkeypatch):
    """The walk above would catch a core module importing an experiment."""
    fake = tmp_path / "lance" / "core"
    fake.mkdir(parents=True)
    (fake / "bad.py").write_text("def f():\n    from lance.experiments import finetune\n")
    monkeypatch.setitem(MODULES, "lance.core.bad", fake / "bad.py")
    assert "lance.experiments.finetune" in _internal("lance.core.bad")
    with pytest.raises(AssertionError, match="imports lance.experiments.finetune"):
        test_imports_go_down_only("lance.core.bad")


def test_no_function_is_longer_than_a_screen():
    """Long functions were where the drivers repeated each other; none is over 60 lines."""
    long = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60:
                long.append(f"{module}.{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long
