"""The gRPC layer: protobuf in, codec and pipeline, protobuf out; every failure becomes a status (one table).

``stylize`` and ``describe`` are the calls themselves, whatever the protocol: transport.connect serves them over
Connect and gRPC-Web with the same admission, limits, metrics and drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message
from nst.events import Event, Preview, Progress, Queued, Result
from nst.v1 import style_transfer_pb2 as pb
from nst.v1 import style_transfer_pb2_grpc as pb_grpc

from ..config import ServerConfig
from ..domain import memory, pipeline
from ..domain.errors import (
    Cancelled,
    InternalError,
    InvalidRequest,
    JobError,
    JobTimeout,
    NonFiniteLoss,
    Overloaded,
    OverMemory,
    QueueTimeout,
    ShuttingDown,
)
from ..domain.job import Job
from ..domain.model import LossModel
from . import codec
from .admission import Admission, Reservation
from .metrics import JobRecorder, Metrics

log = logging.getLogger(__name__)
T = TypeVar("T")
M = TypeVar("M", bound=Message)

# The status each kind of ending reaches the caller with: the one place domain errors meet gRPC.
STATUS: dict[type[JobError], grpc.StatusCode] = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    NonFiniteLoss: grpc.StatusCode.INVALID_ARGUMENT,  # the request's weights are the one known cause
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    QueueTimeout: grpc.StatusCode.RESOURCE_EXHAUSTED,
    JobTimeout: grpc.StatusCode.DEADLINE_EXCEEDED,
    OverMemory: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ShuttingDown: grpc.StatusCode.UNAVAILABLE,
    Cancelled: grpc.StatusCode.CANCELLED,
    InternalError: grpc.StatusCode.INTERNAL,
}


def status_of(error: JobError) -> grpc.StatusCode:
    """The status code ``error`` reaches the caller with; INTERNAL for a kind the table does not know."""
    return STATUS.get(type(error), grpc.StatusCode.INTERNAL)


class _Stop:
    """A job's stop flag, with the reason the job was stopped (caller gone, or server shutdown)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason: JobError = Cancelled("job cancelled by the caller")

    def set(self, reason: JobError | None = None) -> None:
        if reason is not None:
            self.reason = reason
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()


class LatestPreview:
    """A job's events on their way from its worker to its stream, in order, except that a Preview still waiting
    when a newer one arrives is dropped for it: a reader that lags gets the latest picture, not a backlog of them
    (each is a whole encoded image). Progress, Result and the ending are never dropped; Progress is a few dozen
    bytes per iteration, bounded by the job's evaluations. Used on the event loop only."""

    def __init__(self) -> None:
        self._items: deque[Event | BaseException] = deque()
        self._ready = asyncio.Event()
        self.dropped_previews = 0

    def put(self, item: Event | BaseException) -> None:
        if isinstance(item, Preview):
            for waiting in self._items:
                if isinstance(waiting, Preview):  # at most one is ever waiting
                    self._items.remove(waiting)
                    self.dropped_previews += 1
                    break
        self._items.append(item)
        self._ready.set()

    async def get(self) -> Event | BaseException:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()

    def __len__(self) -> int:
        return len(self._items)


@dataclass(frozen=True, slots=True)
class Malformed:
    """What a request's bytes became when they did not parse as its message: the handler answers INVALID_ARGUMENT
    and counts the call. gRPC itself would answer UNKNOWN with a Python class name and log a traceback."""

    message: str
    error: str

    def refusal(self) -> InvalidRequest:
        return InvalidRequest(f"request: not a valid {self.message} ({self.error})")


def lenient(message: type[M]) -> Callable[[bytes], M | Malformed]:
    """A request deserializer that never raises: bytes that are no ``message`` (bad tags, wrong wire types,
    truncation, invalid UTF-8 in a string) become ``Malformed``."""

    def parse(data: bytes) -> M | Malformed:
        try:
            return message.FromString(data)
        except DecodeError as error:
            return Malformed(message.DESCRIPTOR.name, str(error) or "cannot be parsed")

    return parse


