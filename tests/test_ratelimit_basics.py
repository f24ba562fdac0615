"""RateLimit basics: a burst passes at once, the next request waits, bad arguments raise.

Short periods keep this fast; assertions are about what the limiter held, with tolerances.
"""

from __future__ import annotations

import math
import time
from typing import Any

import anyio
import pytest

from cfwf_async import Limiter, RateLimit
from cfwf_async.ratelimit import RateLimitInfo

PERIOD = 0.3


@pytest.mark.anyio
async def test_burst_passes_then_the_next_waits() -> None:
    limit = RateLimit(3, PERIOD)
    started = time.monotonic()
    with anyio.move_on_after(PERIOD / 2) as burst:
        for _ in range(3):
            await limit.acquire()
    assert not burst.cancelled_caught, "the burst of `requests` must not wait"
    with anyio.move_on_after(PERIOD / 3) as fourth:
        await limit.acquire()
    assert fourth.cancelled_caught, "request 4 must wait for the window"
    await limit.acquire()  # the cancelled attempt took no slot; this one waits it out
    assert time.monotonic() - started >= PERIOD * 0.9


@pytest.mark.anyio
async def test_never_more_than_requests_in_any_period() -> None:
    limit = RateLimit(2, PERIOD / 2)
    stamps: list[float] = []

    async def one() -> None:
        await limit.acquire()
        stamps.append(time.monotonic())

    async with anyio.create_task_group() as tg:
        for _ in range(6):
            tg.start_soon(one)
    stamps.sort()
    assert len(stamps) == 6
    for earlier, later in zip(stamps, stamps[2:], strict=False):
        assert later - earlier >= PERIOD / 2 * 0.9


@pytest.mark.anyio
async def test_pause_holds_every_request() -> None:
    limit = RateLimit(100, 60.0)
    await limit.pause(PERIOD)
    started = time.monotonic()
    await limit.acquire()
    assert time.monotonic() - started >= PERIOD * 0.8
    await limit.pause(0)  # a zero pause changes nothing
    with anyio.fail_after(1):
        await limit.acquire()


@pytest.mark.anyio
async def test_server_says_none_remain() -> None:
    limit = RateLimit(100, 60.0)
    await limit.observe(RateLimitInfo(remaining=0, reset=PERIOD))
    started = time.monotonic()
    await limit.acquire()
    assert time.monotonic() - started >= PERIOD * 0.8
    # Incomplete information is ignored.
    await limit.observe(RateLimitInfo(remaining=None, reset=10.0))
    with anyio.fail_after(1):
        await limit.acquire()


def test_is_a_limiter() -> None:
    limit = RateLimit(1200, 300.0)
    assert isinstance(limit, Limiter)
    assert (limit.requests, limit.period) == (1200, 300.0)
    assert repr(limit) == "RateLimit(1200, 300.0)"


@pytest.mark.parametrize(
    ("requests", "period"),
    [
        (0, 1.0), (-1, 1.0), (True, 1.0), (1.5, 1.0), ("10", 1.0), (None, 1.0),
        (1, 0), (1, -1.0), (1, math.inf), (1, math.nan), (1, True), (1, "1"), (1, None),
    ],
)
def test_invalid_arguments(requests: Any, period: Any) -> None:
    bad_period = type(requests) is int and requests >= 1
    with pytest.raises(ValueError, match="period" if bad_period else "requests"):
        RateLimit(requests, period)
