"""The layout stays true: every module imports, imports point one way, no circles.

The wings of ``src/agentstream`` and who may import whom (README, "How the code
is laid out"): the root modules (errors, config, event, app, logging, ...) are
the base; ``transport/`` speaks to Redis and is the only importer of redis;
``worker/`` runs on transport and feeds ``observe/``; ``admin/`` runs on
transport; ``cli`` wires them; ``testing/`` (the users' test kit) may import
anything, and nothing but tests imports it.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from collections.abc import Iterator
from pathlib import Path

import pytest

import agentstream

PACKAGE = "agentstream"
SRC = Path(agentstream.__file__).resolve().parent
WINGS = ("transport", "worker", "observe", "admin", "testing")

#: For each wing, the wings it must never import.
FORBIDDEN: dict[str, set[str]] = {
    "transport": {"worker", "observe", "admin", "testing"},
    "observe": {"worker", "admin", "testing"},
    "worker": {"admin", "testing"},
    # admin/ holds the operator commands and their web console (admin/web/)
    "admin": {"worker", "testing"},
    # root modules are the base: no wing, except cli, which wires them all
    "root": set(WINGS),
    "testing": set(),
}
#: Root modules allowed to import wings: the wiring (cli, the console scripts'
#: entry points), and the package's promise.
WIRING = {"agentstream.cli", "agentstream._entry", "agentstream"}
#: Third-party packages only transport/ (and the test kit) may import.
REDIS_PACKAGES = {"redis", "hiredis"}


def _modules() -> list[str]:
    found = pkgutil.walk_packages([str(SRC)], prefix=f"{PACKAGE}.")
    return sorted([PACKAGE, *(info.name for info in found)])


MODULES = _modules()


def _path(module: str) -> Path:
    parts = module.split(".")[1:]
    candidate = SRC.joinpath(*parts)
    if candidate.is_dir():
        return candidate / "__init__.py"
    return candidate.with_suffix(".py")


def _wing(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 2 or (len(parts) == 2 and parts[1] in WINGS):
        return parts[1]
    return "root"


def _imports(module: str) -> Iterator[tuple[str, int]]:
    """Every module ``module`` imports (anywhere in it), with its line number."""
    path = _path(module)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0]
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                # `from agentstream.observe import metrics` imports a module.
                sub = f"{base}.{alias.name}"
                yield (sub if sub in MODULES else base), node.lineno


def _graph() -> dict[str, set[str]]:
    return {
        module: {name for name, _ in _imports(module) if name in MODULES} - {module}
        for module in MODULES
    }


@pytest.mark.parametrize("module", [m for m in MODULES if m != f"{PACKAGE}.__main__"])
def test_module_imports(module: str) -> None:
    """Each module imports (``__main__`` runs the CLI, so it is only parsed)."""
    importlib.import_module(module)


def test_imports_point_one_way() -> None:
    """No module imports a wing its own wing must not reach."""
    wrong = []
    for module in MODULES:
        wing = _wing(module)
        for name, line in _imports(module):
            if not name.startswith(f"{PACKAGE}.") or module in WIRING:
                continue
            target = _wing(name)
            if target != wing and target in FORBIDDEN[wing]:
                wrong.append(
                    f"{_path(module).relative_to(SRC)}:{line} {wing} -> {name}"
                )
    assert not wrong, "imports against the layout:\n" + "\n".join(wrong)


def test_only_transport_imports_redis() -> None:
    """redis-py stays behind the transport: its errors are translated there."""
    wrong = [
        f"{_path(module).relative_to(SRC)}:{line} imports {name}"
        for module in MODULES
        if _wing(module) not in {"transport", "testing"}
        for name, line in _imports(module)
        if name.split(".")[0] in REDIS_PACKAGES
    ]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles() -> None:
    """The module graph (explicit imports, lazy ones included) has no cycle."""
    graph = _graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in MODULES:
        if module not in state:
            visit(module)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_rules_see_every_wing() -> None:
    """A new wing directory must be given its rules here, not slip past them."""
    dirs = {p.name for p in SRC.iterdir() if (p / "__init__.py").exists()}
    assert dirs == set(WINGS)
    assert {_wing(m) for m in MODULES} == {*WINGS, "root"}