def add_to_server(servicer: StyleTransferServicer, server: grpc.aio.Server) -> None:
    """``pb_grpc.add_StyleTransferServiceServicer_to_server`` with lenient deserializers (``lenient``)."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "Stylize": grpc.unary_stream_rpc_method_handler(
            servicer.Stylize,
            request_deserializer=lenient(pb.StylizeRequest),
            response_serializer=pb.StylizeResponse.SerializeToString,
        ),
        "DescribeModel": grpc.unary_unary_rpc_method_handler(
            servicer.DescribeModel,
            request_deserializer=lenient(pb.DescribeModelRequest),
            response_serializer=pb.DescribeModelResponse.SerializeToString,
        ),
    }
    name = pb.DESCRIPTOR.services_by_name["StyleTransferService"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
    server.add_registered_method_handlers(name, handlers)


class _WriteWatch:
    """Ends a stream whose reader stopped reading: a message not taken within ``seconds`` cancels the stream's task
    (its job then stops within an evaluation, and its slot and memory come back)."""

    def __init__(self, seconds: float, job_id: str) -> None:
        self._seconds = seconds
        self._job_id = job_id
        self._task = asyncio.current_task()
        self._timer: asyncio.TimerHandle | None = None
        self.fired = False

    def writing(self) -> None:
        if self._seconds > 0 and self._task is not None:
            self._timer = asyncio.get_running_loop().call_later(self._seconds, self._fire)

    def written(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        self.fired = True
        log.warning("job %s: its reader took no message for %gs (--stall-timeout); ending the call", self._job_id,
                    self._seconds)  # fmt: skip
        assert self._task is not None
        self._task.cancel()


class StyleTransferServicer(pb_grpc.StyleTransferServiceServicer):
    """Stylize and DescribeModel over the loaded models."""

    def __init__(
        self, models: Sequence[LossModel], config: ServerConfig, admission: Admission, metrics: Metrics
    ) -> None:
        self._models = models
        self._config = config
        self._admission = admission
        self._metrics = metrics
        # Jobs run here; admission keeps at most max_concurrent of them busy.
        self._workers = ThreadPoolExecutor(max_workers=config.limits.max_concurrent, thread_name_prefix="job")
        self._running: dict[str, _Stop] = {}
        self._stopped: JobError | None = None  # set by stop_all: a job that starts after it stops at once

    async def DescribeModel(  # noqa: N802 (gRPC's method name)
        self, request: pb.DescribeModelRequest | Malformed, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.DescribeModelResponse:
        if isinstance(request, Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(request.refusal()))
        return self.describe()

    async def Stylize(  # noqa: N802
        self, request: pb.StylizeRequest | Malformed, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.StylizeResponse]:
        try:
            # aclosing: a caller who leaves closes this generator at its yield, and the job's own generator must
            # be closed then too (not whenever the garbage collector finds it), so that the job stops at once.
            async with contextlib.aclosing(self.stylize(request, "grpc", caller_of(context.peer()))) as responses:
                async for response in responses:
                    yield response
        except JobError as error:
            await context.abort(status_of(error), str(error))

    def describe(self) -> pb.DescribeModelResponse:
        """DescribeModel's answer, for every protocol."""
        return codec.describe(self._models, self._config)

    async def stylize(
        self, request: pb.StylizeRequest | Malformed, protocol: str, caller: str
    ) -> AsyncGenerator[pb.StylizeResponse]:
        """One Stylize call whatever the protocol (gRPC here, Connect and gRPC-Web in transport.connect): admission
        (``caller``'s share, ``caller_of``), the job, its events as responses, its log line and metrics (labelled
        with ``protocol``).

        Raises:
            JobError: the job ended without a Result; ``status_of`` gives the status the caller gets.
        """
        job_id = uuid.uuid4().hex[:12]
        received = time.perf_counter()
        outcome, code, job, last = "error", grpc.StatusCode.UNKNOWN, None, None
        recorder = self._metrics.job(protocol)
        watch = _WriteWatch(self._config.stall_s, job_id)
        try:
            if isinstance(request, Malformed):
                raise request.refusal()
            loop = asyncio.get_running_loop()
            # The cheap checks and the memory estimate, from the headers: nothing is decoded before admission.
            planned = await loop.run_in_executor(None, _guarded, job_id, codec.plan_request, request, self._models,
                                                 self._config)  # fmt: skip
            reservation = self._admission.reserve(planned.peak_bytes, _breakdown(planned), caller)
            try:
                async for position in reservation.positions():
                    watch.writing()
                    yield codec.to_response(Queued(job_id, position))
                    watch.written()
                # Decoded only now, within the job's reservation: a queued job holds its encoded bytes alone.
                decoding = loop.run_in_executor(None, _guarded, job_id, codec.job_from_request, request, job_id,
                                                self._models, self._config, planned)  # fmt: skip
                reservation.hold_until(decoding)  # a caller who leaves mid-decode frees nothing until it has ended
                job = await decoding
                async for event in self._run(job, reservation, time.perf_counter() - received, recorder):
                    last = event if isinstance(event, Progress | Result) else last
                    if isinstance(event, Result):
                        # Settled before the yield: a caller that closes the stream as soon as it has the Result
                        # closes this generator at that yield, and the job must still count as ok.
                        outcome, code = "ok", grpc.StatusCode.OK
                    watch.writing()
                    yield codec.to_response(event)
                    watch.written()
            finally:
                reservation.release()  # at once, or when the decode or run it holds has ended
        except JobError as error:
            outcome, code = type(error).__name__, status_of(error)
            raise
        except (asyncio.CancelledError, GeneratorExit):
            # A caller who leaves cancels the RPC's task: inside our own await that raises CancelledError here;
            # inside grpc's write of a yielded message the task ends and this generator is closed (GeneratorExit).
            if watch.fired:  # the reader stopped reading: even a Result being written was never taken
                outcome, code = "stalled", grpc.StatusCode.CANCELLED
            elif outcome != "ok":  # leaving after the Result was handed to gRPC is the caller's business
                outcome, code = "cancelled", grpc.StatusCode.CANCELLED
            raise
        finally:
            watch.written()
            seconds = time.perf_counter() - received
            _log_job(job_id, job, last, outcome, seconds, protocol)
            recorder.finished(outcome, code, seconds)

    async def _run(
        self, job: Job, reservation: Reservation, queued_s: float, recorder: JobRecorder
    ) -> AsyncIterator[Event]:
        """Run the job on a worker thread and relay its events; stop it if this coroutine is cancelled."""
        loop = asyncio.get_running_loop()
        events = LatestPreview()
        stop = _Stop()

        def emit(event: Event | BaseException) -> None:
            if not isinstance(event, BaseException):
                recorder.event(event)  # as computed, on the worker: a reader that lags or leaves changes nothing
            loop.call_soon_threadsafe(events.put, event)

        model = codec.pick_model(job.model, self._models)
        if self._stopped is not None:  # granted its slot just before stop_all, but only running now
            stop.set(self._stopped)
        work = loop.run_in_executor(self._workers, _run_job, job, model, emit, stop, queued_s)
        reservation.hold_until(work)
        self._running[job.job_id] = stop
        limit = self._config.max_job_s
        timer = loop.call_later(limit, stop.set, JobTimeout(
            f"ran for {limit:g}s, this server's limit (--max-job-duration {limit:g}); ask for fewer evaluations or a "
            "smaller size")) if limit > 0 else None  # fmt: skip
        try:
            while True:
                event = await events.get()
                if isinstance(event, BaseException):
                    raise event
                yield event
                if isinstance(event, Result):
                    return
        finally:
            if timer is not None:
                timer.cancel()
            stop.set()  # the caller left or the job ended: either way nothing more to compute
            del self._running[job.job_id]

    def stop_all(self, reason: JobError) -> None:
        """Stop every running job at its next evaluation and refuse every queued one; their callers get ``reason``."""
        self._stopped = reason
        self._admission.refuse_waiting(reason)
        for stop in self._running.values():
            stop.set(reason)


