"""Pacing within Cloudflare's account quota: the sliding window, the Ratelimit header, 429s.

The session tests talk HTTP to a real loopback server and measure there, by the time each
request arrived (``RecordedRequest.received_at``). The limiter's own timing logic is
checked on a :class:`VirtualClock`, so those tests assert exact virtual times and never
sleep in real time.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import anyio
import anyio.lowlevel
import pytest
from aiohttp import web
from anyio import wait_all_tasks_blocked
from anyio.abc import TaskStatus

from cfwf_async import Limiter, RateLimit, RateLimitError, WorkflowsSession
from cfwf_async.ratelimit import RateLimitInfo
from cfwf_async.testing import FakeWorkflowsAPI, Fault, make_instance

# Loopback scheduling jitter allowed when comparing arrival times with a limit.
SLACK = 0.06
WF = "checkout"
TEN_YEARS = 315_360_000.0


class VirtualClock:
    """A limiter clock whose time only moves when every task is blocked.

    ``sleep()`` parks the caller until virtual time reaches its deadline. The driver
    (see :func:`virtual_clock`) waits until no task can run, then jumps time to the
    earliest deadline and wakes that sleeper, so a test of a 15-minute hold runs in
    milliseconds and every time it observes is exact.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, anyio.Event]] = []
        self._order = itertools.count()

    def now(self) -> float:
        return self._now

    @property
    def sleepers(self) -> int:
        return len(self._sleepers)

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        entry = (self._now + seconds, next(self._order), anyio.Event())
        heapq.heappush(self._sleepers, entry)
        try:
            await entry[2].wait()
        finally:
            if entry in self._sleepers:  # cancelled while asleep
                self._sleepers.remove(entry)
                heapq.heapify(self._sleepers)

    async def drive(self, *, task_status: TaskStatus[None]) -> None:
        task_status.started()
        while True:
            for _ in range(5):  # let wake-ups that chain through locks settle first
                await anyio.lowlevel.checkpoint()
            await wait_all_tasks_blocked()
            if not self._sleepers:
                await anyio.sleep(0.001)  # nobody asleep: nothing to advance to
                continue
            deadline, _, event = heapq.heappop(self._sleepers)
            self._now = max(self._now, deadline)
            event.set()


@asynccontextmanager
async def virtual_clock() -> AsyncIterator[VirtualClock]:
    clock = VirtualClock()
    async with anyio.create_task_group() as tg:
        await tg.start(clock.drive)
        yield clock
        tg.cancel_scope.cancel()


async def _asleep(clock: VirtualClock, n: int) -> None:
    """Return once ``n`` callers sleep on ``clock`` (a condition, not a real-time guess)."""
    while clock.sleepers < n:
        await anyio.lowlevel.checkpoint()


def _api(n: int = 1) -> FakeWorkflowsAPI:
    api = FakeWorkflowsAPI()
    for i in range(n):
        api.add_instance(WF, f"order-{i}", make_instance("complete", steps=1))
    return api


@asynccontextmanager
async def _session(
    api: FakeWorkflowsAPI, base_url: str, **kwargs: object
) -> AsyncIterator[WorkflowsSession]:
    # These tests count the requests the limiter lets through; coalescing would merge
    # their identical concurrent reads into one.
    kwargs.setdefault("coalesce", False)
    async with WorkflowsSession(
        api_token=api.api_token,
        account_id=api.account_id,
        base_url=base_url,
        **kwargs,  # type: ignore[arg-type]
    ) as session:
        yield session


async def _gather(*calls: Callable[[], object]) -> None:
    async with anyio.create_task_group() as tg:
        for call in calls:
            tg.start_soon(call)  # type: ignore[arg-type]


def _arrivals(api: FakeWorkflowsAPI) -> list[float]:
    return sorted(r.received_at for r in api.requests)


def _max_in_window(times: list[float], window: float) -> int:
    """The most arrivals in any half-open interval of length ``window``."""
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


# ---------------------------------------------------------------------------
# The sliding window, measured at the server


