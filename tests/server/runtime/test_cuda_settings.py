"""`--cuda-tf32` and `--cuda-conv-search`: from the flags to the CUDA provider's options of every session.

No GPU is needed: onnxruntime is made to list the CUDA provider (as onnxruntime-gpu does on any machine), and each
InferenceSession the server creates is recorded with the providers and options it was asked for, then created on
the CPU provider alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from nst_server.__main__ import build_parser, config_from_args
from nst_server.app import load_models
from nst_server.config import CudaSettings
from nst_server.runtime.device_optimise import StepGraphs
from nst_server.runtime.sessions import CPU_PROVIDER, CUDA_PROVIDER, cuda_provider_options, provider_options

OFF = {"use_tf32": "0", "cudnn_conv_algo_search": "EXHAUSTIVE"}


def test_the_default_is_tf32_off_and_the_exhaustive_search() -> None:
    """TF32 off, unlike onnxruntime's own default (use_tf32=1): the float32 tolerances of the parity check hold."""
    assert cuda_provider_options(CudaSettings()) == OFF


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (CudaSettings(tf32=True), {"use_tf32": "1", "cudnn_conv_algo_search": "EXHAUSTIVE"}),
        (CudaSettings(conv_search="heuristic"), {"use_tf32": "0", "cudnn_conv_algo_search": "HEURISTIC"}),
        (CudaSettings(True, "default"), {"use_tf32": "1", "cudnn_conv_algo_search": "DEFAULT"}),
    ],
)
def test_each_setting_becomes_the_provider_option(settings: CudaSettings, expected: dict[str, str]) -> None:
    assert cuda_provider_options(settings) == expected


def test_only_the_cuda_provider_gets_options() -> None:
    on = CudaSettings(tf32=True)
    assert provider_options([CUDA_PROVIDER, CPU_PROVIDER], on) == [cuda_provider_options(on), {}]
    assert provider_options([CPU_PROVIDER], on) == [{}]


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([], CudaSettings()),
        (["--cuda-tf32", "on"], CudaSettings(tf32=True)),
        (["--cuda-tf32", "off", "--cuda-conv-search", "heuristic"], CudaSettings(conv_search="heuristic")),
    ],
)
def test_the_flags_make_the_settings(flags: list[str], expected: CudaSettings) -> None:
    config = config_from_args(build_parser().parse_args(["--model", "m", *flags]), {})
    assert config.cuda == expected


def test_a_bad_value_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--model", "m", "--cuda-tf32", "yes"])
    assert exit_info.value.code == 2
    assert "--cuda-tf32: invalid choice: 'yes'" in capsys.readouterr().err


class _Recorder:
    """Stands in for ort.InferenceSession: records what each session was asked for, creates it on the CPU."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, Any]] = []
        self._real = ort.InferenceSession

    def __call__(self, model: Any, options: Any = None, **kwargs: Any) -> ort.InferenceSession:
        self.calls.append((kwargs.get("providers"), kwargs.get("provider_options")))
        return self._real(model, options, providers=[CPU_PROVIDER])


@pytest.fixture
def sessions(monkeypatch: pytest.MonkeyPatch) -> _Recorder:
    recorder = _Recorder()
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA_PROVIDER, CPU_PROVIDER])
    monkeypatch.setattr(ort, "preload_dlls", lambda *args, **kwargs: None, raising=False)
    monkeypatch.setattr(ort, "InferenceSession", recorder)
    return recorder


def test_every_session_of_the_server_gets_the_options(model_dir: Path, sessions: _Recorder) -> None:
    """Loss, targets, tiles, the circular pair and every step graph: all asked for CUDA with --cuda-tf32's value."""
    flags = ["--model", str(model_dir), "--cuda-tf32", "on", "--optimizer-placement", "device", "--tile-size", "64"]
    (graphs,) = load_models(config_from_args(build_parser().parse_args(flags), {}))
    graphs.targets(np.zeros((1, 3, 32, 32), np.float32), circular=True)  # loads the circular pair
    on = cuda_provider_options(CudaSettings(tf32=True))
    # targets, loss, two tile graphs, Adam, L-BFGS's trial and pair, a direction per history length, circular pair
    assert len(sessions.calls) >= 4 + 3 + 2
    assert all(call == ([CUDA_PROVIDER, CPU_PROVIDER], [on, {}]) for call in sessions.calls), sessions.calls


def test_the_captured_adam_step_keeps_the_options(sessions: _Recorder) -> None:
    """CUDA graph capture is added to the options, not put in their place."""
    providers = [CUDA_PROVIDER, CPU_PROVIDER]
    steps = StepGraphs(ort.SessionOptions, providers, True, provider_options(providers, CudaSettings(tf32=True)))
    steps.captured_adam()
    ((asked, _),) = sessions.calls
    assert asked == [
        (CUDA_PROVIDER, {"use_tf32": "1", "cudnn_conv_algo_search": "EXHAUSTIVE", "enable_cuda_graph": "1"})
    ]
