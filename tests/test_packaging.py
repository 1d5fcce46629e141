"""The installed distribution: what `pip install .` puts on the path, and that the committed stubs are current.

These tests inspect the *installed* `neuralstyletransfer` (run `pip install .`, non-editable, and reinstall
after changes), not the source tree; only the stub check reads the repository's protos/ directly.
"""

from __future__ import annotations

import filecmp
import importlib.metadata
import importlib.resources
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest

DISTRIBUTION = "neuralstyletransfer"
ALLOWED_TOP_LEVEL = {"nst", "nst_server", "nst_client", "nst_export"}
FORBIDDEN_TOP_LEVEL = {"server", "client", "export", "protos", "tests"}
STUB_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")

REPO_ROOT = Path(__file__).resolve().parents[1]
PROTOS_DIR = REPO_ROOT / "protos"
PROTO_FILE = PurePosixPath("nst/v1/style_transfer.proto")


@pytest.fixture(name="dist", scope="module")
def _dist() -> importlib.metadata.Distribution:
    try:
        return importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(f"{DISTRIBUTION} is not installed: run `pip install .` first")


def _installed_paths(dist: importlib.metadata.Distribution) -> list[PurePosixPath]:
    """The distribution's files relative to site-packages, leaving out its .dist-info and anything outside."""
    assert dist.files is not None, f"{DISTRIBUTION} has no RECORD"
    paths = [PurePosixPath(file.as_posix()) for file in dist.files]
    return [path for path in paths if path.parts[0] != ".." and not path.parts[0].endswith(".dist-info")]


def _top_level_names(dist: importlib.metadata.Distribution) -> set[str]:
    """First path component of each installed file, with a module's suffix dropped (`foo.py` -> `foo`)."""
    return {
        path.parts[0].split(".", 1)[0] if len(path.parts) == 1 else path.parts[0] for path in _installed_paths(dist)
    }


def test_installs_only_prefixed_top_level_packages(dist: importlib.metadata.Distribution) -> None:
    """Installing adds no generic top-level module (server, client, export, protos, tests), only the nst* packages."""
    names = _top_level_names(dist)
    assert not names & FORBIDDEN_TOP_LEVEL, f"generic top-level names installed: {sorted(names & FORBIDDEN_TOP_LEVEL)}"
    assert names <= ALLOWED_TOP_LEVEL, f"unexpected top-level names installed: {sorted(names - ALLOWED_TOP_LEVEL)}"
    assert "nst" in names, "the API package `nst` is missing from the installed distribution"


def test_proto_ships_inside_installed_package(dist: importlib.metadata.Distribution) -> None:
    """The .proto source is installed inside the `nst/v1/` package, identical to the repository's."""
    assert PROTO_FILE in _installed_paths(dist), f"{PROTO_FILE} is not in the installed distribution"
    installed = importlib.resources.files("nst.v1") / PROTO_FILE.name
    assert installed.is_file(), "the imported nst.v1 package has no .proto file"
    recorded = Path(str(dist.locate_file(PROTO_FILE)))
    assert Path(str(installed)).resolve() == recorded.resolve(), "nst.v1 is imported from elsewhere than the install"
    assert installed.read_bytes() == (PROTOS_DIR / PROTO_FILE).read_bytes(), "installed .proto is stale: reinstall"


def test_committed_stubs_match_freshly_generated(tmp_path: Path) -> None:
    """The committed Python stubs are byte-for-byte what protoc generates from the repository's .proto files."""
    protos = sorted(path.relative_to(PROTOS_DIR).as_posix() for path in PROTOS_DIR.rglob("*.proto"))
    assert protos, f"no .proto files under {PROTOS_DIR}"
    # The same invocation as protos/generate.sh, into tmp_path.
    command = [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTOS_DIR}"]
    command += [f"--{kind}_out={tmp_path}" for kind in ("python", "pyi", "grpc_python")]
    subprocess.run([*command, *(str(PROTOS_DIR / proto) for proto in protos)], check=True)

    def stubs(root: Path) -> set[str]:
        return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.name.endswith(STUB_SUFFIXES)}

    generated, committed = stubs(tmp_path), stubs(PROTOS_DIR)
    assert generated, "protoc generated nothing"
    assert committed == generated, "committed stub files differ in name from the generated ones: run protos/generate.sh"
    stale = [name for name in sorted(generated) if not filecmp.cmp(tmp_path / name, PROTOS_DIR / name, shallow=False)]
    assert not stale, f"committed stubs out of date: {stale}; run protos/generate.sh"


def test_console_scripts_resolve_to_callables(dist: importlib.metadata.Distribution) -> None:
    """Every console script the installed distribution declares loads to a callable."""
    scripts = [ep for ep in dist.entry_points if ep.group == "console_scripts"]
    assert scripts, "the distribution declares no console scripts"
    for ep in scripts:
        target = ep.load()
        assert callable(target), f"console script {ep.name} = {ep.value} is not callable"
