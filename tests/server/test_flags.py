"""nst-server's and nst-export's flags as a person meets them first: --help prints every group and exits 0."""

from __future__ import annotations

import pytest
from nst_server.__main__ import build_parser


def test_server_help_prints_every_group(capsys: pytest.CaptureFixture[str]) -> None:
    """Each help string is expanded by argparse (a stray % in one breaks --help for everyone)."""
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--help"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    for group in ("serving", "runtime (onnxruntime)", "limits", "connections and shutdown", "access"):
        assert f"\n{group}" in printed, group
    for flag in ("--max-memory", "--http-port", "--cuda-tf32", "--token-file", "--tile-size"):
        assert flag in printed, flag


def test_export_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    from nst_export.cli import build_parser as export_parser

    with pytest.raises(SystemExit) as exit_info:
        export_parser().parse_args(["--help"])
    assert exit_info.value.code == 0
    assert "--weights" in capsys.readouterr().out