@pytest.mark.anyio
async def test_thirty_concurrent_calls_never_exceed_ten_per_second() -> None:
    api = _api(30)
    limit = RateLimit(10, 1.0, margin=0.25)
    async with api.serve() as url, _session(api, url, rate_limit=limit) as s:

        async def call(i: int) -> None:
            await s.get_instance(WF, f"order-{i}")

        async with anyio.create_task_group() as tg:
            for i in range(30):
                tg.start_soon(call, i)
    times = _arrivals(api)
    assert len(times) == 30
    # The margin covers the time from grant to arrival: no slack needed at the server.
    assert _max_in_window(times, 1.0) <= 10
    # ... and the limit really was the bottleneck: three windows were needed.
    assert times[-1] - times[0] >= 2 * 1.25 - SLACK


@pytest.mark.anyio
async def test_one_limit_shared_by_two_sessions_is_one_budget() -> None:
    api = _api(1)
    limit = RateLimit(4, 0.5, margin=0.1)
    async with (
        api.serve() as url,
        _session(api, url, rate_limit=limit) as a,
        _session(api, url, rate_limit=limit) as b,
    ):

        async def call(session: WorkflowsSession) -> None:
            await session.get_instance(WF, "order-0")

        async with anyio.create_task_group() as tg:
            for i in range(8):
                tg.start_soon(call, a if i % 2 else b)
    times = _arrivals(api)
    assert len(times) == 8
    assert _max_in_window(times, 0.5) <= 4


# ---------------------------------------------------------------------------
# The server's Ratelimit header


@pytest.mark.anyio
async def test_r0_holds_the_next_request_until_the_reset() -> None:
    api = _api(1)
    api.set_ratelimit(0, 2, quota=100, window=60)
    async with api.serve() as url, _session(api, url) as s:
        first = await s.get_instance(WF, "order-0")
        await s.get_instance(WF, "order-0")
        await s.get_instance(WF, "order-0")
    assert first.status == "complete"
    t = [r.received_at for r in api.requests]
    assert t[1] - t[0] >= 2.0 - SLACK, "r=0;t=2 must hold the next request about 2 s"
    assert t[1] - t[0] < 4.0, "the hold ends at the reset"
    assert t[2] - t[1] < 1.0, "the new window (r=99) lets requests go again"
    assert api.over_quota == 0


@pytest.mark.anyio
async def test_low_remaining_spreads_a_burst_instead_of_hitting_the_wall() -> None:
    api = _api(1)
    # After the first answer three requests remain for one second: a burst of five
    # would overrun by two. The session must spread them and wait for the reset.
    api.set_ratelimit(3, 1, quota=100, window=60)
    async with api.serve() as url, _session(api, url) as s:
        await s.get_instance(WF, "order-0")
        await _gather(*[lambda: s.get_instance(WF, "order-0") for _ in range(5)])
    t = [r.received_at for r in api.requests]
    assert api.over_quota == 0, "no request may arrive after the quota ran out"
    gaps = [b - a for a, b in itertools.pairwise(t[:4])]
    assert min(gaps) >= 0.25, f"the remaining three must be spaced out, got gaps {gaps}"


