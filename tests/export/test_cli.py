"""`nst-export` as a user runs it: what it writes, what it records, and how it fails."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from nst.manifest import LOSS_FILE, METADATA_KEY, MIN_ONNXRUNTIME_KEY, TARGETS_FILE, Manifest
from nst_export import parity
from nst_export.cli import main
from nst_export.onnx_graphs import IR_VERSION, MIN_ONNXRUNTIME

pytestmark = pytest.mark.slow


def _manifest(path: Path) -> Manifest:
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return Manifest.from_json(props[METADATA_KEY])


def test_metadata_records_the_export(caffe_avg_model_dir: Path, weights_file: Path) -> None:
    """Both files carry the same manifest: weights source and hash, pooling, layers, preprocessing, versions."""
    manifest = _manifest(caffe_avg_model_dir / LOSS_FILE)
    assert manifest == _manifest(caffe_avg_model_dir / TARGETS_FILE)
    assert manifest.weights == weights_file.name
    assert (manifest.pooling, manifest.preprocessing) == ("avg", "caffe")
    assert manifest.content_layers == ("relu4_2",)
    assert manifest.style_layers == ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
    assert len(manifest.weights_sha256) == 64
    assert "torch 2.13.0" in manifest.exporter


def test_ir_version_and_minimum_onnxruntime_are_explicit(model_dir: Path) -> None:
    """IR 8 (not the installed onnx's newest) and the oldest onnxruntime the project supports, in both files."""
    files = sorted(model_dir.glob("*.onnx"))
    assert len(files) == 6  # the plain, the circular-padding and the tile pair
    for path in files:
        model = onnx.load(str(path), load_external_data=False)
        assert model.ir_version == IR_VERSION == 8
        assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
        props = {p.key: p.value for p in model.metadata_props}
        assert props[MIN_ONNXRUNTIME_KEY] == MIN_ONNXRUNTIME == "1.22"


def test_only_layers_up_to_the_deepest_loss_layer_are_exported(tmp_path: Path) -> None:
    """With relu3_1 as the deepest layer, no conv past conv3_1 is in the graph."""
    out = tmp_path / "shallow"
    assert (
        main(
            [
                "--weights",
                "random",
                "--content-layers",
                "relu2_2",
                "--style-layers",
                "relu1_1,relu3_1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    names = {init.name for init in onnx.load(str(out / TARGETS_FILE)).graph.initializer}
    assert any(name.startswith("conv3_1.") for name in names)
    assert not any(name.startswith(("conv3_2.", "conv4_", "conv5_")) for name in names)


def test_random_weights_say_loudly_they_are_not_art(tmp_path: Path) -> None:
    """The console script runs, warns on stderr about random weights and exits 0."""
    result = subprocess.run(
        [sys.executable, "-m", "nst_export", "--weights", "random", "--out", str(tmp_path / "m")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "NOT art" in result.stderr
    assert "parity with PyTorch autograd" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--weights", "/nonexistent/w.pth"], "no such file"),
        (["--weights", "random", "--out", "/proc/forbidden/model"], "cannot write to"),
    ],
)
def test_failures_are_one_line(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Expected failures print one line naming the problem and exit 1."""
    if "--out" not in args:
        args = [*args, "--out", str(tmp_path / "m")]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("nst-export: error:")
    assert message in err[-1]


def test_existing_output_needs_force(model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An existing model directory is not overwritten without --force."""
    assert main(["--weights", "random", "--out", str(model_dir)]) == 1
    assert "--force" in capsys.readouterr().err


def test_failed_parity_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the self-check fails, the command exits 1 and neither the directory nor a staging copy remains."""
    monkeypatch.setattr(parity, "GRAD_TOLERANCE", 0.0)  # real graphs, real check, an impossible bound
    assert main(["--weights", "random", "--out", str(tmp_path / "m")]) == 1
    assert list(tmp_path.iterdir()) == []


def test_manifest_json_roundtrip() -> None:
    """A manifest survives its JSON form, and another format version is refused."""
    manifest = Manifest("random", "0" * 64, "max", "imagenet", ("relu4_2",), ("relu1_1",), 17, "x", seed=1)
    assert Manifest.from_json(manifest.to_json()) == manifest
    with pytest.raises(ValueError, match="unsupported model format"):
        Manifest.from_json(json.dumps({"format_version": 99}))
