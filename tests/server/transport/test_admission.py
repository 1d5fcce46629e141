"""Admission control: running slots, a bounded FIFO queue, refusals, and shutdown."""

from __future__ import annotations

import asyncio

import pytest
from nst_server.domain.errors import Overloaded, ShuttingDown
from nst_server.transport.admission import Admission


def test_slots_then_queue_then_refusal() -> None:
    """Up to max_running start at once, up to max_queued wait, and the next is refused naming both limits."""
    admission = Admission(max_running=2, max_queued=1)
    first, second, third = admission.reserve(), admission.reserve(), admission.reserve()
    assert (first.granted, second.granted, third.granted) == (True, True, False)
    with pytest.raises(Overloaded, match="--max-concurrent 2, --max-queue 1"):
        admission.reserve()
    assert (admission.running, admission.queued) == (2, 1)


def test_release_promotes_the_queue_in_order() -> None:
    """A freed slot goes to the longest-waiting job; the others move up one place."""
    admission = Admission(max_running=1, max_queued=3)
    running, waiting = admission.reserve(), [admission.reserve() for _ in range(3)]
    assert [admission.position(w) for w in waiting] == [1, 2, 3]
    running.release()
    assert [w.granted for w in waiting] == [True, False, False]
    assert [admission.position(w) for w in waiting[1:]] == [1, 2]


def test_release_is_idempotent_and_frees_queue_places() -> None:
    """Releasing twice counts once; a queued job that leaves gives its place back."""
    admission = Admission(max_running=1, max_queued=1)
    running, queued = admission.reserve(), admission.reserve()
    queued.release()
    queued.release()
    assert (admission.running, admission.queued) == (1, 0)
    running.release()
    running.release()
    assert (admission.running, admission.queued) == (0, 0)


def test_positions_stream_until_granted() -> None:
    """A queued reservation yields its position, then stops once a slot is granted."""

    async def scenario() -> list[int]:
        admission = Admission(max_running=1, max_queued=2)
        running, queued = admission.reserve(), admission.reserve()
        seen: list[int] = []

        async def watch() -> None:
            async for position in queued.positions():
                seen.append(position)

        watcher = asyncio.create_task(watch())
        await asyncio.sleep(0)
        running.release()
        await asyncio.wait_for(watcher, timeout=5)
        assert queued.granted
        return seen

    assert asyncio.run(scenario()) == [1]


def test_close_refuses_new_jobs_and_idle_waits_for_the_last() -> None:
    """After close() nothing new is admitted; wait_idle returns once the running job releases."""

    async def scenario() -> None:
        admission = Admission(max_running=1, max_queued=1)
        running = admission.reserve()
        admission.close()
        with pytest.raises(ShuttingDown):
            admission.reserve()
        idle = asyncio.create_task(admission.wait_idle())
        await asyncio.sleep(0)
        assert not idle.done()
        running.release()
        await asyncio.wait_for(idle, timeout=5)

    asyncio.run(scenario())
