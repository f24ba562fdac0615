"""RedisRateLimit against a real redis-server: shared windows, shared pauses, failing closed."""

from __future__ import annotations

import logging
import sys
import time
import traceback
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream
from redis_server import REDIS_SERVER, RedisServer, free_port, running_redis

from cfwf_async import RateLimit, RateLimitError, RateLimitInfo, WorkflowsSession
from cfwf_async.errors import RateLimiterUnavailableError, WorkflowsError
from cfwf_async.redis import RedisRateLimit
from cfwf_async.testing import make_instance

pytestmark = [
    pytest.mark.redis,
    pytest.mark.skipif(
        REDIS_SERVER is None,
        reason="redis-server is not installed (apt-get install redis-server)",
    ),
]

WORKER = Path(__file__).with_name("redis_worker.py")


_keys = iter(range(1_000_000))


@pytest.fixture
def key(request: pytest.FixtureRequest) -> str:
    """A key of its own for every test, so tests sharing the server never meet."""
    return f"t-{request.node.name}-{next(_keys)}"


@dataclass
class Arrivals:
    """When each request reached the API (monotonic clock) and what it was answered."""

    times: list[float] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    scripted: list[web.Response] = field(default_factory=list)


INSTANCE_BODY = msgspec.json.encode(
    {"success": True, "errors": [], "messages": [], "result": make_instance()}
)
API_TOKEN = "test-token"
ACCOUNT = "test-account"


@asynccontextmanager
async def serve_recording() -> AsyncIterator[tuple[str, Arrivals]]:
    """A plain aiohttp.web stand-in for the instance endpoint that notes arrival times.

    Answers from ``arrivals.scripted`` first (in order), then a complete instance.
    """
    arrivals = Arrivals()

    async def get_instance(request: web.Request) -> web.StreamResponse:
        arrivals.times.append(time.monotonic())
        assert request.headers.get("Authorization") == f"Bearer {API_TOKEN}"
        if arrivals.scripted:
            resp = arrivals.scripted.pop(0)
        else:
            resp = web.Response(body=INSTANCE_BODY, content_type="application/json")
        arrivals.statuses.append(resp.status)
        return resp

    app = web.Application()
    app.router.add_get(
        "/client/v4/accounts/{account}/workflows/{workflow}/instances/{instance}", get_instance
    )
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/client/v4", arrivals
    finally:
        await runner.cleanup()


class Worker:
    """A worker process (tests/redis_worker.py) driven over its stdin and stdout."""

    def __init__(self, proc: Process) -> None:
        self.proc = proc
        assert proc.stdout is not None
        self._out = BufferedByteReceiveStream(proc.stdout)

    async def line(self) -> str:
        with anyio.fail_after(30):
            return (await self._out.receive_until(b"\n", 1 << 20)).decode()

    async def expect(self, text: str) -> None:
        got = await self.line()
        assert got == text, got

    async def go(self) -> None:
        assert self.proc.stdin is not None
        await self.proc.stdin.send(b"go\n")

    async def summary(self) -> dict[str, object]:
        while True:
            line = await self.line()
            if line.startswith("{"):
                result: dict[str, object] = msgspec.json.decode(line)
                return result


@asynccontextmanager
async def workers(
    n: int, cfg: dict[str, object], *, delay_max: float = 0.0
) -> AsyncIterator[list[Worker]]:
    """Start ``n`` worker processes and wait until each says it is ready."""
    procs: list[Process] = []
    try:
        for i in range(n):
            own = {**cfg, "delay_max": delay_max, "seed": 1000 + i}
            procs.append(
                await anyio.open_process(
                    [sys.executable, str(WORKER), msgspec.json.encode(own).decode()],
                    stderr=None,
                )
            )
        ws = [Worker(p) for p in procs]
        for w in ws:
            await w.expect("ready")
        yield ws
        with anyio.fail_after(30):
            for p in procs:
                assert await p.wait() == 0
    finally:
        with anyio.CancelScope(shield=True):
            for p in procs:
                if p.returncode is None:
                    p.kill()
                    await p.wait()
                await p.aclose()


