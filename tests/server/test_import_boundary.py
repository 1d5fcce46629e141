"""The folders are the architecture: each layer's imports, read from the source with ``ast``, keep its rule.

- ``nst_server.domain``: one job. Never grpc, protobuf (``nst.v1``), onnxruntime or onnx, nor another layer.
- ``nst_server.runtime``: everything onnxruntime. Never grpc, protobuf or ``transport``.
- ``nst_server.transport``: the protocol in. Never onnxruntime, onnx or ``runtime``.
- The top (``app``, ``config``, ``__main__``, ``testing``) assembles them; only ``config`` may be imported by the
  layers, and it imports nothing of the package.
- ``nst.events`` and ``nst.manifest``, the contracts beside the stubs, load neither grpc nor protobuf.
- ``nst_export`` takes the contract from ``nst.manifest``; only ``parity`` runs the server's runtime, on purpose.

Every import counts, wherever it sits (functions, ``if TYPE_CHECKING:``), so a cycle cannot hide, and none of
the packages has a cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import nst.events
import nst_export
import nst_server
import pytest

SOURCES = {
    "nst_server": Path(nst_server.__file__).parent,
    "nst_export": Path(nst_export.__file__).parent,
    "nst": Path(nst.events.__file__).parent,
}
PROTOBUF = ("google", "nst.v1")
GRPC = ("grpc", "grpc_health", "grpc_reflection")
ONNXRUNTIME = ("onnxruntime", "onnx")
LAYER_RULES: dict[str, tuple[str, ...]] = {
    "nst_server.domain": (
        *GRPC,
        *PROTOBUF,
        *ONNXRUNTIME,
        "nst_server.transport",
        "nst_server.runtime",
        "nst_server.app",
        "nst_server.testing",
        "nst_server.__main__",
    ),
    "nst_server.runtime": (
        *GRPC,
        *PROTOBUF,
        "nst_server.transport",
        "nst_server.app",
        "nst_server.testing",
        "nst_server.__main__",
    ),
    "nst_server.transport": (
        *ONNXRUNTIME,
        "nst_server.runtime",
        "nst_server.app",
        "nst_server.testing",
        "nst_server.__main__",
    ),
}


def _module_name(package: str, path: Path) -> str:
    parts = [package, *path.relative_to(SOURCES[package]).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    """Every module of the three packages (the generated stubs under nst.v1 left out), by dotted name."""
    found = {}
    for package, root in SOURCES.items():
        for path in sorted(root.rglob("*.py")):
            if "v1" not in path.relative_to(root).parts:
                found[_module_name(package, path)] = path
    return found


MODULES = package_modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def imports_of(name: str) -> Iterator[str]:
    """Everything ``name`` imports, anywhere in its source, as absolute dotted names; ``from a import b`` names
    ``a.b`` when that is a module of ours, else ``a``."""
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = name if _is_package(name) else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{node.module}" if node.module else package
            else:
                base = node.module or ""
            for alias in node.names:
                yield f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _layer(name: str) -> str | None:
    return next((layer for layer in LAYER_RULES if _within(name, layer)), None)


def _internal_edges() -> dict[str, set[str]]:
    """Module -> the package modules it imports (an import of ``a.b.c`` also loads ``a.b``'s ``__init__``)."""
    edges: dict[str, set[str]] = {}
    for name in MODULES:
        targets = set()
        for imported in imports_of(name):
            parts = imported.split(".")
            targets |= {".".join(parts[:k]) for k in range(1, len(parts) + 1)} & MODULES.keys()
        # A package's __init__ runs before its modules: that is an order, not an import.
        edges[name] = {target for target in targets if target != name and not _within(name, target)}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


@pytest.mark.parametrize("layer", sorted(LAYER_RULES))
def test_each_layer_keeps_its_rule(layer: str) -> None:
    offending = {
        name: sorted(imported for imported in imports_of(name) if any(_within(imported, f) for f in LAYER_RULES[layer]))
        for name in MODULES
        if _within(name, layer)
    }
    assert {name: found for name, found in offending.items() if found} == {}, f"{layer}: {LAYER_RULES[layer]}"


def test_the_folders_hold_the_layers() -> None:
    """Every server module sits in a layer's folder, except the four at the top that assemble them."""
    top = {name for name in MODULES if _within(name, "nst_server") and _layer(name) is None}
    assert top == {"nst_server", "nst_server.__main__", "nst_server.app", "nst_server.config", "nst_server.testing"}
    for layer in LAYER_RULES:
        assert sum(_within(name, layer) for name in MODULES) > 2, f"{layer} is empty"


def test_config_is_a_leaf() -> None:
    """The layers may read the configuration because it reads nothing of theirs."""
    assert not [name for name in imports_of("nst_server.config") if _within(name, "nst_server")]


def test_the_shared_contracts_load_neither_grpc_nor_protobuf() -> None:
    """nst.events and nst.manifest, which server, client and export share, are plain Python (numpy, Pillow)."""
    for name in ("nst.events", "nst.manifest"):
        roots = {imported.split(".")[0] for imported in imports_of(name)}
        assert roots <= {"__future__", "dataclasses", "enum", "io", "json", "re", "pathlib", "typing", "PIL"}, name


def test_the_export_reaches_the_server_only_through_parity() -> None:
    """The export's contract with the server is nst.manifest; parity runs the server's runtime on purpose."""
    reaching = {name for name in MODULES if _within(name, "nst_export") and any(
        _within(imported, "nst_server") for imported in imports_of(name)
    )}  # fmt: skip
    assert reaching == {"nst_export.parity"}


def test_no_import_cycles() -> None:
    assert cycles(_internal_edges()) == []


def test_the_checks_can_fail() -> None:
    """The same reading finds what is meant to be there, and the cycle finder finds a planted cycle."""
    assert "grpc" in imports_of("nst_server.transport.servicer")
    assert "onnxruntime" in imports_of("nst_server.runtime.graphs")
    assert "nst_server.runtime.graphs" in _internal_edges()["nst_server.app"]
    assert "nst_server.domain.evaluation" in _internal_edges()["nst_server.domain.optimise"]
    planted = _internal_edges() | {"nst_server.domain.evaluation": {"nst_server.domain.optimise"}}
    assert ["nst_server.domain.evaluation", "nst_server.domain.optimise"] in cycles(planted)
