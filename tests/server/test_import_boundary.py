"""The domain loads without gRPC, protobuf or onnxruntime: read from the source with ast, at import time.

A module's import-time imports are those outside functions and outside ``if TYPE_CHECKING:``; following the
package's own imports from each domain module must never reach one of the forbidden packages.
"""

from __future__ import annotations

import ast
from pathlib import Path

import nst.events
import nst_server
import pytest

PACKAGE = Path(nst_server.__file__).parent
DOMAIN = (
    "job",
    "pipeline",
    "optimise",
    "targets",
    "images",
    "colour",
    "model",
    "errors",
    "manifest",
    "admission",
    "spatial",
)
# nst.v1 holds the generated stubs; nst.events, the events shared with the client library, is plain Python.
FORBIDDEN = ("grpc", "grpc_health", "grpc_reflection", "onnxruntime", "nst.v1", "google")


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_time_nodes(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    """Import statements that run when the module loads (functions and TYPE_CHECKING blocks left out)."""
    found: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.If):
            found += [] if _is_type_checking(node.test) else _import_time_nodes(node.body)
            found += _import_time_nodes(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                found += _import_time_nodes(block)
        elif isinstance(node, ast.ClassDef):
            found += _import_time_nodes(node.body)
    return found


def _external(module: str) -> str:
    """The package an import of ``module`` loads, as FORBIDDEN names it: the top level; for nst, one level below."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "nst" else parts[0]


def imports_of(module: str) -> tuple[set[str], set[str]]:
    """(external packages as ``_external`` names them, sibling modules of nst_server) ``module`` imports at import
    time."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    external: set[str] = set()
    internal: set[str] = set()
    for node in _import_time_nodes(tree.body):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                (internal.add(alias.name.split(".")[1]) if top == "nst_server" else external.add(_external(alias.name)))
        elif node.level == 1 or (node.module or "").startswith("nst_server"):
            base = (node.module or "").removeprefix("nst_server").lstrip(".")
            if base:
                internal.add(base.split(".")[0])
            else:  # from . import a, b
                internal.update(alias.name for alias in node.names)
        elif node.level == 0 and node.module == "nst":  # from nst import events, v1
            external.update(_external(f"nst.{alias.name}") for alias in node.names)
        elif node.level == 0 and node.module is not None:
            external.add(_external(node.module))
    return external, internal


def reachable(module: str) -> dict[str, set[str]]:
    """Every package module ``module`` loads at import time, with the external packages each imports."""
    seen: dict[str, set[str]] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        external, internal = imports_of(name)
        seen[name] = external
        todo += sorted(internal - seen.keys())
    return seen


@pytest.mark.parametrize("module", DOMAIN)
def test_domain_module_never_loads_grpc_protobuf_or_onnxruntime(module: str) -> None:
    offending = {
        name: sorted(external & set(FORBIDDEN))
        for name, external in reachable(module).items()
        if external & set(FORBIDDEN)
    }
    assert offending == {}, f"{module} loads these at import time (via the modules named): {offending}"


def test_the_check_sees_what_the_servicer_imports() -> None:
    """The same reading finds grpc and onnxruntime where they are meant to be, so the check above can fail."""
    assert "grpc" in reachable("servicer")["servicer"]
    assert "nst.v1" in reachable("codec")["codec"]
    assert "nst.events" in reachable("pipeline")["pipeline"]
    assert "onnxruntime" in reachable("graphs")["graphs"]
    assert "graphs" in reachable("app")


def test_the_shared_events_load_neither_grpc_nor_protobuf() -> None:
    """nst.events, which the domain and the client library share, is plain Python and Pillow."""
    tree = ast.parse(Path(nst.events.__file__).read_text())
    loaded = {
        (node.module or "") if isinstance(node, ast.ImportFrom) else alias.name
        for node in _import_time_nodes(tree.body)
        for alias in node.names
    }
    assert {name.split(".")[0] for name in loaded} <= {"__future__", "dataclasses", "enum", "io", "PIL"}
