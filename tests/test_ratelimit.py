"""Pacing within Cloudflare's account quota: the sliding window, the Ratelimit header, 429s.

The session tests talk HTTP to the fake API and measure at the server, by the time each
request arrived (``RecordedRequest.received_at``). Assertions are about what a limit
*held*, with tolerances for scheduling; never about how fast anything ran.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import aiohttp
import anyio
import pytest
from aiohttp import web

from cfwf_async import Limiter, RateLimit, RateLimitError, WorkflowsSession
from cfwf_async.ratelimit import RateLimitInfo
from cfwf_async.testing import FakeWorkflowsAPI, make_instance

# Loopback scheduling jitter allowed when comparing arrival times with a limit.
SLACK = 0.06
WF = "checkout"


def _api(n: int = 1) -> FakeWorkflowsAPI:
    api = FakeWorkflowsAPI()
    for i in range(n):
        api.add_instance(WF, f"order-{i}", make_instance("complete", steps=1))
    return api


@asynccontextmanager
async def _session(
    api: FakeWorkflowsAPI, base_url: str, **kwargs: object
) -> AsyncIterator[WorkflowsSession]:
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
    async with api.serve() as url, _session(api, url, rate_limit=RateLimit(10, 1.0)) as s:

        async def call(i: int) -> None:
            await s.get_instance(WF, f"order-{i}")

        async with anyio.create_task_group() as tg:
            for i in range(30):
                tg.start_soon(call, i)
    times = _arrivals(api)
    assert len(times) == 30
    assert _max_in_window(times, 1.0 - SLACK) <= 10
    # ... and the limit really was the bottleneck: three windows were needed.
    assert times[-1] - times[0] >= 2.0 - SLACK


@pytest.mark.anyio
async def test_one_limit_shared_by_two_sessions_is_one_budget() -> None:
    api = _api(1)
    limit = RateLimit(4, 0.5)
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
    assert _max_in_window(times, 0.5 - SLACK) <= 4


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
    api.fail_next(429, headers={"Retry-After": f"{retry_after:g}"})
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
    api.fail_next(429, headers={"Retry-After": "0.5"})
    async with api.serve() as url, _session(api, url, max_retries=1) as s:
        inst = await s.get_instance(WF, "order-0")
    assert inst.status == "complete"
    first, second = (r.received_at for r in api.requests)
    assert second - first >= 0.5 - SLACK


@pytest.mark.anyio
async def test_a_429_on_one_session_pauses_another_sharing_its_limiter() -> None:
    api = _api(1)
    limit = RateLimit(1200, 300.0)
    api.fail_next(429, headers={"Retry-After": "0.5"})
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
# RateLimit on its own (no socket)


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


@pytest.mark.anyio
async def test_estimate_expires_at_the_reset() -> None:
    limit = RateLimit(10, 1.0)
    await limit.observe(RateLimitInfo(remaining=0, reset=0.2))
    assert limit.server_remaining == 0
    started = time.monotonic()
    await limit.acquire()
    assert time.monotonic() - started >= 0.2 - SLACK / 2
    assert limit.server_remaining is None


@pytest.mark.anyio
async def test_headers_without_remaining_or_reset_change_nothing() -> None:
    limit = RateLimit(10, 1.0)
    await limit.observe(RateLimitInfo(quota=1200, window=300.0))
    await limit.observe(RateLimitInfo(remaining=0))
    await limit.observe(RateLimitInfo(reset=30.0))
    with anyio.fail_after(0.5):
        await limit.acquire()
    assert limit.server_remaining is None


@pytest.mark.anyio
async def test_a_shorter_pause_never_shortens_a_longer_one() -> None:
    limit = RateLimit(10, 1.0)
    await limit.pause(0.4)
    await limit.pause(0.05)
    await limit.pause(math.inf)  # ignored rather than freezing the limiter forever
    started = time.monotonic()
    await limit.acquire()
    assert time.monotonic() - started >= 0.4 - SLACK / 2


@pytest.mark.anyio
async def test_a_cancelled_acquire_takes_no_slot() -> None:
    limit = RateLimit(1, 0.4)
    await limit.acquire()
    with anyio.move_on_after(0.05) as scope:
        await limit.acquire()
    assert scope.cancelled_caught
    started = time.monotonic()
    await limit.acquire()
    # Had the cancelled call taken a slot, this one would wait a second period.
    assert time.monotonic() - started < 0.4 + 0.2


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