@pytest.mark.anyio
async def test_unparseable_ratelimit_headers_are_ignored() -> None:
    answers = iter(['"default";r=banana;t=2', ";;;", '"default";r=0', "r=0;t=9"])

    async def handler(request: web.Request) -> web.Response:
        body = b'{"success":true,"errors":[],"messages":[],"result":{"status":"running"}}'
        return web.Response(
            body=body,
            content_type="application/json",
            headers={"Ratelimit": next(answers), "Ratelimit-Policy": "q=;w=x"},
        )

    app = web.Application()
    app.router.add_get("/client/v4/accounts/a/workflows/w/instances/{id}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/client/v4"
    try:
        limit = RateLimit(100, 60.0)
        async with WorkflowsSession(api_token="t", account_id="a", base_url=url,
                                    rate_limit=limit) as s:
            with anyio.fail_after(1.5):  # a misread "r=0;t=9" would hold for 9 s
                for _ in range(4):
                    assert (await s.get_instance("w", "x")).status == "running"
        assert limit.server_remaining is None
    finally:
        await runner.cleanup()


# ---------------------------------------------------------------------------
# One 429 pauses the whole session


class _IgnoresPauses:
    """A custom limiter that lets everything through and ignores pause()."""

    async def acquire(self) -> None:
        return None

    async def pause(self, seconds: float) -> None:
        return None

    async def observe(self, info: RateLimitInfo) -> None:
        return None


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("limiter", "retry_after"),
    [
        pytest.param(lambda: RateLimit(1200, 300.0), 2, id="RateLimit"),
        pytest.param(lambda: None, 0.5, id="no-limiter"),
        pytest.param(_IgnoresPauses, 0.5, id="limiter-ignoring-pause"),
    ],
)
async def test_one_429_holds_every_request_started_meanwhile(
    limiter: Callable[[], Limiter | None], retry_after: float
) -> None:
    api = _api(1)
    api.inject(Fault.http(429, headers={"Retry-After": f"{retry_after:g}"}))
    async with api.serve() as url, _session(
        api, url, rate_limit=limiter(), max_retries=0
    ) as s:
        with pytest.raises(RateLimitError) as caught:
            await s.get_instance(WF, "order-0")
        assert caught.value.retry_after == retry_after
        # Started after the 429 arrived: they wait, then all succeed.
        await _gather(*[lambda: s.get_instance(WF, "order-0") for _ in range(4)])
    hit, *later = [r.received_at for r in api.requests]
    assert len(later) == 4
    assert min(later) - hit >= retry_after - SLACK


@pytest.mark.anyio
async def test_the_429d_call_itself_retries_after_retry_after() -> None:
    api = _api(1)
    api.inject(Fault.http(429, headers={"Retry-After": "0.5"}))
    async with api.serve() as url, _session(api, url, max_retries=1) as s:
        inst = await s.get_instance(WF, "order-0")
    assert inst.status == "complete"
    first, second = (r.received_at for r in api.requests)
    assert second - first >= 0.5 - SLACK


@pytest.mark.anyio
async def test_a_429_on_one_session_pauses_another_sharing_its_limiter() -> None:
    api = _api(1)
    limit = RateLimit(1200, 300.0)
    api.inject(Fault.http(429, headers={"Retry-After": "0.5"}))
    async with (
        api.serve() as url,
        _session(api, url, rate_limit=limit, max_retries=0) as a,
        _session(api, url, rate_limit=limit) as b,
    ):
        with pytest.raises(RateLimitError):
            await a.get_instance(WF, "order-0")
        await b.get_instance(WF, "order-0")
    first, second = (r.received_at for r in api.requests)
    assert second - first >= 0.5 - SLACK


# ---------------------------------------------------------------------------
# Counted where requests arrive: the margin


@pytest.mark.anyio
async def test_margin_keeps_the_window_where_the_server_counts_arrivals(
    serve_app: Callable[[web.Application], Any],
) -> None:
    # Each request reaches the server up to 0.5 s after its grant. Slots that freed at
    # ``period`` let the next burst overlap the tail of the last one at the server.
    arrived: list[float] = []

    async def handler(request: web.Request) -> web.Response:
        arrived.append(time.monotonic())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/hit", handler)
    # With slots freeing at `period`, these delays put 27 arrivals in one second.
    rng = random.Random(1)
    delays = [rng.uniform(0.0, 0.5) for _ in range(40)]
    limit = RateLimit(20, 1.0)  # the default margin, 1 s
    async with serve_app(app) as url, aiohttp.ClientSession() as http:

        async def one(delay: float) -> None:
            await limit.acquire()
            await anyio.sleep(delay)  # queues, connection set-up, a slow network
            async with http.get(f"{url}/hit") as resp:
                assert resp.status == 200

        async with anyio.create_task_group() as tg:
            for delay in delays:
                tg.start_soon(one, delay)
    times = sorted(arrived)
    assert len(times) == 40
    assert _max_in_window(times, 1.0) <= 20


