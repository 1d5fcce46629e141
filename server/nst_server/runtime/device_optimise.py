"""The optimisers with their state on the evaluator's device: ``--optimizer-placement device``.

The image, the gradient and every piece of optimiser state (Adam's moments and step counter; L-BFGS's direction,
trial point and (s, y) history) are OrtValues on the loss session's device. The loss graph and the step graphs of
``step_graphs`` run on them with IO binding, each output bound as the next run's input, so per iteration only
scalars cross to Python: the four losses, and L-BFGS's descent flag, step length, grad.s, s.y and y.y, which
drive the same decisions as in ``optimise``: direction restart, line search acceptance, history update,
stop reasons. The image is copied to the host only when a preview or the result asks for it (``Step.x``,
``Outcome.x``).

The iterates are those of ``optimise.lbfgs`` and ``optimise.adam`` to float32 round-off
(tests/server/runtime/test_device_optimise.py), and the host's own work per iteration is a handful of bindings and
scalar reads (``Timings.host_s``; BENCHMARKS.md, "Optimiser placement").
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from nst import manifest as mf
from nst.events import Losses, StopReason

from ..domain.errors import Cancelled
from ..domain.optimise import (
    ARMIJO,
    CURVATURE_EPSILON,
    MAX_BACKTRACKS,
    NOT_EVALUATED,
    Outcome,
    Run,
    Step,
    adam_schedule,
    check_finite,
)
from . import step_graphs
from .sessions import CUDA_PROVIDER, SessionEvaluator

STEP_THREADS = 1  # per step session: the calling thread, no pool (StepGraphs says why)
BETA1, BETA2, EPSILON = 0.9, 0.999, 1e-8  # optimise.adam's defaults, the only ones the server uses


class StepGraphs:
    """The step graphs' sessions for one model's provider, built on first use and shared by jobs.

    L-BFGS's direction graph unrolls its two-loop recursion, so there is one per number of pairs in use: up to
    MAX_LBFGS_HISTORY + 1 of them. Each runs on the calling thread alone (STEP_THREADS): with a pool of its own per
    session, one job with 40 pairs took the process from 30 to 62 threads (one per core per session on a larger
    machine). The steps are element-wise passes and dot products over the image, small beside an evaluation.
    """

    def __init__(
        self,
        options: Callable[[], ort.SessionOptions],
        providers: list[str],
        cuda_graphs: bool = False,
        provider_options: list[dict[str, str]] | None = None,
    ) -> None:
        """``provider_options``: one dict per provider, as InferenceSession takes them (sessions.provider_options)."""
        self._options, self._providers = options, providers
        self._provider_options = provider_options or [{} for _ in providers]
        self.cuda_graphs = cuda_graphs and providers[0] == CUDA_PROVIDER
        self._sessions: dict[str, ort.InferenceSession] = {}
        self._lock = threading.Lock()

    def _get(self, key: str, build: Callable[[], onnx.ModelProto]) -> ort.InferenceSession:
        with self._lock:
            if key not in self._sessions:
                model = build().SerializeToString()
                self._sessions[key] = ort.InferenceSession(
                    model, self._session_options(), providers=self._providers, provider_options=self._provider_options
                )
            return self._sessions[key]

    @property
    def adam(self) -> ort.InferenceSession:
        return self._get("adam", step_graphs.adam_step)

    @property
    def trial(self) -> ort.InferenceSession:
        return self._get("trial", step_graphs.lbfgs_trial)

    @property
    def pair(self) -> ort.InferenceSession:
        return self._get("pair", step_graphs.lbfgs_pair)

    def direction(self, pairs: int) -> ort.InferenceSession:
        return self._get(f"direction_{pairs}", lambda: step_graphs.lbfgs_direction(pairs))

    def captured_adam(self) -> ort.InferenceSession:
        """An Adam step session of one job's own, with CUDA graph capture on: a captured session must not run
        for two jobs at once, and each graph replays the buffers it was captured with."""
        cuda_options = {**self._provider_options[self._providers.index(CUDA_PROVIDER)], "enable_cuda_graph": "1"}
        providers: list[str | tuple[str, dict[str, str]]] = [(CUDA_PROVIDER, cuda_options)]
        model = step_graphs.adam_step().SerializeToString()
        return ort.InferenceSession(model, self._session_options(), providers=providers)

    def _session_options(self) -> ort.SessionOptions:
        options = self._options()
        options.intra_op_num_threads = STEP_THREADS
        return options

    def prepare(self, history: int) -> None:
        """Build every session a job with up to ``history`` pairs needs, so that no job waits for one (about
        0.1 s each; longer histories get theirs when first asked for)."""
        self._get("adam", step_graphs.adam_step)
        self._get("trial", step_graphs.lbfgs_trial)
        self._get("pair", step_graphs.lbfgs_pair)
        for pairs in range(history + 1):
            self.direction(pairs)


# Bindings one L-BFGS run keeps (``_LbfgsState._binding``): in the steady state about 2 (history + 1) for the
# direction graph and as many for the pair and trial graphs; each holds only references to buffers that exist anyway.
_MAX_BINDINGS = 256


def _bind_host_output(binding: ort.IOBinding, name: str, buffer: npt.NDArray[np.float32]) -> None:
    """Bind ``name`` to ``buffer`` in host memory: how the scalars reach Python without an allocation per run."""
    binding.bind_output(name, "cpu", 0, buffer.dtype, list(buffer.shape), buffer.ctypes.data)


class DeviceOptimiser:
    """``optimise.Optimiser`` with the state on the device of ``evaluator``'s session (an ``optimise.Optimiser``)."""

    def __init__(self, steps: StepGraphs, evaluator: SessionEvaluator) -> None:
        self._steps = steps
        self._session = evaluator.session
        self._device = ("cuda", 0) if evaluator.device.startswith("cuda") else ("cpu", 0)
        self._shape = list(evaluator.shape)
        self._loss = self._session.io_binding()
        for name, value in evaluator.feeds.items():
            self._loss.bind_ortvalue_input(name, value)
        self._losses = {name: np.zeros((), np.float32) for name in mf.LOSS_OUTPUTS[:-1]}
        for name, buffer in self._losses.items():
            _bind_host_output(self._loss, name, buffer)
        self._scalars = np.zeros(3, np.float32)  # the direction graph's; the trial and pair graphs use a prefix
        self._step = np.zeros((), np.float32)
        self._step_value = ort.OrtValue.ortvalue_from_numpy(self._step)  # host memory, shared with self._step
        self._step_decrease = np.zeros((), np.float32)
        self.evaluate_s = 0.0
        self.step_s = 0.0

    # -- device buffers and runs

    def _image(self) -> ort.OrtValue:
        return ort.OrtValue.ortvalue_from_shape_and_type(self._shape, np.float32, *self._device)

    def _upload(self, array: npt.NDArray[np.floating]) -> ort.OrtValue:
        value = self._image()
        value.update_inplace(np.ascontiguousarray(array.reshape(self._shape), np.float32))
        return value

    @staticmethod
    def _download(value: ort.OrtValue) -> Callable[[], npt.NDArray[np.float32]]:
        return lambda: np.asarray(value.numpy()).ravel()

    def _run_step(
        self, session: ort.InferenceSession, binding: ort.IOBinding, options: ort.RunOptions | None = None
    ) -> None:
        start = time.perf_counter()
        session.run_with_iobinding(binding, options)
        self.step_s += time.perf_counter() - start

    def _evaluate(self, image: ort.OrtValue, grad: ort.OrtValue) -> Losses:
        self._loss.bind_ortvalue_input(mf.IMAGE_INPUT, image)
        self._loss.bind_ortvalue_output("grad", grad)
        start = time.perf_counter()
        self._session.run_with_iobinding(self._loss)
        self.evaluate_s += time.perf_counter() - start
        out = self._losses
        return Losses(float(out["loss"]), float(out["content_loss"]), float(out["style_loss"]), float(out["tv_loss"]))

    # -- Adam

    def adam(self, run: Run, learning_rate: float) -> Outcome:
        """``optimise.adam``: x, moments and counter double-buffered (A -> B, B -> A), two bindings made once.

        With CUDA graphs, each binding is one captured graph (gpu_graph_id 0 and 1) of a session of this scale's.
        """
        captured = self._steps.cuda_graphs
        session = self._steps.captured_adam() if captured else self._steps.adam
        zeros = np.zeros(self._shape, np.float32)
        budget = run.budget
        x = [self._upload(run.x0), self._image()]
        first, second = [self._upload(zeros), self._image()], [self._upload(zeros), self._image()]
        counter = [ort.OrtValue.ortvalue_from_numpy(np.zeros(1, np.int64), *self._device) for _ in range(2)]
        grad = self._image()
        rows = [adam_schedule(learning_rate, BETA1, BETA2, t) for t in range(1, max(budget, 1) + 1)]
        schedule = ort.OrtValue.ortvalue_from_numpy(np.array(rows, np.float32).reshape(-1, 2), *self._device)
        hyper = np.array([BETA1, 1 - BETA1, BETA2, 1 - BETA2, EPSILON], np.float32)
        constants = ort.OrtValue.ortvalue_from_numpy(hyper, *self._device)
        bindings = []
        for a, b in ((0, 1), (1, 0)):
            binding = session.io_binding()
            inputs = (x[a], grad, first[a], second[a], counter[a], schedule, constants)
            for name, value in zip(step_graphs.ADAM_INPUTS, inputs, strict=True):
                binding.bind_ortvalue_input(name, value)
            for name, value in zip(step_graphs.ADAM_OUTPUTS, (x[b], first[b], second[b], counter[b]), strict=True):
                binding.bind_ortvalue_output(name, value)
            bindings.append(binding)
        run_options = [ort.RunOptions() for _ in bindings]
        if captured:
            for graph_id, options in enumerate(run_options):
                options.add_run_config_entry("gpu_graph_id", str(graph_id))
        now, losses = 0, NOT_EVALUATED
        for step in range(1, budget + 1):
            if run.should_stop():
                raise Cancelled("job cancelled")
            losses = self._evaluate(x[now], grad)
            check_finite(losses, step)
            run.on_step(Step(step, step, losses, self._download(x[now])))
            if run.converged(losses.total):
                return Outcome(self._download(x[now])(), losses, step, step, StopReason.CONVERGED)
            if step == budget:
                break
            self._run_step(session, bindings[now], run_options[now])
            now = 1 - now
        return Outcome(self._download(x[now])(), losses, budget, budget)

    # -- L-BFGS

    def lbfgs(self, run: Run, history: int, h0_gamma: float | None = None) -> Outcome:
        """``optimise.lbfgs``, the same decisions taken from the step graphs' scalars.

        The history has one spare (s, y) row, so that a new pair is never written over a pair the direction
        graph reads in the same run; the oldest pair is dropped where the host overwrites it.
        """
        state = _LbfgsState(self, history)
        budget, converged = run.budget, run.converged
        evaluations = iterations = 0

        def evaluate(point: ort.OrtValue) -> Losses:
            nonlocal evaluations
            if run.should_stop():
                raise Cancelled("job cancelled")
            evaluations += 1
            losses = self._evaluate(point, state.grad_next)
            check_finite(losses, evaluations)
            return losses

        x, trial = self._upload(run.x0), self._image()
        losses = evaluate(x)
        state.grad, state.grad_next = state.grad_next, state.grad
        converged(losses.total)  # the starting loss: the first of the window (never enough alone to stop)

        def stop(reason: StopReason) -> Outcome:
            return Outcome(self._download(x)(), losses, iterations, evaluations, reason, state.gamma)

        while evaluations < budget:
            row = state.free_row()
            descent, step, decrease = state.direction(x, trial, row)
            if not descent:  # H lost positivity on the free set: the graph took the projected gradient
                state.order.clear()
            full = len(state.order) == history
            if not state.order and h0_gamma is not None:  # a known gamma for H0, not a unit step
                step = h0_gamma
                decrease = state.trial(x, trial, row, step)
            for _ in range(MAX_BACKTRACKS):
                if evaluations >= budget:
                    return stop(StopReason.BUDGET)
                if not decrease < 0.0:
                    return stop(StopReason.CONVERGED)
                candidate = evaluate(trial)
                if candidate.total <= losses.total + ARMIJO * decrease:
                    break
                step *= 0.5
                decrease = state.trial(x, trial, row, step)
            else:  # no step lowers the loss: as far as it goes
                return stop(StopReason.CONVERGED)
            state.keep(row, dropping_oldest=full)
            x, trial = trial, x
            state.grad, state.grad_next = state.grad_next, state.grad
            losses = candidate
            iterations += 1
            run.on_step(Step(iterations, evaluations, losses, self._download(x)))
            if converged(losses.total):
                return stop(StopReason.CONVERGED)
        return stop(StopReason.BUDGET)