def worker_config(
    redis_server: RedisServer, base_url: str, key: str, calls: int
) -> dict[str, object]:
    return {
        "redis_url": redis_server.url,
        "base_url": base_url,
        "token": API_TOKEN,
        "account": ACCOUNT,
        "instance": "i-1",
        "key": key,
        "requests": 20,
        "period": 1.0,
        "calls": calls,
    }


# -- across processes ---------------------------------------------------------------


@pytest.mark.anyio
async def test_four_processes_share_one_window_as_the_api_counts_it(
    redis_server: RedisServer, key: str
) -> None:
    # Each request leaves up to 0.5 s after its grant (seeded per process). With slots
    # freeing at `period`, the API counted 31-40 arrivals in one second; the margin
    # (default 1 s) keeps every one-second window at the API within 20.
    async with serve_recording() as (base_url, arrivals):
        cfg = worker_config(redis_server, base_url, key, calls=10)
        async with workers(4, cfg, delay_max=0.5) as ws:
            for w in ws:
                await w.go()
            summaries = [await w.summary() for w in ws]
    assert all(s == {"ok": 10, "failures": []} for s in summaries), summaries
    assert len(arrivals.times) == 40
    assert set(arrivals.statuses) == {200}
    times = sorted(arrivals.times)
    tightest = min(times[i + 20] - times[i] for i in range(len(times) - 20))
    assert tightest >= 1.0, tightest
    # And the limit did not starve anyone: 40 at 20 per 2 s take about 2.5 s.
    assert times[-1] - times[0] < 6.0


@pytest.mark.anyio
async def test_retry_after_in_one_process_pauses_the_others(
    redis_server: RedisServer, key: str
) -> None:
    async with serve_recording() as (base_url, arrivals):
        arrivals.scripted.append(
            web.Response(status=429, headers={"Retry-After": "4"},
                         body=b'{"success":false,"errors":[{"code":971,"message":"Please'
                              b' wait and consider throttling your request speed"}],'
                              b'"messages":[],"result":null}',
                         content_type="application/json")
        )
        cfg = worker_config(redis_server, base_url, key, calls=1)
        async with workers(4, cfg) as (first, *others):
            await first.go()
            await first.expect("paused")  # the 429 reached it and the pause is in Redis
            assert arrivals.statuses == [429]
            t429 = arrivals.times[0]
            started = time.monotonic()
            for w in others:
                await w.go()
            summaries = [await w.summary() for w in (first, *others)]
    assert started - t429 < 3.0  # the others really started while the pause lasted
    assert all(s == {"ok": 1, "failures": []} for s in summaries), summaries
    assert arrivals.statuses == [429, 200, 200, 200, 200]
    # Everything after the 429, from the first process and the others alike, waited it out.
    assert min(arrivals.times[1:]) >= t429 + 4.0 - 0.02, [t - t429 for t in arrivals.times]


# -- one process, several limiter objects --------------------------------------------


@pytest.mark.anyio
async def test_limiters_on_one_key_share_the_window(
    redis_server: RedisServer, key: str
) -> None:
    a = RedisRateLimit.from_url(redis_server.url, requests=3, period=30.0, key=key)
    b = RedisRateLimit.from_url(redis_server.url, requests=3, period=30.0, key=key)
    async with a, b:
        await a.acquire()
        await b.acquire()
        await a.acquire()
        with anyio.move_on_after(0.3) as scope:
            await b.acquire()
        assert scope.cancelled_caught  # the fourth waits for the first to leave the window
        other = RedisRateLimit.from_url(redis_server.url, requests=3, period=30.0, key=key + "x")
        async with other:
            with anyio.fail_after(5):
                await other.acquire()  # another key is another budget


@pytest.mark.anyio
async def test_waiter_sleeps_until_the_slot_frees(
    redis_server: RedisServer, rclient: aioredis.Redis, key: str
) -> None:
    limit = RedisRateLimit(rclient, requests=2, period=0.5, key=key, margin=0.0)
    scripts_before = await _scripts_run(rclient)
    start = time.monotonic()
    for _ in range(6):
        await limit.acquire()
    elapsed = time.monotonic() - start
    # 2 now, 2 after 0.5 s, 2 after 1 s.
    assert elapsed >= 1.0 - 0.02
    # Sleeping until the slot frees, not polling: at most 2 round trips per acquisition.
    scripts = await _scripts_run(rclient) - scripts_before
    assert 6 <= scripts <= 12, scripts