def _guarded(job_id: str, read: Callable[..., T], *args: Any) -> T:
    """``read(*args)`` (codec's planning or decoding of a request); a bug in it reaches the caller as INTERNAL
    naming the job, as one in a run does.

    Without this an unexpected exception while reading a request (a Pillow plugin's own error type, say) would
    leave the handler and reach the caller as UNKNOWN carrying Python's repr of it.
    """
    try:
        return read(*args)
    except JobError:
        raise
    except Exception as error:
        log.exception("reading the request of job %s failed", job_id)
        raise InternalError(
            f"internal error in job {job_id} while reading the request: {type(error).__name__}"
        ) from error


def caller_of(peer: str | None) -> str:
    """Who a call is from, for per-caller limits: the peer's address without its port, as gRPC spells a peer
    ("ipv4:10.0.0.7:53422" -> "ipv4:10.0.0.7"). An HTTP server's "host:port" is spelt the same way, so that a
    client counts as one caller on both ports."""
    peer = peer or "unknown"
    kind, _, address = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        return f"{kind}:{address.rsplit(':', 1)[0]}"
    if kind in ("unix", "unknown") or not address:
        return peer
    host = peer.rsplit(":", 1)[0]  # an HTTP client address: "10.0.0.7:53422" or "::1:40000"
    return f"ipv6:[{host}]" if ":" in host else f"ipv4:{host}"


def _breakdown(planned: codec.PlannedJob) -> str:
    """The largest terms of a job's memory estimate, for the message that refuses it."""
    terms = sorted(memory.parts(planned.plan).items(), key=lambda item: -item[1])[:3]
    return ", ".join(f"{name} {memory.format_bytes(size)}" for name, size in terms)


def _run_job(
    job: Job, model: LossModel, emit: Callable[[Event | BaseException], None], stop: _Stop, queued_s: float
) -> None:
    """Worker-thread body: every ending, good or bad, reaches the stream as its last item."""
    try:
        pipeline.stylize(job, model, emit, stop.is_set, queued_s)
    except Cancelled:
        emit(stop.reason)
    except JobError as error:
        emit(error)
    except Exception as error:  # an unexpected bug: log the trace here, send the caller one line
        log.exception("job %s failed", job.job_id)
        emit(InternalError(f"internal error in job {job.job_id}: {type(error).__name__}: {error}"))
    finally:
        # After the caller has its last event: an idle server holds its models, not its largest job's tensors.
        try:
            model.release_memory()
        except Exception:  # the job's outcome is already sent; a failure here is only worth a log line
            log.exception("releasing memory after job %s failed", job.job_id)


def _log_job(
    job_id: str, job: Job | None, last: Progress | Result | None, outcome: str, seconds: float, protocol: str
) -> None:
    """One logfmt line per job, whatever its ending."""
    fields: dict[str, object] = {"id": job_id, "outcome": outcome, "seconds": f"{seconds:.3f}", "protocol": protocol}
    if job is not None:
        fields |= {"model": job.model, "size": f"{job.size[0]}x{job.size[1]}"}
    if last is not None:
        iterations = last.iterations if isinstance(last, Result) else last.iteration
        fields |= {"iterations": iterations, "evaluations": last.evaluations}
    log.info("job %s", " ".join(f"{key}={value}" for key, value in fields.items()))