class _LbfgsState:
    """L-BFGS's device buffers and the host's scalars about them: which rows hold pairs, rho and y.y per row."""

    def __init__(self, owner: DeviceOptimiser, history: int) -> None:
        self._owner = owner
        self._steps = owner._steps
        image = owner._image
        self.grad, self.grad_next, self.direction_buffer = image(), image(), image()
        self.s = [image() for _ in range(history + 1)]
        self.y = [image() for _ in range(history + 1)]
        self.order: list[int] = []  # rows in use, oldest first
        self.rho = np.zeros(history + 1)  # 1 / s.y per row, float64 as on the host
        self.yy = np.zeros(history + 1)
        self._scalars = owner._scalars
        # rho of the pairs in use, newest first, per pair count, in host memory
        self._rho = {pairs: np.zeros(pairs, np.float32) for pairs in range(1, history + 1)}
        self._rho_values = {pairs: ort.OrtValue.ortvalue_from_numpy(rho) for pairs, rho in self._rho.items()}
        self._bindings: dict[tuple[object, ...], ort.IOBinding] = {}

    def _binding(
        self, key: tuple[object, ...], session: ort.InferenceSession, bind: Callable[[ort.IOBinding], None]
    ) -> ort.IOBinding:
        """The binding of ``session`` to the buffers that ``key`` names, made by ``bind`` the first time.

        Buffers rotate through few arrangements (x and trial swap, as do grad and grad_next; the pairs' rows turn
        over as a ring), so a binding made once serves again and again: binding is most of the host's work per
        iteration. Bounded: a run that keeps rejecting pairs can make new arrangements without end.
        """
        binding = self._bindings.get(key)
        if binding is None:
            if len(self._bindings) >= _MAX_BINDINGS:
                self._bindings.clear()
            binding = self._bindings[key] = session.io_binding()
            bind(binding)
        return binding

    def free_row(self) -> int:
        return next(row for row in range(len(self.s)) if row not in self.order)

    @property
    def gamma(self) -> float | None:
        """H0 = gamma I: gamma is s.y / y.y of the newest pair (Nocedal and Wright, eq. 7.20); None before one."""
        if not self.order:
            return None
        newest = self.order[-1]
        return 1.0 / (float(self.rho[newest]) * float(self.yy[newest]))

    def direction(self, x: ort.OrtValue, trial: ort.OrtValue, row: int) -> tuple[bool, float, float]:
        """Direction and first trial point (s into ``row``); (descent, step, grad.s)."""
        pairs = len(self.order)
        session = self._steps.direction(pairs)
        newest_first = tuple(reversed(self.order))
        grad = self.grad

        def bind(binding: ort.IOBinding) -> None:
            inputs = [x, grad, *(self.s[r] for r in newest_first), *(self.y[r] for r in newest_first)]
            for name, value in zip(step_graphs.direction_inputs(pairs), inputs, strict=False):  # rho: below
                binding.bind_ortvalue_input(name, value)
            binding.bind_ortvalue_output("direction", self.direction_buffer)
            binding.bind_ortvalue_output("trial", trial)
            binding.bind_ortvalue_output("s", self.s[row])
            _bind_host_output(binding, "scalars", self._scalars)

        binding = self._binding(("direction", newest_first, id(x), id(grad), id(trial), row), session, bind)
        if pairs:  # bound anew each run: a host value bound to a device input is copied when bound, not when run
            self._rho[pairs][:] = self.rho[list(newest_first)]
            binding.bind_ortvalue_input("rho", self._rho_values[pairs])
        self._owner._run_step(session, binding)
        descent, step, decrease = (float(v) for v in self._scalars)
        return descent > 0.0, step, decrease

    def trial(self, x: ort.OrtValue, trial: ort.OrtValue, row: int, step: float) -> float:
        """The trial point x + step * direction, projected (s into ``row``); grad.s."""
        session = self._steps.trial
        grad, owner = self.grad, self._owner

        def bind(binding: ort.IOBinding) -> None:
            for name, value in zip(step_graphs.TRIAL_INPUTS[:3], (x, self.direction_buffer, grad), strict=True):
                binding.bind_ortvalue_input(name, value)
            binding.bind_ortvalue_output("trial", trial)
            binding.bind_ortvalue_output("s", self.s[row])
            _bind_host_output(binding, "decrease", owner._step_decrease)

        binding = self._binding(("trial", id(x), id(grad), id(trial), row), session, bind)
        owner._step[...] = step
        binding.bind_ortvalue_input("step", owner._step_value)  # anew each run, as rho in ``direction``
        owner._run_step(session, binding)
        return float(owner._step_decrease)

    def keep(self, row: int, dropping_oldest: bool) -> None:
        """y = grad_next - grad into ``row``; keep the pair when its curvature is positive, as ``_Pairs.keep``."""
        session = self._steps.pair
        grad, grad_next, pair = self.grad, self.grad_next, self._scalars[:2]

        def bind(binding: ort.IOBinding) -> None:
            for name, value in zip(step_graphs.PAIR_INPUTS, (grad_next, grad, self.s[row]), strict=True):
                binding.bind_ortvalue_input(name, value)
            binding.bind_ortvalue_output("y", self.y[row])
            _bind_host_output(binding, "scalars", pair)

        self._owner._run_step(session, self._binding(("pair", id(grad_next), id(grad), row), session, bind))
        if dropping_oldest:  # where the host wrote this pair over its oldest: gone whether or not this one stays
            self.order.pop(0)
        sy, yy = float(pair[0]), float(pair[1])
        if sy > CURVATURE_EPSILON * yy:
            self.rho[row], self.yy[row] = 1.0 / sy, yy
            self.order.append(row)
