"""Admission control: running slots, a memory budget and a bounded FIFO queue, on the event loop.

A job starts when a slot is free and its estimated peak memory (``memory.peak_bytes``) fits beside what the
running jobs reserved; otherwise it waits, first come first served (a small job never overtakes a large one, so
none starves). A job that could never fit, even alone, is refused at once. gRPC's own ``maximum_concurrent_rpcs``
would count health checks too, so a busy server would fail its probes; this limits Stylize alone. Everything here
runs on the server's event loop thread.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import AsyncIterator
from typing import Any

from ..domain.errors import JobError, Overloaded, OverMemory, QueueTimeout, ShuttingDown
from ..domain.memory import format_bytes


class Reservation:
    """A job's claim: granted a running slot at once, or a queue place until one frees."""

    def __init__(self, admission: Admission, memory_bytes: int, caller: str) -> None:
        self._admission = admission
        self.memory_bytes = memory_bytes  # the job's estimated peak, held from its grant to its release
        self.caller = caller
        self._changed = asyncio.Event()
        self.granted = False
        self.slot_freed = False  # its running slot given back (its memory may still be held)
        self.released = False
        self.refused: JobError | None = None  # set when the queue is emptied at shutdown: the job never runs
        self._holder: asyncio.Future[Any] | None = None  # work on its behalf that may outlive its caller
        self._caller_done = False

    async def positions(self) -> AsyncIterator[int]:
        """Yield the queue position (1 = next) whenever it changes, until a slot is granted.

        Raises:
            JobError: the reservation was refused while it waited (the server's grace period ended).
            QueueTimeout: it waited --max-queue-wait without a slot.
        """
        limit = self._admission.max_queue_wait_s
        deadline = asyncio.get_running_loop().time() + limit
        while not self.granted:
            if self.refused is not None:
                raise self.refused
            yield self._admission.position(self)
            try:
                timeout = deadline - asyncio.get_running_loop().time() if limit > 0 else None
                await asyncio.wait_for(self._changed.wait(), timeout)
            except TimeoutError:
                if not self.granted:
                    raise QueueTimeout(
                        f"waited {limit:g}s in the queue without a slot (--max-queue-wait {limit:g}); the server is "
                        "busy, retry later or on another replica"
                    ) from None
            self._changed.clear()

    def notify(self) -> None:
        self._changed.set()

    def hold_until(self, work: asyncio.Future[Any]) -> None:
        """Keep the job's memory reserved until ``work`` (a decode or the job's run, on a thread) has really ended,
        even when the caller leaves first: a thread cannot be stopped, and its memory is in use until it returns.
        The running slot is given back when the caller leaves (the next job's run waits for a worker thread anyway,
        and starts only if its memory fits beside what is still held)."""
        self._holder = work
        work.add_done_callback(self._work_done)

    def _work_done(self, work: asyncio.Future[Any]) -> None:
        if work is self._holder and self._caller_done:
            self._give_back()

    def release(self) -> None:
        """The caller is done with it: give the slot (or queue place) and the memory back, the memory only once the
        work it holds has ended; safe to call more than once."""
        self._caller_done = True
        if self._holder is None or self._holder.done():
            self._give_back()
        else:
            self._admission.free_slot(self)

    def _give_back(self) -> None:
        if not self.released:
            self.released = True
            self._admission.release(self)