async def _scripts_run(client: aioredis.Redis) -> int:
    info = await client.info("commandstats")
    return int(info.get("cmdstat_evalsha", {}).get("calls", 0))


@pytest.mark.anyio
async def test_cancelled_acquire_never_keeps_a_slot(
    rclient: aioredis.Redis, key: str
) -> None:
    limit = RedisRateLimit(rclient, requests=1000, period=60.0, key=key)
    taken = 0
    for i in range(60):
        # Deadlines from 0 to ~0.6 ms land before, during and after the round trip; the
        # last few are generous, so slots are taken even on a loaded machine.
        with anyio.move_on_after(i * 0.00001 if i < 55 else 5.0) as scope:
            await limit.acquire()
        if not scope.cancelled_caught:
            taken += 1
    assert 0 < taken < 60
    assert await rclient.zcard(f"cfwf:{{{key}}}:window") == taken


@pytest.mark.anyio
async def test_cancelled_callers_sharing_a_round_trip_keep_no_slot(
    rclient: aioredis.Redis, key: str
) -> None:
    limit = RedisRateLimit(rclient, requests=1000, period=60.0, key=key)
    taken = 0

    async def one(deadline: float) -> None:
        nonlocal taken
        with anyio.move_on_after(deadline):
            await limit.acquire()
            taken += 1

    for _ in range(5):
        # Many callers at once share round trips; some are cancelled while theirs flies.
        async with anyio.create_task_group() as tg:
            for i in range(40):
                # Deadline 0 never gets a slot, 5 s always does (however loaded the
                # machine), and those in between land mid-round-trip.
                tg.start_soon(one, (i % 8) * 0.0001 if i % 8 != 7 else 5.0)
    assert 0 < taken < 200
    assert await rclient.zcard(f"cfwf:{{{key}}}:window") == taken
    with anyio.fail_after(5):
        await limit.acquire()  # and the queue still moves


@pytest.mark.anyio
async def test_a_crowd_larger_than_one_round_trip_carries(
    rclient: aioredis.Redis, key: str
) -> None:
    limit = RedisRateLimit(rclient, requests=550, period=60.0, key=key)
    done = 0
    all_granted = anyio.Event()

    async def one() -> None:
        nonlocal done
        await limit.acquire()
        done += 1
        if done == 550:
            all_granted.set()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for _ in range(600):  # more than one script call carries (256)
                tg.start_soon(one)
            await all_granted.wait()
            tg.cancel_scope.cancel()  # the other 50 wait for the window: stop them
    assert done == 550
    assert await rclient.zcard(f"cfwf:{{{key}}}:window") == 550


@pytest.mark.anyio
async def test_cancelled_waiter_lets_the_next_one_through(
    rclient: aioredis.Redis, key: str
) -> None:
    limit = RedisRateLimit(rclient, requests=1, period=0.4, key=key)
    await limit.acquire()
    with anyio.move_on_after(0.1):
        await limit.acquire()
    with anyio.fail_after(5):
        await limit.acquire()  # the cancelled waiter left no lock or slot behind
    assert await rclient.zcard(f"cfwf:{{{key}}}:window") == 1


@pytest.mark.anyio
async def test_ratelimit_header_with_nothing_left_pauses_every_limiter(
    redis_server: RedisServer, rclient: aioredis.Redis, key: str
) -> None:
    seen = RedisRateLimit(rclient, requests=100, period=60.0, key=key)
    async with RedisRateLimit.from_url(
        redis_server.url, requests=100, period=60.0, key=key
    ) as other:
        await seen.observe(RateLimitInfo(remaining=5, reset=30.0))  # plenty: no pause
        assert await rclient.exists(f"cfwf:{{{key}}}:pause") == 0
        await seen.observe(RateLimitInfo(remaining=0, reset=0.5))
        start = time.monotonic()
        await other.acquire()
        assert time.monotonic() - start >= 0.5 - 0.02