# ---------------------------------------------------------------------------
# RateLimit on its own, on a virtual clock (no socket, no real sleep)


@pytest.mark.anyio
async def test_burst_passes_then_the_next_waits_and_a_cancelled_wait_takes_no_slot() -> None:
    async with virtual_clock() as clock:
        limit = RateLimit(3, 0.3, margin=0.1, clock=clock)
        start = clock.now()
        for _ in range(3):
            await limit.acquire()
        assert clock.now() == start, "the burst of `requests` must not wait"
        async with anyio.create_task_group() as tg:
            tg.start_soon(limit.acquire)
            await _asleep(clock, 1)  # request 4 waits for the window...
            tg.cancel_scope.cancel()  # ...and is cancelled while it does
        assert clock.now() == start
        await limit.acquire()
        # Had the cancelled call taken a slot, this one would wait a second period.
        assert clock.now() == pytest.approx(start + 0.3 + 0.1)


@pytest.mark.anyio
async def test_never_more_than_requests_in_any_period_plus_margin() -> None:
    async with virtual_clock() as clock:
        limit = RateLimit(2, 0.15, margin=0.05, clock=clock)
        stamps: list[float] = []

        async def one() -> None:
            await limit.acquire()
            stamps.append(clock.now())

        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(one)
    assert len(stamps) == 6
    for earlier, later in zip(stamps, stamps[2:], strict=False):
        assert later - earlier >= 0.2 - 1e-9
    assert stamps[-1] - stamps[0] == pytest.approx(0.4), "and no longer than that"


@pytest.mark.anyio
async def test_pause_holds_every_request_and_a_zero_pause_nothing() -> None:
    async with virtual_clock() as clock:
        limit = RateLimit(100, 60.0, clock=clock)
        await limit.pause(0.3)
        start = clock.now()
        await _gather(limit.acquire, limit.acquire)
        assert clock.now() == pytest.approx(start + 0.3)
        await limit.pause(0)
        await limit.acquire()
        assert clock.now() == pytest.approx(start + 0.3)


@pytest.mark.anyio
async def test_a_shorter_pause_never_shortens_a_longer_one() -> None:
    async with virtual_clock() as clock:
        limit = RateLimit(10, 1.0, clock=clock)
        start = clock.now()
        await limit.pause(0.4)
        await limit.pause(0.05)
        await limit.pause(math.inf)  # ignored rather than freezing the limiter forever
        await limit.pause(math.nan)
        await limit.acquire()
        assert clock.now() == pytest.approx(start + 0.4)


@pytest.mark.anyio
async def test_r0_holds_until_the_reset_then_the_estimate_expires() -> None:
    async with virtual_clock() as clock:
        limit = RateLimit(10, 1.0, clock=clock)
        await limit.observe(RateLimitInfo(remaining=0, reset=0.2))
        assert limit.server_remaining == 0
        start = clock.now()
        await limit.acquire()
        assert clock.now() == pytest.approx(start + 0.2)
        assert limit.server_remaining is None


@pytest.mark.anyio
async def test_headers_without_remaining_or_reset_change_nothing() -> None:
    async with virtual_clock() as clock:
        limit = RateLimit(10, 1.0, clock=clock)
        await limit.observe(RateLimitInfo(quota=1200, window=300.0))
        await limit.observe(RateLimitInfo(remaining=0))
        await limit.observe(RateLimitInfo(reset=30.0))
        await limit.observe(RateLimitInfo(remaining=None, reset=10.0))
        start = clock.now()
        await limit.acquire()
        assert clock.now() == start
        assert limit.server_remaining is None


@pytest.mark.anyio
async def test_answers_out_of_order_never_raise_the_estimate_within_a_window() -> None:
    limit = RateLimit(1000, 60.0)
    await limit.observe(RateLimitInfo(remaining=500, reset=30.0, quota=1200, window=300.0))
    await limit.observe(RateLimitInfo(remaining=520, reset=30.0))  # an older answer
    assert limit.server_remaining == 500
    await limit.acquire()
    await limit.acquire()
    assert limit.server_remaining == 498, "requests let through count against the budget"
    await limit.observe(RateLimitInfo(remaining=1100, reset=290.0))  # a new window
    assert limit.server_remaining == 1100