class Admission:
    """At most ``max_running`` jobs compute, together within ``memory_budget`` bytes (None: no budget); at most
    ``max_queued`` wait; the rest are refused at once."""

    def __init__(
        self, max_running: int, max_queued: int, memory_budget: int | None = None, *, max_per_caller: int = 0,
        max_queue_wait_s: float = 0.0,
    ) -> None:  # fmt: skip
        self.max_running = max_running
        self.max_queued = max_queued
        self.memory_budget = memory_budget
        self.max_per_caller = max_per_caller  # running and queued jobs of one caller together; 0 = no limit
        self.max_queue_wait_s = max_queue_wait_s  # 0 = as long as it takes
        self._callers: Counter[str] = Counter()
        self._held = 0  # granted reservations whose memory is still reserved (their work may outlive the slot)
        self.running = 0
        self.reserved_bytes = 0  # the running jobs' estimates
        self._waiting: deque[Reservation] = deque()
        self._closed = False
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def held(self) -> int:
        """Jobs holding memory: running, or finishing on their thread after their caller left."""
        return self._held

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def reserve(self, memory_bytes: int = 0, breakdown: str = "", caller: str = "") -> Reservation:
        """A reservation for a job estimated to need ``memory_bytes`` at its peak, or OverMemory (it can never
        fit; ``breakdown`` says of what its estimate is made), Overloaded (no room, or ``caller`` has its share)
        or ShuttingDown if none can be had."""
        if self._closed:
            raise ShuttingDown("the server is shutting down and takes no new jobs; retry on another replica")
        if self.memory_budget is not None and memory_bytes > self.memory_budget:
            raise OverMemory(
                f"this job needs an estimated {format_bytes(memory_bytes)} of memory at its peak"
                f"{f' ({breakdown})' if breakdown else ''}, more than the {format_bytes(self.memory_budget)} this "
                "server has for jobs (--max-memory less what the server holds itself); ask for a smaller "
                "max_side_px, fewer or smaller styles (scale), or no init image"
            )
        if self.running + self.queued >= self.max_running + self.max_queued:
            raise Overloaded(
                f"server busy: {self.running} jobs running and {self.queued} queued (limits: --max-concurrent "
                f"{self.max_running}, --max-queue {self.max_queued}); retry later"
            )
        if self.max_per_caller and self._callers[caller] >= self.max_per_caller:
            raise Overloaded(
                f"this caller ({caller}) already has {self._callers[caller]} jobs running or queued, its share of "
                f"this server (--max-jobs-per-caller {self.max_per_caller}); wait for one to end"
            )
        reservation = Reservation(self, memory_bytes, caller)
        self._callers[caller] += 1
        self._idle.clear()
        if not self._waiting and self._fits(reservation):
            self._grant(reservation)
        else:
            self._waiting.append(reservation)
        return reservation

    def _fits(self, reservation: Reservation) -> bool:
        """Whether ``reservation`` may start now: a free slot, and its estimate within what the budget has left."""
        if self.running >= self.max_running:
            return False
        return self.memory_budget is None or self.reserved_bytes + reservation.memory_bytes <= self.memory_budget

    def _grant(self, reservation: Reservation) -> None:
        reservation.granted = True
        self.running += 1
        self.reserved_bytes += reservation.memory_bytes
        self._held += 1

    def position(self, reservation: Reservation) -> int:
        return self._waiting.index(reservation) + 1

    def _forget(self, reservation: Reservation) -> None:
        self._callers[reservation.caller] -= 1
        if not self._callers[reservation.caller]:
            del self._callers[reservation.caller]

    def free_slot(self, reservation: Reservation) -> None:
        """Give back ``reservation``'s running slot, keeping its memory reserved (``Reservation.hold_until``)."""
        if reservation.granted and not reservation.slot_freed:
            reservation.slot_freed = True
            self.running -= 1
            self._promote()

    def release(self, reservation: Reservation) -> None:
        self._forget(reservation)
        if reservation.granted:
            if not reservation.slot_freed:
                reservation.slot_freed = True
                self.running -= 1
            self.reserved_bytes -= reservation.memory_bytes
            self._held -= 1
        else:
            self._waiting.remove(reservation)
        self._promote()

    def _promote(self) -> None:
        while self._waiting and self._fits(self._waiting[0]):  # in order: the head waits for room, the rest behind it
            successor = self._waiting.popleft()
            self._grant(successor)
            successor.notify()
        for waiting in self._waiting:  # everyone behind moved up one place
            waiting.notify()
        if self._held == 0 and not self._waiting:
            self._idle.set()

    def close(self) -> None:
        """Refuse every new reservation from now on."""
        self._closed = True

    def refuse_waiting(self, reason: JobError) -> None:
        """Empty the queue: every waiting job ends with ``reason`` instead of taking a slot that frees later.

        Without this, a job queued at shutdown would start as soon as a cancelled one freed its slot, after
        the server had stopped every running job, and keep the process alive past its grace period.
        """
        while self._waiting:
            reservation = self._waiting.popleft()
            reservation.refused = reason
            reservation.released = True  # nothing left to give back
            self._forget(reservation)
            reservation.notify()
        if self._held == 0:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no job runs or waits."""
        await self._idle.wait()