@pytest.mark.anyio
async def test_pause_never_shortens_a_longer_one(rclient: aioredis.Redis, key: str) -> None:
    limit = RedisRateLimit(rclient, requests=10, period=10.0, key=key)
    await limit.pause(30)
    await limit.pause(1)
    assert await rclient.pttl(f"cfwf:{{{key}}}:pause") > 25_000


@pytest.mark.anyio
async def test_every_key_written_expires_and_the_log_stays_bounded(
    redis_server: RedisServer, rclient: aioredis.Redis, key: str
) -> None:
    limit = RedisRateLimit(rclient, requests=5, period=30.0, key=key)
    for _ in range(5):
        await limit.acquire()
    with anyio.move_on_after(0.2):
        await limit.acquire()
    await limit.pause(2.0)
    await limit.observe(RateLimitInfo(remaining=0, reset=3.0))
    assert await rclient.zcard(f"cfwf:{{{key}}}:window") == 5
    keys = await rclient.keys("*")
    assert {f"cfwf:{{{key}}}:window".encode(), f"cfwf:{{{key}}}:pause".encode()} <= set(keys)
    for k in keys:  # every key on the server, including those of earlier tests
        ttl = await rclient.pttl(k)
        assert ttl > 0 or ttl == -2, (k, ttl)  # -2: it expired since KEYS; -1 would be forever


# -- no server-supplied wait counts for more than 15 minutes ------------------------

TEN_YEARS = 315_360_000.0


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["ratelimit-r0", "retry-after"])
async def test_a_ten_year_pause_is_capped_and_refused_by_every_limiter_at_once(
    redis_server: RedisServer, rclient: aioredis.Redis, key: str, how: str
) -> None:
    seen = RedisRateLimit(rclient, requests=5, period=1.0, key=key)
    if how == "ratelimit-r0":  # Ratelimit: "default";r=0;t=315360000
        await seen.observe(RateLimitInfo(remaining=0, reset=TEN_YEARS))
    else:  # Retry-After: 315360000
        await seen.pause(TEN_YEARS)
    assert 0 < await rclient.pttl(f"cfwf:{{{key}}}:pause") <= 900_000
    async with RedisRateLimit.from_url(
        redis_server.url, requests=5, period=1.0, key=key
    ) as other:
        for limit in (other, seen):  # another client on the same Redis, and the first
            with anyio.fail_after(5), pytest.raises(RateLimitError) as caught:
                await limit.acquire_within(60)
            assert caught.value.retry_after is not None
            assert 890 < caught.value.retry_after <= 900
    assert await rclient.zcard(f"cfwf:{{{key}}}:window") == 0, "refused calls take no slot"


@pytest.mark.anyio
async def test_a_too_long_pause_written_by_someone_else_is_capped_when_read(
    redis_server: RedisServer, rclient: aioredis.Redis, key: str
) -> None:
    seconds, micros = await rclient.time()
    now_us = seconds * 1_000_000 + micros
    await rclient.set(f"cfwf:{{{key}}}:pause", str(now_us + int(TEN_YEARS * 1_000_000)))
    limit = RedisRateLimit(rclient, requests=5, period=1.0, key=key)
    with anyio.fail_after(5), pytest.raises(RateLimitError) as caught:
        await limit.acquire_within(60)
    assert caught.value.retry_after is not None
    assert 890 < caught.value.retry_after <= 900
    assert 0 < await rclient.pttl(f"cfwf:{{{key}}}:pause") <= 900_000


@pytest.mark.anyio
async def test_acquire_within_waits_for_the_shared_window_itself(
    rclient: aioredis.Redis, key: str
) -> None:
    limit = RedisRateLimit(rclient, requests=1, period=0.3, key=key, margin=0.0)
    await limit.acquire_within(0.01)
    start = time.monotonic()
    await limit.acquire_within(0.01)  # the window's own wait is not the server's word
    assert time.monotonic() - start >= 0.3 - 0.02


# -- a key of the wrong type, an outage --------------------------------------------


