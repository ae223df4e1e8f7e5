"""The package's layers (docs/design.md, "The code and its layers"), read from the code's own
imports, function-level ones included: `elf/` stands on nothing of the package but `errors`,
the build-time phases never reach into live processes, and no module imports itself back
through others."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "ulp_build"


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str) -> set[str]:
    """Every module `name` imports, as written (package members resolved to modules)."""
    modules = _modules()
    found = set()
    for node in ast.walk(ast.parse(modules[name].read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in modules else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports."""
    modules = _modules()
    return {name: {m for m in _imports(name) if m in modules and m != name} for name in modules}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path, node, nxt]
            if nxt not in state and (found := visit(nxt, [*path, node])):
                return found
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node, [])):
            return found
    return None


def test_the_reader_stands_alone() -> None:
    for name, imports in _graph().items():
        if name.startswith("ulp_build.elf"):
            outside = {m for m in imports if not m.startswith("ulp_build.elf")}
            assert outside <= {"ulp_build.errors"}, (name, outside)


def test_build_time_never_imports_live_processes() -> None:
    for name, imports in _graph().items():
        if name.startswith(("ulp_build.prepare", "ulp_build.patch", "ulp_build.elf")):
            live = {m for m in imports if m.startswith("ulp_build.live")}
            assert not live, (name, live)


def test_no_import_circle() -> None:
    assert _cycle(_graph()) is None


def test_the_check_sees_a_circle() -> None:
    """The control: the same walk finds a circle where there is one."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert _cycle(graph) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_every_module_is_installed() -> None:
    """`pip install .` installs what ulp_build/meson.build lists: a module missing there works
    from the checkout and is absent from every installation."""
    listed = set(re.findall(r"'([\w/]+\.py)'", (PACKAGE / "meson.build").read_text()))
    modules = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")}
    assert modules - listed == set()
    assert listed - modules == set()


def test_dependencies_are_what_the_package_imports() -> None:
    """`pip install .` brings exactly what the package itself imports; tools the tests use to
    check it belong to the `test` extra."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    imported = {m.split(".")[0] for name in _graph() for m in _imports(name)}
    # setuptools: only ulp_build.integrations.setuptools imports it, a plugin setuptools loads.
    third_party = imported - set(sys.stdlib_module_names) - {"ulp_build", "setuptools"}
    # Distributions by the names they are imported as (pyelftools is `elftools`).
    distributions = {
        module: {d.lower() for d in dists}
        for module, dists in importlib.metadata.packages_distributions().items()
    }
    declared = {
        re.split(r"[<>=!~ \[]", requirement, maxsplit=1)[0].lower()
        for requirement in project["dependencies"]
    }
    for module in third_party:
        assert distributions.get(module, set()) & declared, f"{module} is imported, not declared"
    provided = set().union(*(distributions.get(module, set()) for module in third_party))
    assert declared - provided == set(), "declared but not imported by ulp_build"
