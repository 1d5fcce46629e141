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
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from nst.events import Event, Progress, Queued, Result
from nst.v1 import style_transfer_pb2 as pb
from nst.v1 import style_transfer_pb2_grpc as pb_grpc

from ..config import ServerConfig
from ..domain import pipeline
from ..domain.errors import Cancelled, InternalError, InvalidRequest, JobError, Overloaded, ShuttingDown
from ..domain.job import Job
from ..domain.model import LossModel
from . import codec
from .admission import Admission, Reservation
from .metrics import Metrics

log = logging.getLogger(__name__)

# The status each kind of ending reaches the caller with: the one place domain errors meet gRPC.
STATUS: dict[type[JobError], grpc.StatusCode] = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
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
        self, request: pb.DescribeModelRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.DescribeModelResponse:
        return self.describe()

    async def Stylize(  # noqa: N802
        self, request: pb.StylizeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.StylizeResponse]:
        try:
            # aclosing: a caller who leaves closes this generator at its yield, and the job's own generator must
            # be closed then too (not whenever the garbage collector finds it), so that the job stops at once.
            async with contextlib.aclosing(self.stylize(request, "grpc")) as responses:
                async for response in responses:
                    yield response
        except JobError as error:
            await context.abort(status_of(error), str(error))

    def describe(self) -> pb.DescribeModelResponse:
        """DescribeModel's answer, for every protocol."""
        return codec.describe(self._models, self._config)

    async def stylize(self, request: pb.StylizeRequest, protocol: str) -> AsyncGenerator[pb.StylizeResponse]:
        """One Stylize call whatever the protocol (gRPC here, Connect and gRPC-Web in transport.connect): admission,
        the job, its events as responses, its log line and metrics (labelled with ``protocol``).

        Raises:
            JobError: the job ended without a Result; ``status_of`` gives the status the caller gets.
        """
        job_id = uuid.uuid4().hex[:12]
        received = time.perf_counter()
        outcome, code, job, last = "error", grpc.StatusCode.UNKNOWN, None, None
        recorder = self._metrics.job(protocol)
        try:
            reservation = self._admission.reserve()
            try:
                loop = asyncio.get_running_loop()
                job = await loop.run_in_executor(None, _job_from_request, request, job_id, self._models, self._config)
                async for position in reservation.positions():
                    yield codec.to_response(Queued(job_id, position))
                async for event in self._run(job, reservation, time.perf_counter() - received):
                    last = event if isinstance(event, Progress | Result) else last
                    recorder.event(event)
                    if isinstance(event, Result):
                        # Settled before the yield: a caller that closes the stream as soon as it has the Result
                        # closes this generator at that yield, and the job must still count as ok.
                        outcome, code = "ok", grpc.StatusCode.OK
                    yield codec.to_response(event)
            finally:
                reservation.release()  # no-op once the job's own release ran; frees a queue place otherwise
        except JobError as error:
            outcome, code = type(error).__name__, status_of(error)
            raise
        except (asyncio.CancelledError, GeneratorExit):
            # A caller who leaves cancels the RPC's task: inside our own await that raises CancelledError here;
            # inside the write of a yielded message the task ends and this generator is closed (GeneratorExit).
            if outcome != "ok":  # leaving after the Result was handed over is the caller's business
                outcome, code = "cancelled", grpc.StatusCode.CANCELLED
            raise
        finally:
            seconds = time.perf_counter() - received
            _log_job(job_id, job, last, outcome, seconds, protocol)
            recorder.finished(outcome, code, seconds)

    async def _run(self, job: Job, reservation: Reservation, queued_s: float) -> AsyncIterator[Event]:
        """Run the job on a worker thread and relay its events; stop it if this coroutine is cancelled."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event | BaseException] = asyncio.Queue()
        stop = _Stop()

        def emit(event: Event | BaseException) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        model = codec.pick_model(job.model, self._models)
        if self._stopped is not None:  # granted its slot just before stop_all, but only running now
            stop.set(self._stopped)
        work = loop.run_in_executor(self._workers, _run_job, job, model, emit, stop, queued_s)
        work.add_done_callback(lambda _: reservation.release())
        self._running[job.job_id] = stop
        try:
            while True:
                event = await events.get()
                if isinstance(event, BaseException):
                    raise event
                yield event
                if isinstance(event, Result):
                    return
        finally:
            stop.set()  # the caller left or the job ended: either way nothing more to compute
            del self._running[job.job_id]

    def stop_all(self, reason: JobError) -> None:
        """Stop every running job at its next evaluation and refuse every queued one; their callers get ``reason``."""
        self._stopped = reason
        self._admission.refuse_waiting(reason)
        for stop in self._running.values():
            stop.set(reason)


def _job_from_request(
    request: pb.StylizeRequest, job_id: str, models: Sequence[LossModel], config: ServerConfig
) -> Job:
    """codec.job_from_request; a bug in it reaches the caller as INTERNAL naming the job, as one in a run does.

    Without this an unexpected exception while reading a request (a Pillow plugin's own error type, say) would
    leave the handler and reach the caller as UNKNOWN carrying Python's repr of it.
    """
    try:
        return codec.job_from_request(request, job_id, models, config)
    except JobError:
        raise
    except Exception as error:
        log.exception("reading the request of job %s failed", job_id)
        raise InternalError(
            f"internal error in job {job_id} while reading the request: {type(error).__name__}"
        ) from error


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