class CountingLimit(RateLimit):
    """A fallback that counts the acquisitions it was asked for."""

    calls = 0

    async def acquire(self) -> None:
        self.calls += 1
        await super().acquire()


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("which", "write"),
    [
        ("window", lambda c, k: c.set(k, "someone else's string")),
        ("pause", lambda c, k: c.rpush(k, "a", "list")),
        ("pause", lambda c, k: c.set(k, "not a time")),
    ],
)
async def test_a_key_of_the_wrong_type_fails_closed_and_says_so(
    rclient: aioredis.Redis, key: str, which: str, write: Any
) -> None:
    redis_key = f"cfwf:{{{key}}}:{which}"
    await write(rclient, redis_key)
    fallback = CountingLimit(100, 60.0)
    limit = RedisRateLimit(rclient, requests=5, period=1.0, key=key, fallback=fallback)
    for _ in range(2):  # and again: no silent switch to the fallback
        with pytest.raises(RateLimiterUnavailableError) as caught:
            await limit.acquire()
        text = str(caught.value)
        assert redis_key in text
        assert "wrong type" in text
        assert f"DEL {redis_key}" in text
        assert "cannot be reached" not in text
    assert fallback.calls == 0
    await rclient.delete(redis_key)
    await limit.acquire()
    assert await rclient.zcard(f"cfwf:{{{key}}}:window") == 1


