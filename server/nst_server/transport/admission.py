"""Admission control: a fixed number of running slots and a bounded FIFO queue, on the event loop.

gRPC's own ``maximum_concurrent_rpcs`` would count health checks too, so a busy server would fail its
probes; this limits Stylize alone. Everything here runs on the server's event loop thread.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator

from ..domain.errors import JobError, Overloaded, ShuttingDown


class Reservation:
    """A job's claim: granted a running slot at once, or a queue place until one frees."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self._changed = asyncio.Event()
        self.granted = False
        self.released = False
        self.refused: JobError | None = None  # set when the queue is emptied at shutdown: the job never runs

    async def positions(self) -> AsyncIterator[int]:
        """Yield the queue position (1 = next) whenever it changes, until a slot is granted.

        Raises:
            JobError: the reservation was refused while it waited (the server's grace period ended).
        """
        while not self.granted:
            if self.refused is not None:
                raise self.refused
            yield self._admission.position(self)
            await self._changed.wait()
            self._changed.clear()

    def notify(self) -> None:
        self._changed.set()

    def release(self) -> None:
        """Give the slot (or queue place) back; safe to call more than once."""
        if not self.released:
            self.released = True
            self._admission.release(self)


class Admission:
    """At most ``max_running`` jobs compute; at most ``max_queued`` wait; the rest are refused at once."""

    def __init__(self, max_running: int, max_queued: int) -> None:
        self.max_running = max_running
        self.max_queued = max_queued
        self.running = 0
        self._waiting: deque[Reservation] = deque()
        self._closed = False
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def reserve(self) -> Reservation:
        """A reservation, or Overloaded/ShuttingDown if none can be had."""
        if self._closed:
            raise ShuttingDown("the server is shutting down and takes no new jobs; retry on another replica")
        if self.running + self.queued >= self.max_running + self.max_queued:
            raise Overloaded(
                f"server busy: {self.running} jobs running and {self.queued} queued (limits: --max-concurrent "
                f"{self.max_running}, --max-queue {self.max_queued}); retry later"
            )
        reservation = Reservation(self)
        self._idle.clear()
        if self.running < self.max_running:
            reservation.granted = True
            self.running += 1
        else:
            self._waiting.append(reservation)
        return reservation

    def position(self, reservation: Reservation) -> int:
        return self._waiting.index(reservation) + 1

    def release(self, reservation: Reservation) -> None:
        if reservation.granted:
            self.running -= 1
        else:
            self._waiting.remove(reservation)
        while self._waiting and self.running < self.max_running:
            successor = self._waiting.popleft()
            successor.granted = True
            self.running += 1
            successor.notify()
        for waiting in self._waiting:  # everyone behind moved up one place
            waiting.notify()
        if self.running == 0 and not self._waiting:
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
            reservation.notify()
        if self.running == 0:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no job runs or waits."""
        await self._idle.wait()
