"""A job's events between its worker and a reader that lags: only the latest preview waits, nothing else is lost."""

from __future__ import annotations

import asyncio

import pytest
from nst.events import Event, ImageFormat, Losses, Preview, Progress
from nst_server.transport.servicer import LatestPreview, caller_of

LOSSES = Losses(1.0, 0.5, 0.25, 0.25)


def _progress(iteration: int) -> Progress:
    return Progress(iteration, iteration, LOSSES, 0.0)


def _preview(iteration: int) -> Preview:
    return Preview(iteration, b"x" * 1000, ImageFormat.PNG)


def test_a_lagging_reader_gets_every_progress_and_only_the_latest_preview() -> None:
    """1000 iterations with a preview each, none read meanwhile: 1000 Progress in order, one Preview (the last)."""

    async def scenario() -> tuple[list[Event | BaseException], int]:
        buffer = LatestPreview()
        for iteration in range(1, 1001):
            buffer.put(_progress(iteration))
            buffer.put(_preview(iteration))
        assert len(buffer) == 1001
        return [await buffer.get() for _ in range(1001)], buffer.dropped_previews

    items, dropped = asyncio.run(scenario())
    assert [item.iteration for item in items if isinstance(item, Progress)] == list(range(1, 1001))
    assert [item.iteration for item in items if isinstance(item, Preview)] == [1000]
    assert isinstance(items[-1], Preview)  # after the Progress of its own iteration: order is kept
    assert dropped == 999


def test_a_reader_that_keeps_up_gets_every_preview() -> None:
    async def scenario() -> list[Event | BaseException]:
        buffer, got = LatestPreview(), []
        for iteration in range(1, 4):
            buffer.put(_preview(iteration))
            got.append(await buffer.get())
        return got

    assert [item.iteration for item in asyncio.run(scenario()) if isinstance(item, Preview)] == [1, 2, 3]


def test_get_waits_for_the_next_item() -> None:
    async def scenario() -> Event | BaseException:
        buffer = LatestPreview()
        waiting = asyncio.create_task(buffer.get())
        await asyncio.sleep(0)
        assert not waiting.done()
        buffer.put(_progress(1))
        return await asyncio.wait_for(waiting, timeout=5)

    assert asyncio.run(scenario()) == _progress(1)


@pytest.mark.parametrize(
    ("peer", "caller"),
    [
        ("ipv4:10.0.0.7:53422", "ipv4:10.0.0.7"),
        ("ipv6:[::1]:40000", "ipv6:[::1]"),
        ("unix:/tmp/s", "unix:/tmp/s"),
        ("10.0.0.7:53422", "ipv4:10.0.0.7"),  # the HTTP port's client address: the same caller as over gRPC
        ("::1:40000", "ipv6:[::1]"),
        (None, "unknown"),
    ],
)
def test_the_caller_is_the_peer_without_its_port(peer: str | None, caller: str) -> None:
    """Every connection of one client has its own port: per-caller limits count the address, on both ports."""
    assert caller_of(peer) == caller
