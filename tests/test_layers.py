"""The tree reads as the layers: no import cycles, the core imports no backend, backends import neither the
bus nor each other, and only the bridge package touches asyncio's bridges (module-level imports, by AST)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "trio_eventbus"


def _modules() -> dict[str, tuple[Path, bool]]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        deps: set[str] = set()
        for node in ast.parse(path.read_text()).body:  # module level: what importing the module imports
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join([*base, node.module] if node.module else base)
                else:
                    target = node.module or ""
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    deps.add(sub if sub in modules else target)
            elif isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names)
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    assert _cycles(_graph()) == []


def test_the_core_imports_no_backend_and_backends_import_neither_the_bus_nor_each_other() -> None:
    graph = _graph()
    # the application layer (_app: runner, decorator registry, URL configs) sits above the bus and the backends
    outer = ("trio_eventbus._app", "trio_eventbus.backends", "trio_eventbus.cli", "trio_eventbus.testing")
    core = [m for m in graph if not m.startswith(outer) and m not in ("trio_eventbus", "trio_eventbus.__main__")]
    assert [(m, d) for m in core for d in graph[m] if d.startswith(outer)] == []
    brokers = ("trio_eventbus.backends.nats", "trio_eventbus.backends.kafka")
    wrong = []
    for m, deps in graph.items():
        if not m.startswith("trio_eventbus.backends"):
            continue
        for d in deps:
            own = next((b for b in brokers if m.startswith(b)), None)
            if d in ("trio_eventbus._bus", "trio_eventbus._lifecycle") or (
                d.startswith(brokers) and not d.startswith(own or "-")
            ):
                wrong.append((m, d))
    assert wrong == []


def test_only_the_bridge_package_imports_trio_asyncio_or_drives_a_loop() -> None:
    users = []
    for name, (path, _) in _modules().items():
        text = path.read_text()
        if ("import trio_asyncio" in text or "run_coroutine_threadsafe" in text) and not name.startswith(
            "trio_eventbus.backends._bridge"
        ):
            users.append(name)
    assert users == []
