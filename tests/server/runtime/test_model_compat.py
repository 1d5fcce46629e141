"""A model file an onnxruntime cannot read is refused before onnxruntime parses it, with the versions involved."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
from nst import manifest as mf
from nst_server.__main__ import main as server_main
from nst_server.runtime.graphs import LossGraphs
from nst_server.runtime.sessions import check_readable

_GRAPHS = (
    mf.TARGETS_FILE,
    mf.LOSS_FILE,
    mf.CIRCULAR_TARGETS_FILE,
    mf.CIRCULAR_LOSS_FILE,
    mf.TILE_FORWARD_FILE,
    mf.TILE_GRAD_FILE,
)


def _rewrite(model_dir: Path, out: Path, *, min_onnxruntime: str | None = None, ir_version: int | None = None) -> Path:
    """A copy of ``model_dir`` whose files carry another minimum onnxruntime and/or IR version."""
    shutil.copytree(model_dir, out)
    for name in _GRAPHS:
        model = onnx.load(str(out / name))
        if min_onnxruntime is not None:
            props = {p.key: p.value for p in model.metadata_props}
            props[mf.MIN_ONNXRUNTIME_KEY] = min_onnxruntime
            del model.metadata_props[:]
            onnx.helper.set_model_props(model, props)
        if ir_version is not None:
            model.ir_version = ir_version
        onnx.save(model, str(out / name))
    return out


def test_the_header_reader_agrees_with_onnx(model_dir: Path) -> None:
    """IR version, opsets and metadata read by the server's own reader, as onnx reads them."""
    for name in _GRAPHS:
        model = onnx.load(str(model_dir / name), load_external_data=False)
        header = mf.read_model_header(model_dir / name)
        assert header.ir_version == model.ir_version
        assert header.opsets == {o.domain: o.version for o in model.opset_import}
        assert header.metadata == {p.key: p.value for p in model.metadata_props}


def test_the_header_reader_refuses_what_is_not_onnx(tmp_path: Path) -> None:
    """A text file, an empty file: a ValueError naming the file, not a crash or a header."""
    for content in (b"", b"this is not a model\n", b"\xff\xff\xff"):
        path = tmp_path / "model.onnx"
        path.write_bytes(content)
        with pytest.raises(ValueError, match="not an ONNX model"):
            mf.read_model_header(path)


@pytest.mark.parametrize(
    ("version", "release"),
    [("1.31.1", (1, 31, 1)), ("1.22", (1, 22)), ("1.22.0", (1, 22)), ("1.9.0.dev1+cu12", (1, 9))],
)
def test_release_compares_versions_numerically(version: str, release: tuple[int, ...]) -> None:
    """1.9 < 1.22 < 1.31.1 as numbers, 1.22 == 1.22.0, local and dev suffixes ignored."""
    assert mf.release(version) == release
    assert mf.release("1.9") < mf.release("1.22") < mf.release("1.31.1")


@pytest.mark.slow  # nst-server processes that must exit 1
def test_a_model_for_a_newer_onnxruntime_is_refused_with_both_versions(model_dir: Path, tmp_path: Path) -> None:
    """LossGraphs says what the model needs and what this server has, and loads nothing."""
    newer = _rewrite(model_dir, tmp_path / "newer", min_onnxruntime="99.0")
    with pytest.raises(ValueError, match=r"needs onnxruntime >= 99\.0 \(ONNX IR version 8, opset 17\)") as caught:
        LossGraphs(newer, "cpu")
    assert f"this server has onnxruntime {ort.__version__}" in str(caught.value)


def test_this_onnxruntime_reads_what_the_export_writes(model_dir: Path) -> None:
    """The exported files pass the check here, and ask for no newer onnxruntime than this one."""
    for name in (mf.TARGETS_FILE, mf.LOSS_FILE):
        header = check_readable(model_dir / name)
        assert mf.release(header.metadata[mf.MIN_ONNXRUNTIME_KEY]) <= mf.release(ort.__version__)
    assert check_readable(model_dir / mf.LOSS_FILE, runtime_version="1.22.0")
    with pytest.raises(ValueError, match=r"this server has onnxruntime 1\.21\.9"):
        check_readable(model_dir / mf.LOSS_FILE, runtime_version="1.21.9")


@pytest.mark.slow  # nst-server processes that must exit 1
def test_nst_server_exits_1_with_the_reason(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command line: exit 1 and one line on stderr naming the file and both versions, before any listener."""
    newer = _rewrite(model_dir, tmp_path / "newer", min_onnxruntime="99.0")
    assert server_main(["--model", str(newer), "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert f"{newer / mf.TARGETS_FILE} needs onnxruntime >= 99.0" in err
    assert "nst-server: error:" in err


@pytest.mark.slow  # nst-server processes that must exit 1
def test_an_ir_version_onnxruntime_cannot_read_is_explained(model_dir: Path, tmp_path: Path) -> None:
    """A file without the metadata (not from this exporter's fix) and an IR version beyond onnxruntime's: the
    refusal names the file, its IR version and this onnxruntime, instead of onnxruntime's bare message alone."""
    future = _rewrite(model_dir, tmp_path / "future", ir_version=99)
    for name in (mf.TARGETS_FILE, mf.LOSS_FILE):
        model = onnx.load(str(future / name))
        props = {p.key: p.value for p in model.metadata_props if p.key != mf.MIN_ONNXRUNTIME_KEY}
        del model.metadata_props[:]
        onnx.helper.set_model_props(model, props)
        onnx.save(model, str(future / name))
    with pytest.raises(ValueError, match=r"ONNX IR version 99, opset 17\) cannot be loaded by onnxruntime") as caught:
        LossGraphs(future, "cpu")
    assert ort.__version__ in str(caught.value)


def test_a_manifest_from_a_newer_export_loads_and_a_broken_one_is_explained() -> None:
    """Keys added within a format (they only describe the model) are left out; missing ones are a ValueError."""
    manifest = mf.Manifest("random", "0" * 64, "max", "imagenet", ("relu4_2",), ("relu1_1",), 17, "test", seed=1)
    newer = json.loads(manifest.to_json()) | {"trained_on": "a newer export's note"}
    assert mf.Manifest.from_json(json.dumps(newer)) == manifest
    broken = json.loads(manifest.to_json())
    del broken["weights_sha256"], broken["opset"]
    with pytest.raises(ValueError, match="model manifest: missing weights_sha256, opset"):
        mf.Manifest.from_json(json.dumps(broken))
    with pytest.raises(ValueError, match="expected a JSON object, got list"):
        mf.Manifest.from_json("[]")