@pytest.mark.anyio
async def test_fallback_during_an_outage_and_back_to_redis_after(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port, password = free_port(), "outage-secret-pw"
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    fallback = CountingLimit(100, 60.0)
    async with RedisRateLimit.from_url(
        url, requests=100, period=60.0, key="acct", fallback=fallback, retry_interval=0.001
    ) as limit:
        for phase in ("up", "restarted"):
            with running_redis(tmp_path, port=port, password=password):
                await limit.acquire()  # through Redis
                check = aioredis.from_url(url)
                try:
                    assert await check.zcard("cfwf:{acct}:window") == 1, phase
                finally:
                    await check.aclose()
                assert fallback.calls == (0 if phase == "up" else 1)
            if phase == "up":  # Redis stopped: the fallback takes over
                await limit.acquire()
                assert fallback.calls == 1
    assert "cannot be reached" in caplog.text
    assert "answers again" in caplog.text
    assert password not in caplog.text


# -- failing closed ---------------------------------------------------------------


@pytest.mark.anyio
async def test_unreachable_redis_fails_closed_without_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    password = "hunter2-secret-pw"
    port = free_port()
    limit = RedisRateLimit.from_url(
        f"redis://:{password}@127.0.0.1:{port}/0", requests=10, period=1.0, key="acct"
    )
    async with serve_recording() as (base_url, arrivals), limit, WorkflowsSession(
        api_token=API_TOKEN, account_id=ACCOUNT, base_url=base_url, rate_limit=limit
    ) as session:
        with pytest.raises(RateLimiterUnavailableError) as info:
            await session.get_instance("wf", "i-1")
    exc = info.value
    assert isinstance(exc, WorkflowsError)
    assert (exc.host, exc.port) == ("127.0.0.1", port)
    assert f"127.0.0.1:{port}" in str(exc)
    assert arrivals.times == []  # nothing went to the API
    texts = [
        str(exc), repr(exc), repr(limit),
        "".join(traceback.format_exception(exc)), caplog.text,
    ]
    assert not any(password in t for t in texts)


@pytest.mark.anyio
async def test_wrong_password_fails_closed_without_either_password(
    redis_server: RedisServer, key: str
) -> None:
    wrong = "wrong-" + redis_server.password
    async with RedisRateLimit.from_url(
        f"redis://:{wrong}@{redis_server.host}:{redis_server.port}/0",
        requests=10, period=1.0, key=key,
    ) as limit:
        with pytest.raises(RateLimiterUnavailableError) as info:
            await limit.acquire()
    text = str(info.value) + "".join(traceback.format_exception(info.value))
    assert wrong not in text
    assert redis_server.password not in text
    assert str(redis_server.port) in text


@pytest.mark.anyio
async def test_fallback_limits_in_process_while_redis_is_away(
    caplog: pytest.LogCaptureFixture,
) -> None:
    password = "fallback-secret-pw"
    async with RedisRateLimit.from_url(
        f"redis://:{password}@127.0.0.1:{free_port()}/0",
        requests=100, period=60.0, key="acct", fallback=RateLimit(2, 60.0),
    ) as limit:
        await limit.acquire()
        await limit.acquire()
        with anyio.move_on_after(0.3) as scope:
            await limit.acquire()
        assert scope.cancelled_caught  # the fallback's 2-per-minute holds
    assert "cannot be reached" in caplog.text
    assert password not in caplog.text


@pytest.mark.anyio
async def test_back_to_the_shared_window_when_redis_returns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    password = "returning-secret-pw"
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    async with RedisRateLimit.from_url(
        url, requests=100, period=60.0, key="acct", fallback=RateLimit(100, 60.0),
        retry_interval=0.05,
    ) as limit:
        await limit.acquire()  # nobody listens yet: the fallback let it through
        assert "cannot be reached" in caplog.text
        with running_redis(tmp_path, port=port, password=password):
            await anyio.sleep(0.1)  # past retry_interval, so Redis is asked again
            await limit.acquire()
            check = aioredis.from_url(url)
            try:
                assert await check.zcard("cfwf:{acct}:window") == 1
            finally:
                await check.aclose()
    assert "answers again" in caplog.text
    assert password not in caplog.text


# -- arguments and ownership ------------------------------------------------------


@pytest.mark.anyio
async def test_caller_client_stays_open_and_ours_is_closed(
    redis_server: RedisServer, rclient: aioredis.Redis, key: str
) -> None:
    async with RedisRateLimit(rclient, requests=5, period=1.0, key=key) as limit:
        await limit.acquire()
    assert await rclient.ping()
    owned = RedisRateLimit.from_url(redis_server.url, requests=5, period=1.0, key=key)
    await owned.acquire()
    await owned.aclose()
    await owned.aclose()  # twice is fine


def test_repr_names_the_server_not_the_password(redis_server: RedisServer) -> None:
    limit = RedisRateLimit.from_url(redis_server.url, requests=1200, period=300, key="acct")
    text = repr(limit)
    assert redis_server.password not in text
    assert f"127.0.0.1:{redis_server.port}/0" in text
    assert "1200" in text


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"requests": 0}, "requests"),
        ({"period": 0}, "period"),
        ({"period": float("inf")}, "period"),
        ({"margin": -1}, "margin"),
        ({"key": ""}, "key"),
        ({"key": "a\nb"}, "key"),
        ({"retry_interval": -1}, "retry_interval"),
    ],
)
def test_invalid_arguments_name_themselves(kwargs: dict[str, object], name: str) -> None:
    args: dict[str, object] = {"requests": 10, "period": 1.0, "key": "k", **kwargs}
    with pytest.raises(ValueError, match=name):
        RedisRateLimit.from_url("redis://127.0.0.1:1/0", **args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"requests": 1.5}, "requests"),
        ({"requests": True}, "requests"),
        ({"period": "1"}, "period"),
        ({"margin": None}, "margin"),
        ({"key": 5}, "key"),
        ({"retry_interval": True}, "retry_interval"),
    ],
)
def test_arguments_of_the_wrong_type_are_type_errors(
    kwargs: dict[str, object], name: str
) -> None:
    args: dict[str, object] = {"requests": 10, "period": 1.0, "key": "k", **kwargs}
    with pytest.raises(TypeError, match=name):
        RedisRateLimit.from_url("redis://127.0.0.1:1/0", **args)  # type: ignore[arg-type]


def test_bad_client_and_url() -> None:
    with pytest.raises(TypeError, match="client"):
        RedisRateLimit(object(), requests=1, period=1.0, key="k")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="url") as info:
        RedisRateLimit.from_url("http://:s3cr3t@host/0", requests=1, period=1.0, key="k")
    assert "s3cr3t" not in str(info.value)
    with pytest.raises(ValueError, match="url") as info:
        RedisRateLimit.from_url("redis://:s3cr3t@host:notaport/0", requests=1, period=1.0,
                                key="k")
    assert "s3cr3t" not in str(info.value)
