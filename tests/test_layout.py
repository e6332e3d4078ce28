"""The package's layout, read from the imports themselves (every import statement, those inside functions too):
imports go theory -> sim -> validate only, nothing below validate/'s top level imports a command, and no module
imports itself back through any chain."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("theory", "sim", "validate", "benchmarks")
COMMANDS = ("validate.signal_prop", "validate.phase_diagram", "validate.scan_snap", "validate.scan_snap_sweep",
            "validate.execution_manifold")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _our_modules() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in (REPO / package).rglob("*.py")}


def _imports(path: Path, name: str, modules: dict) -> set[str]:
    """The modules of ours that `path` imports anywhere in its body (resolved to modules, not attributes)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from a import b` imports module a.b when b is a module, else an attribute of a
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _our_modules()
    return {name: _imports(path, name, modules) for name, path in modules.items()}


def test_the_commands_exist_where_users_run_them(graph):
    assert set(COMMANDS) <= set(graph)
    assert "validate.geometry" in graph  # the public face other code imports


def test_imports_go_down_the_layers_only(graph):
    allowed = {"theory": {"theory"}, "sim": {"theory", "sim"}, "validate": {"theory", "sim", "validate"},
               "benchmarks": set(PACKAGES)}
    wrong = [(name, target) for name, targets in graph.items() for target in targets
             if target.split(".")[0] not in allowed[name.split(".")[0]]]
    assert wrong == []


def test_nothing_below_the_top_level_of_validate_imports_a_command(graph):
    below = {name for name in graph if name.startswith("validate._")}
    wrong = [(name, target) for name in below for target in graph[name] if target in COMMANDS]
    assert wrong == []


def test_commands_do_not_import_each_other(graph):
    wrong = [(name, target) for name in COMMANDS for target in graph[name] if target in COMMANDS]
    assert wrong == []


def test_no_import_circle(graph):
    """A depth-first search that meets a module still on its stack has found a circle."""
    circles, state = [], {}

    def visit(name, stack):
        state[name] = "open"
        for target in sorted(graph.get(name, ())):
            if state.get(target) == "open":
                circles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack + [target])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert circles == []
