"""Device placement (``nst_server.runtime.device_optimise``) on the CPU provider against the host optimisers.

Adam's step graph does the host's float32 operations one for one, so its 50 iterates are the host's to the bit
here (the test allows 1e-6). L-BFGS's dot products sum in another order (ReduceSum against BLAS's sdot), and
L-BFGS on this loss amplifies round-off: the host itself, started one ulp away on every 97th value, is 1-3%
(relative L2) away after 50 iterations. So each L-BFGS graph is checked against the host's code from one
state to float32 round-off, and the 50-iteration runs are checked to stay within the host's own round-off
envelope (the same start moved by one ulp), with the same evaluations and stop reason.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest
from nst.events import Event, Optimizer, Preview, StopReason
from nst_server.__main__ import main
from nst_server.domain import optimise, pipeline, schedule
from nst_server.domain.errors import Cancelled
from nst_server.domain.evaluation import FloatArray
from nst_server.domain.job import Job, Options, Style
from nst_server.runtime import step_graphs
from nst_server.runtime.device_optimise import DeviceOptimiser, StepGraphs
from nst_server.runtime.graphs import AUTO_PLACEMENT, LossGraphs
from nst_server.runtime.sessions import SessionEvaluator, session_options
from nst_server.testing import config_from_flags, load_model

ITERATIONS = 50
SIZES = [(48, 64), (80, 96)]  # (height, width)
# 50 iterations of both placements: seconds even at 64x48 (a VGG evaluation costs about 70 ms there, mostly per-op
# overhead). The quick loop keeps the per-graph checks and the stop reasons below.
SIZE_PARAMS = [pytest.param(size, id=f"{size[1]}x{size[0]}", marks=pytest.mark.slow) for size in SIZES]
ENVELOPE_FACTOR = 3.0  # the device may stray from the host up to this many times as far as the host strays itself


@pytest.fixture(name="graphs", scope="module")
def _graphs(model_dir: Path) -> LossGraphs:
    return load_model(model_dir, "cpu", placement="device")


def _image(shape: tuple[int, int], seed: int) -> FloatArray:
    return np.random.default_rng(seed).random((1, 3, *shape), dtype=np.float32)


def _evaluator(graphs: LossGraphs, shape: tuple[int, int]) -> SessionEvaluator:
    """Content targets of one random image and style targets of another."""
    content = graphs.targets(_image(shape, 1))
    style = graphs.targets(_image((64, 64), 2))
    feeds = {name: style[name] if name.startswith("gram") else array for name, array in content.items()}
    evaluator = graphs.evaluator(shape, feeds, graphs.manifest.default_loss_weights)
    assert isinstance(evaluator, SessionEvaluator)
    return evaluator


class _Recorder:
    def __init__(self) -> None:
        self.iterates: list[FloatArray] = []
        self.losses: list[float] = []

    def __call__(self, step: optimise.Step) -> None:
        self.iterates.append(step.x.copy())
        self.losses.append(step.losses.total)


def _never() -> bool:
    return False


def _run(
    optimiser: optimise.Optimiser, method: str, start: FloatArray, budget: int = ITERATIONS + 1,
    h0_gamma: float | None = None, converged: Callable[[float], bool] = optimise.never,
) -> tuple[optimise.Outcome, _Recorder]:  # fmt: skip
    recorder = _Recorder()
    run = optimise.Run(start, budget, recorder, converged=converged)
    outcome = optimiser.adam(run, 0.02) if method == "adam" else optimiser.lbfgs(run, 10, h0_gamma)
    return outcome, recorder


def _placements(graphs: LossGraphs, shape: tuple[int, int]) -> tuple[optimise.HostOptimiser, DeviceOptimiser]:
    evaluator = _evaluator(graphs, shape)
    device = graphs.optimiser(evaluator)
    assert isinstance(device, DeviceOptimiser)
    return optimise.HostOptimiser(evaluator), device


def _relative(a: list[FloatArray], b: list[FloatArray]) -> list[float]:
    return [float(np.linalg.norm(u - v) / np.linalg.norm(u)) for u, v in zip(a, b, strict=True)]


@pytest.mark.parametrize("shape", SIZE_PARAMS)
def test_device_adam_iterates_are_the_hosts(graphs: LossGraphs, shape: tuple[int, int]) -> None:
    host, device = _placements(graphs, shape)
    start = _image(shape, 3)
    (host_outcome, host_steps), (device_outcome, device_steps) = (_run(o, "adam", start) for o in (host, device))
    assert len(device_steps.iterates) == len(host_steps.iterates) == ITERATIONS + 1
    for ours, theirs in zip(device_steps.iterates, host_steps.iterates, strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)
    np.testing.assert_allclose(device_steps.losses, host_steps.losses, rtol=1e-6)
    np.testing.assert_allclose(device_outcome.x, host_outcome.x, rtol=0, atol=1e-6)
    assert (device_outcome.iterations, device_outcome.reason) == (host_outcome.iterations, host_outcome.reason)
    assert device.evaluate_s > 0
    assert device.step_s > 0


@pytest.mark.parametrize("shape", SIZE_PARAMS)
def test_device_lbfgs_stays_within_the_hosts_round_off(graphs: LossGraphs, shape: tuple[int, int]) -> None:
    host, device = _placements(graphs, shape)
    start = _image(shape, 3)
    nudged = start.copy()
    nudged.ravel()[::97] = np.nextafter(nudged.ravel()[::97], np.float32(2))
    host_outcome, host_steps = _run(host, "lbfgs", start)
    _, nudged_steps = _run(host, "lbfgs", nudged)
    device_outcome, device_steps = _run(device, "lbfgs", start)
    assert len(device_steps.iterates) == len(host_steps.iterates) >= ITERATIONS
    assert (device_outcome.evaluations, device_outcome.reason) == (host_outcome.evaluations, host_outcome.reason)
    # Before round-off has been amplified: the same iterates.
    assert max(_relative(host_steps.iterates[:2], device_steps.iterates[:2])) < 1e-6
    # After: no further from the host than the host from itself.
    host_losses = np.array(host_steps.losses)
    spread = np.abs(np.array(nudged_steps.losses) - host_losses) / host_losses
    ours = np.abs(np.array(device_steps.losses) - host_losses) / host_losses
    assert ours.max() <= ENVELOPE_FACTOR * spread.max() + 1e-6
    spread_x = max(_relative(host_steps.iterates, nudged_steps.iterates))
    assert max(_relative(host_steps.iterates, device_steps.iterates)) <= ENVELOPE_FACTOR * spread_x + 1e-6
    assert host_outcome.h0_gamma is not None
    assert device_outcome.h0_gamma == pytest.approx(host_outcome.h0_gamma, rel=0.05)


def test_device_lbfgs_starts_from_a_carried_scale_as_the_host_does(graphs: LossGraphs) -> None:
    host, device = _placements(graphs, SIZES[0])
    start = _image(SIZES[0], 3)
    (_, host_steps), (_, device_steps) = (_run(o, "lbfgs", start, budget=3, h0_gamma=0.05) for o in (host, device))
    (_, plain_steps) = _run(host, "lbfgs", start, budget=3)
    assert max(_relative(host_steps.iterates, device_steps.iterates)) < 1e-6
    assert max(_relative(host_steps.iterates, plain_steps.iterates)) > 1e-3  # the carried scale mattered


@pytest.mark.parametrize("method", ["adam", "lbfgs"])
@pytest.mark.slow  # seconds: runs of both placements, or a server per flag
def test_device_stop_reasons_and_cancellation(graphs: LossGraphs, method: str) -> None:
    host, device = _placements(graphs, SIZES[0])
    start = _image(SIZES[0], 3)
    # A loose threshold: stops after a few iterations.
    host_outcome, _ = _run(host, method, start, converged=optimise.Plateau(0.5, 2))
    device_outcome, _ = _run(device, method, start, converged=optimise.Plateau(0.5, 2))
    assert host_outcome.reason is StopReason.CONVERGED
    assert (device_outcome.reason, device_outcome.iterations) == (host_outcome.reason, host_outcome.iterations)
    calls = 0

    def stop_after_three() -> bool:
        nonlocal calls
        calls += 1
        return calls > 3

    cancelled = optimise.Run(start, 20, should_stop=stop_after_three)
    with pytest.raises(Cancelled):
        device.adam(cancelled, 0.02) if method == "adam" else device.lbfgs(cancelled, 10)
    assert calls == 4


# -- each L-BFGS graph against the host's code from one state


def _state(
    n: int, pairs: int, seed: int = 0
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], optimise._Pairs]:
    """x with values at both bounds, a gradient, and ``pairs`` pairs of positive curvature."""
    rng = np.random.default_rng(seed)
    x = rng.random(n, dtype=np.float32)
    x[rng.random(n) < 0.1] = 0.0
    x[rng.random(n) < 0.1] = 1.0
    grad = rng.standard_normal(n).astype(np.float32)
    history = optimise._Pairs(pairs, n)
    for row in range(pairs):
        history.s[row] = rng.standard_normal(n).astype(np.float32) * 0.01
        history.y[row] = history.s[row] * rng.uniform(0.5, 2.0, n).astype(np.float32)
        history.keep(row)
    return x, grad, history


def _session(model: object) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])  # type: ignore[attr-defined]


def _image_of(flat: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    return flat.reshape(1, 3, 16, -1)


@pytest.mark.parametrize("pairs", [0, 1, 10])
def test_direction_graph_is_the_hosts_direction(pairs: int) -> None:
    n = 3 * 16 * 32
    x, grad, history = _state(n, pairs)
    expected = np.empty(n, np.float32)
    newest_first = list(reversed(history._order))
    feeds = {"x": _image_of(x), "grad": _image_of(grad)}
    feeds |= {f"s_{k}": _image_of(history.s[row]) for k, row in enumerate(newest_first)}
    feeds |= {f"y_{k}": _image_of(history.y[row]) for k, row in enumerate(newest_first)}
    if pairs:
        feeds["rho"] = np.array([history.rho[row] for row in newest_first], np.float32)
    optimise.projected_direction(history, x, grad, expected)
    direction, trial, s, scalars = _session(step_graphs.lbfgs_direction(pairs)).run(None, feeds)
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(direction.ravel(), expected, rtol=0, atol=1e-5 * scale)
    assert scalars[0] == (1.0 if len(history) == pairs else 0.0)
    step = 1.0 if pairs and scalars[0] else 1.0 / np.linalg.norm(expected)
    assert scalars[1] == pytest.approx(step, rel=1e-5)
    expected_trial = np.clip(x + np.float32(step) * expected, 0, 1)
    np.testing.assert_allclose(trial.ravel(), expected_trial, rtol=0, atol=1e-5)
    np.testing.assert_allclose(s.ravel(), expected_trial - x, rtol=0, atol=1e-5)
    assert scalars[2] == pytest.approx(float(grad @ (expected_trial - x)), rel=1e-4)
    assert scalars[2] < 0


def test_trial_and_pair_graphs_are_the_hosts_arithmetic() -> None:
    n = 3 * 16 * 32
    x, grad, _ = _state(n, 0)
    direction = -grad
    trial, s, decrease = _session(step_graphs.lbfgs_trial()).run(
        None,
        {
            "x": _image_of(x),
            "direction": _image_of(direction),
            "grad": _image_of(grad),
            "step": np.array(0.25, np.float32),
        },
    )
    expected = np.clip(x + np.float32(0.25) * direction, 0, 1)
    np.testing.assert_array_equal(trial.ravel(), expected)
    np.testing.assert_array_equal(s.ravel(), expected - x)
    assert float(decrease) == pytest.approx(float(grad @ (expected - x)), rel=1e-5)
    grad_next = grad * np.float32(0.5)
    y, scalars = _session(step_graphs.lbfgs_pair()).run(
        None, {"grad_next": _image_of(grad_next), "grad": _image_of(grad), "s": s}
    )
    np.testing.assert_array_equal(y.ravel(), grad_next - grad)
    assert scalars[0] == pytest.approx(float(s.ravel() @ (grad_next - grad)), rel=1e-5)
    assert scalars[1] == pytest.approx(float((grad_next - grad) @ (grad_next - grad)), rel=1e-5)


# -- the placement in a job and in the server's flags


def _job(optimizer: Optimizer) -> Job:
    """Two scales, previews every 5 iterations."""
    content, style = _image((80, 96), 4), _image((64, 64), 5)
    options = Options(
        max_side_px=96, max_evaluations=12, coarse_evaluations=10, scales=2, optimizer=optimizer, preview_every=5
    )
    return Job("placement", "random", (96, 80), content, (Style(style),), options)


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", [Optimizer.ADAM, Optimizer.LBFGS])
def test_a_coarse_to_fine_job_is_the_same_on_either_placement(
    graphs: LossGraphs, model_dir: Path, optimizer: Optimizer
) -> None:
    host_graphs = load_model(model_dir, "cpu", placement="host")
    runs = []
    for model in (host_graphs, graphs):
        events: list[Event] = []
        runs.append((pipeline.stylize(_job(optimizer), model, events.append, _never), events))
    (host, host_events), (device, device_events) = runs
    assert schedule.job_schedule(_job(optimizer))[0].size != (96, 80)  # the handover between scales ran
    assert (device.iterations, device.evaluations, device.stop_reason) == (
        host.iterations, host.evaluations, host.stop_reason,
    )  # fmt: skip
    assert device.losses.total == pytest.approx(host.losses.total, rel=1e-6 if optimizer is Optimizer.ADAM else 1e-2)
    previews = [[e.iteration for e in events if isinstance(e, Preview)] for events in (host_events, device_events)]
    assert previews[0] == previews[1] != []
    if optimizer is Optimizer.ADAM:  # the step is the host's to the bit: so is the encoded result
        assert device.image == host.image
    assert host.timings.step_s == 0.0
    assert device.timings.step_s > 0.0
    for timings in (host.timings, device.timings):
        parts = timings.evaluate_s + timings.step_s + timings.host_s
        assert parts == pytest.approx(timings.optimise_s)


@pytest.mark.slow  # seconds: runs of both placements, or a server per flag
def test_placement_flag_and_auto(model_dir: Path) -> None:
    assert config_from_flags([model_dir]).optimizer_placement == "auto"
    assert config_from_flags([model_dir], "--optimizer-placement", "device").optimizer_placement == "device"
    assert load_model(model_dir, "cpu", placement="auto").placements == AUTO_PLACEMENT["cpu"]
    assert load_model(model_dir, "cpu", placement="host").placements == {"lbfgs": "host", "adam": "host"}
    with pytest.raises(SystemExit):
        config_from_flags([model_dir], "--optimizer-placement", "gpu")


def test_cuda_graphs_are_refused_on_cpu_and_ignored_without_cuda(
    model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """CUDA graphs cannot be tested here beyond this: --device cpu refuses them (exit 2), and a model whose
    sessions did not get CUDA ignores them with a log line."""
    assert main(["--model", str(model_dir), "--device", "cpu", "--cuda-graphs"]) == 2
    with caplog.at_level(logging.WARNING, logger="nst_server.runtime.graphs"):
        graphs = LossGraphs(model_dir, "auto", placement="device", cuda_graphs=True)
    assert not graphs.cuda_graphs
    assert "--cuda-graphs ignored: the sessions run on the CPU" in caplog.text


def _os_threads() -> int:
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("Threads:")).split()[1])


def test_step_sessions_add_no_threads() -> None:
    """Every step session a 40-pair L-BFGS job needs (44 of them) runs on its caller's thread: building them all adds
    no pool threads (a pool per session took a server from 30 to 62 threads after one such job)."""
    before = _os_threads()
    steps = StepGraphs(functools.partial(session_options, 0), ["CPUExecutionProvider"])
    steps.prepare(40)
    assert _os_threads() - before <= 2, "step sessions started threads of their own"