@pytest.mark.anyio
async def test_a_late_answer_from_the_previous_window_is_ignored() -> None:
    limit = RateLimit(1000, 60.0)
    await limit.observe(RateLimitInfo(remaining=1199, reset=300.0, quota=1200))
    # Sent just before the reset, answered after the new window's first answer.
    await limit.observe(RateLimitInfo(remaining=3, reset=1.0))
    assert limit.server_remaining == 1199


# ---------------------------------------------------------------------------
# What a server says holds for 15 minutes at most, and acquire_within refuses it


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["ratelimit-r0", "retry-after"])
async def test_a_ten_year_hold_counts_for_fifteen_minutes_and_is_refused_at_once(
    how: str,
) -> None:
    async with virtual_clock() as clock:
        limit = RateLimit(1, 60.0, margin=0.0, clock=clock)
        if how == "ratelimit-r0":  # Ratelimit: "default";r=0;t=315360000
            await limit.observe(RateLimitInfo(remaining=0, reset=TEN_YEARS))
        else:  # Retry-After: 315360000
            await limit.pause(TEN_YEARS)
        start = clock.now()
        with pytest.raises(RateLimitError) as caught:
            await limit.acquire_within(60)
        assert caught.value.retry_after == 900
        assert "no request was sent" in str(caught.value)
        assert clock.now() == start, "refused at once, not after waiting"

        # A second user of the limiter (another task, another session) is refused too.
        async def second() -> None:
            with pytest.raises(RateLimitError) as again:
                await limit.acquire_within(120)
            assert again.value.retry_after == 900

        async with anyio.create_task_group() as tg:
            tg.start_soon(second)
        # acquire() waits the hold out: 15 minutes, not ten years. With one slot per
        # minute, this proves the refused calls took no slot.
        await limit.acquire()
        assert clock.now() == pytest.approx(start + 900)


@pytest.mark.anyio
async def test_acquire_within_waits_for_the_clients_own_window() -> None:
    async with virtual_clock() as clock:
        limit = RateLimit(1, 600.0, margin=0.0, clock=clock)
        start = clock.now()
        await limit.acquire_within(1)
        await limit.acquire_within(1)  # its own quota, not the server's word: waited
        assert clock.now() == pytest.approx(start + 600)


@pytest.mark.anyio
async def test_acquire_within_waits_a_server_hold_it_allows() -> None:
    async with virtual_clock() as clock:
        limit = RateLimit(10, 1.0, clock=clock)
        await limit.pause(30)
        start = clock.now()
        await limit.acquire_within(30)
        assert clock.now() == pytest.approx(start + 30)


@pytest.mark.anyio
async def test_acquire_within_refuses_pacing_towards_a_far_reset() -> None:
    # r=5 of 1,200 is under the low-water mark: the rest is spread over the time to the
    # reset, which counts for 900 s at most: 900 / 4 s apart once one has gone.
    async with virtual_clock() as clock:
        limit = RateLimit(100, 1.0, clock=clock)
        await limit.observe(RateLimitInfo(remaining=5, reset=TEN_YEARS, quota=1200))
        await limit.acquire_within(60)  # nothing sent yet: the first goes at once
        with pytest.raises(RateLimitError) as caught:
            await limit.acquire_within(60)
        assert caught.value.retry_after == pytest.approx(900 / 4)


@pytest.mark.anyio
async def test_a_hold_that_begins_while_queued_is_refused_by_the_queued_caller() -> None:
    async with virtual_clock() as clock:
        limit = RateLimit(1, 10.0, margin=0.0, clock=clock)
        await limit.acquire()
        errors: list[float | None] = []

        async def queued() -> None:
            try:
                await limit.acquire_within(60)
            except RateLimitError as exc:
                errors.append(exc.retry_after)

        async with anyio.create_task_group() as tg:
            tg.start_soon(queued)
            await _asleep(clock, 1)  # it waits for the window
            await limit.pause(TEN_YEARS)
        assert errors == [900]


