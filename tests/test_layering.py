"""The layout keeps its design: no import cycles in snapworker/, and each layer imports only what is below it.

Layers, from the bottom: ``errors``/``settings``/``failpoints``/``domain`` (neutral), ``contract``, ``core``
(pure), the edges (``amqp``, ``cloud``), then the services the runtime wires, each on its own (``idempotency``,
``tracking``, ``ops``), then ``runtime``, which wires them, then ``tools`` and the package's public face.
Imports under ``if TYPE_CHECKING:`` count too: a type-only import back up still ties the layers together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "snapworker"

PURE = ("snapworker.contract", "snapworker.core")
EDGES = ("snapworker.amqp", "snapworker.cloud")
RUNTIME = ("snapworker.runtime", "snapworker.idempotency", "snapworker.tracking", "snapworker.ops")
TOP = ("snapworker.tools", "snapworker.simulator", "snapworker.client")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        is_package = path.name == "__init__.py"
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                found.add(base)
                found |= {f"{base}.{alias.name}" for alias in node.names}
        graph[name] = {m for m in found if m.startswith("snapworker")}
    modules = set(graph)
    # keep only names that are modules of ours (``from x import Name`` adds x.Name, which is not a module)
    return {name: {m for m in deps if m in modules and m != name} for name, deps in graph.items()}


def _in(module: str, layers: tuple[str, ...]) -> bool:
    return any(module == layer or module.startswith(layer + ".") for layer in layers)


GRAPH = _imports()


def test_the_walk_finds_the_packages() -> None:
    assert {"snapworker.core.engine", "snapworker.runtime.worker", "snapworker.amqp.session"} <= set(GRAPH)


def test_no_import_cycles() -> None:
    # a package's __init__ re-exporting its own modules is not a cycle between modules
    def deps(module: str) -> set[str]:
        return {d for d in GRAPH[module] if not (module.endswith("__init__") or d == module.rsplit(".", 1)[0])}

    visiting: list[str] = []
    done: set[str] = set()
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        if module in done:
            return
        if module in visiting:
            cycles.append([*visiting[visiting.index(module) :], module])
            return
        visiting.append(module)
        for dep in sorted(deps(module)):
            if not module.startswith(dep + ".") and dep in GRAPH:
                visit(dep)
        visiting.pop()
        done.add(module)

    for module in sorted(GRAPH):
        visit(module)
    assert cycles == []


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if _in(m, PURE)))
def test_the_contract_and_the_core_import_no_edge_and_no_runtime(module: str) -> None:
    assert {d for d in GRAPH[module] if _in(d, EDGES + RUNTIME + TOP)} == set()


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if _in(m, EDGES)))
def test_the_edges_import_no_runtime(module: str) -> None:
    assert {d for d in GRAPH[module] if _in(d, RUNTIME + TOP)} == set()


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if _in(m, EDGES)))
def test_one_edge_does_not_import_the_other(module: str) -> None:
    other = [e for e in EDGES if not _in(module, (e,))]
    assert {d for d in GRAPH[module] if _in(d, tuple(other))} == set()


SERVICES = ("snapworker.idempotency", "snapworker.tracking", "snapworker.ops")


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if _in(m, SERVICES)))
def test_the_services_import_no_runtime(module: str) -> None:
    # the runtime wires idempotency, tracking and ops; none of them reaches back into it
    assert {d for d in GRAPH[module] if _in(d, ("snapworker.runtime",))} == set()


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if _in(m, SERVICES)))
def test_one_service_does_not_import_another(module: str) -> None:
    # ops reads what the others count (the store's health) through the worker, under TYPE_CHECKING at most
    own = next(s for s in SERVICES if _in(module, (s,)))
    allowed = {"snapworker.idempotency.health"} if own == "snapworker.ops" else set()
    others = tuple(s for s in SERVICES if s != own)
    assert {d for d in GRAPH[module] if _in(d, others)} - allowed == set()


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if _in(m, RUNTIME)))
def test_the_runtime_imports_no_tool(module: str) -> None:
    assert {d for d in GRAPH[module] if _in(d, TOP)} == set()


def test_every_package_says_what_lives_there() -> None:
    for init in PACKAGE.rglob("__init__.py"):
        assert ast.get_docstring(ast.parse(init.read_text())), f"{init} has no docstring"


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if _in(m, EDGES)))
def test_the_edges_import_no_core(module: str) -> None:
    # shared values (merge keys, jobs) live in snapworker.domain, which neither edge owns
    assert {d for d in GRAPH[module] if _in(d, ("snapworker.core",))} == set()
