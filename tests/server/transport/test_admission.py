"""Admission control: running slots, a bounded FIFO queue, refusals, and shutdown."""

from __future__ import annotations

import asyncio

import pytest
from nst_server.domain.errors import Overloaded, OverMemory, QueueTimeout, ShuttingDown
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


def test_memory_budget_holds_jobs_that_do_not_fit_beside_the_running_ones() -> None:
    """With slots to spare, a job waits while its estimate does not fit beside the running jobs'; it starts once
    they release, and jobs behind it keep their order (a small one never overtakes it)."""
    admission = Admission(max_running=4, max_queued=4, memory_budget=1000)
    big, second_big, small = admission.reserve(700), admission.reserve(700), admission.reserve(100)
    assert (big.granted, second_big.granted, small.granted) == (True, False, False)
    assert admission.reserved_bytes == 700
    big.release()
    assert (second_big.granted, small.granted) == (True, True)
    assert admission.reserved_bytes == 800


def test_a_job_over_the_whole_budget_is_refused_at_once_naming_estimate_and_budget() -> None:
    """Estimate above the budget: OverMemory with both figures, nothing reserved or queued."""
    admission = Admission(max_running=1, max_queued=8, memory_budget=3 << 30)
    with pytest.raises(OverMemory, match=r"estimated 6\.00 GiB .*\(inputs 5 GiB\).* the 3\.00 GiB"):
        admission.reserve(6 << 30, "inputs 5 GiB")
    assert (admission.running, admission.queued, admission.reserved_bytes) == (0, 0, 0)


def test_one_caller_gets_its_share_and_others_still_get_in() -> None:
    """--max-jobs-per-caller 2: a third job of the same caller is refused naming its share; another caller's job is
    admitted; a finished job gives its caller's place back."""
    admission = Admission(max_running=1, max_queued=8, max_per_caller=2)
    first, _ = admission.reserve(caller="ipv4:10.0.0.1"), admission.reserve(caller="ipv4:10.0.0.1")
    with pytest.raises(
        Overloaded, match=r"this caller \(ipv4:10\.0\.0\.1\) already has 2 jobs .*--max-jobs-per-caller 2"
    ):
        admission.reserve(caller="ipv4:10.0.0.1")
    other = admission.reserve(caller="ipv4:10.0.0.2")
    assert not other.granted
    assert admission.queued == 2
    first.release()
    admission.reserve(caller="ipv4:10.0.0.1")  # its place came back


def test_a_job_that_waits_too_long_in_the_queue_ends_with_queue_timeout() -> None:
    """--max-queue-wait: a queued job whose wait runs out ends QueueTimeout, and its place is given back."""

    async def scenario() -> None:
        admission = Admission(max_running=1, max_queued=1, max_queue_wait_s=0.01)
        admission.reserve()
        queued = admission.reserve()
        with pytest.raises(QueueTimeout, match=r"waited 0\.01s in the queue without a slot \(--max-queue-wait 0\.01\)"):
            async for _ in queued.positions():
                pass
        queued.release()
        assert admission.queued == 0

    asyncio.run(scenario())


def test_a_caller_who_leaves_frees_the_slot_but_not_the_memory_its_work_still_uses() -> None:
    """The caller leaves while its decode (or run) goes on in a thread: the slot comes back at once, the memory only
    when that work has ended, so a job that needs it waits (6 abandoned decodes once held +732 MiB)."""

    async def scenario() -> None:
        admission = Admission(max_running=1, max_queued=1, memory_budget=1000)
        first = admission.reserve(800)
        work: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        first.hold_until(work)
        first.release()  # the caller left mid-decode
        assert (admission.running, admission.reserved_bytes) == (0, 800)
        second = admission.reserve(800)
        assert not second.granted  # a free slot, but not the memory
        idle = asyncio.create_task(admission.wait_idle())
        work.set_result(None)  # the decode has really ended
        await asyncio.sleep(0)
        assert second.granted
        assert admission.reserved_bytes == 800
        second.release()
        await asyncio.wait_for(idle, timeout=5)

    asyncio.run(scenario())