# ---------------------------------------------------------------------------
# Arguments


def test_is_a_limiter() -> None:
    limit = RateLimit(1200, 300.0)
    assert isinstance(limit, Limiter)
    assert (limit.requests, limit.period, limit.margin) == (1200, 300.0, 1.0)
    assert repr(limit) == "RateLimit(1200, 300.0)"


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "name"),
    [
        ((0, 1.0), {}, ValueError, "requests"),
        ((-1, 1.0), {}, ValueError, "requests"),
        ((True, 1.0), {}, TypeError, "requests"),
        ((1.5, 1.0), {}, TypeError, "requests"),
        (("10", 1.0), {}, TypeError, "requests"),
        ((None, 1.0), {}, TypeError, "requests"),
        ((1, 0), {}, ValueError, "period"),
        ((1, -1.0), {}, ValueError, "period"),
        ((1, math.inf), {}, ValueError, "period"),
        ((1, math.nan), {}, ValueError, "period"),
        ((1, True), {}, TypeError, "period"),
        ((1, "1"), {}, TypeError, "period"),
        ((1, None), {}, TypeError, "period"),
        ((1, 1.0), {"margin": -0.5}, ValueError, "margin"),
        ((1, 1.0), {"margin": math.nan}, ValueError, "margin"),
        ((1, 1.0), {"margin": "1"}, TypeError, "margin"),
    ],
)
def test_invalid_arguments(
    args: tuple[Any, Any], kwargs: dict[str, Any], error: type[Exception], name: str
) -> None:
    with pytest.raises(error, match=name):
        RateLimit(*args, **kwargs)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("max_wait", "error"), [(-1, ValueError), (math.nan, ValueError), ("60", TypeError)]
)
async def test_acquire_within_checks_max_wait(max_wait: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="max_wait"):
        await RateLimit(1, 1.0).acquire_within(max_wait)


def test_a_class_with_the_three_methods_is_a_limiter() -> None:
    assert isinstance(_IgnoresPauses(), Limiter)
    WorkflowsSession(api_token="t", rate_limit=_IgnoresPauses())
    with pytest.raises(TypeError, match="rate_limit"):
        WorkflowsSession(api_token="t", rate_limit=object())  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# The fake API's Ratelimit headers


@pytest.mark.anyio
async def test_fake_api_reports_a_counting_quota() -> None:
    api = _api(1)
    api.set_ratelimit(2, 30, quota=50, window=60)
    auth = {"Authorization": f"Bearer {api.api_token}"}
    seen: list[str | None] = []
    async with api.serve() as url, aiohttp.ClientSession() as http:
        base = f"{url}/accounts/{api.account_id}/workflows/{WF}/instances"
        for instance_id in ("order-0", "missing", "order-0", "order-0"):
            async with http.get(f"{base}/{instance_id}", headers=auth) as resp:
                seen.append(resp.headers.get("Ratelimit"))
                policy = resp.headers.get("Ratelimit-Policy")
        api.set_ratelimit(None)
        async with http.get(f"{base}/order-0", headers=auth) as resp:
            seen.append(resp.headers.get("Ratelimit"))
    assert seen == [
        '"default";r=2;t=30',
        '"default";r=1;t=30',  # a 404 counts too
        '"default";r=0;t=30',
        '"default";r=0;t=30',
        None,
    ]
    assert policy == '"default";q=50;w=60'
    assert api.over_quota == 1, "the fourth request came after r=0"


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"remaining": -1}, "remaining"),
        ({"remaining": 1, "reset": 0}, "reset"),
        ({"remaining": 1, "quota": 0}, "quota"),
        ({"remaining": 1, "window": math.nan}, "window"),
    ],
)
def test_fake_api_set_ratelimit_checks_arguments(kwargs: dict[str, float], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        FakeWorkflowsAPI().set_ratelimit(**kwargs)  # type: ignore[arg-type]
