"""The session's coalescing and caches, against the fake API over real HTTP.

A ``Held`` server holds every request at its door until the test lets it through, so
"calls in flight at once" is a fact the test arranges, not a timing hope.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

import anyio
import pytest
from aiohttp import web
from redis_server import REDIS_SERVER, RedisServer, free_port, running_redis

from cfwf_async import (
    InternalServerError,
    MemoryCache,
    NotFoundError,
    RateLimit,
    StepOutput,
    StepStream,
    WorkflowsSession,
)
from cfwf_async.testing import API_PREFIX, FakeWorkflowsAPI, Fault, make_instance

pytestmark = pytest.mark.anyio

WF, ID = "checkout", "order-1"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Held:
    """A fake API whose requests wait at the door until ``open`` is set."""

    def __init__(self) -> None:
        self.api = FakeWorkflowsAPI()
        self.api.add_instance(WF, ID, make_instance("running", steps=2))
        self.open = anyio.Event()
        self.arrived = 0
        self.arrival = anyio.Event()  # set (and replaced) at each arrival
        self.gone = anyio.Event()  # a held request's client went away

    @property
    def requests(self) -> int:
        return len(self.api.requests)

    async def arrivals(self, n: int) -> None:
        with anyio.fail_after(5):
            while self.arrived < n:
                await self.arrival.wait()

    def app(self) -> web.Application:
        @web.middleware
        async def door(
            request: web.Request,
            handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
        ) -> web.StreamResponse:
            self.arrived += 1
            self.arrival.set()
            self.arrival = anyio.Event()
            try:
                await self.open.wait()
            except asyncio.CancelledError:  # handler_cancellation: the client left
                self.gone.set()
                raise
            return await handler(request)

        app = self.api.make_app()
        app.middlewares.append(door)
        return app


@asynccontextmanager
async def held_url(held: Held) -> AsyncIterator[str]:
    """The base URL of ``held``'s server, running until the block ends."""
    # handler_cancellation: a client that goes away cancels its handler, so the test
    # sees a released connection from the server's side.
    runner = web.AppRunner(held.app(), handle_signals=False, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}{API_PREFIX}"
    finally:
        await runner.cleanup()


def held_session(held: Held, url: str, **session: Any) -> WorkflowsSession:
    session.setdefault("rate_limit", None)
    return WorkflowsSession(api_token=held.api.api_token, account_id=held.api.account_id,
                            base_url=url, **session)


@asynccontextmanager
async def serving(held: Held, **session: Any) -> AsyncIterator[WorkflowsSession]:
    async with held_url(held) as url, held_session(held, url, **session) as s:
        yield s


async def _settle() -> None:
    for _ in range(10):
        await anyio.lowlevel.checkpoint()


# -- coalescing ---------------------------------------------------------------------------


async def test_500_identical_get_instance_calls_reach_the_api_as_one_request() -> None:
    held = Held()
    got: list[object] = []
    async with serving(held) as s, anyio.create_task_group() as tg:
        for _ in range(500):
            tg.start_soon(lambda: _append(got, s.get_instance(WF, ID)))
        await held.arrivals(1)
        await _settle()
        held.open.set()
    assert held.requests == 1
    assert len(got) == 500
    assert all(g is got[0] for g in got), "every caller gets the one result"


async def _append(into: list[object], call: Awaitable[object]) -> None:
    into.append(await call)


async def test_cancelling_499_callers_still_delivers_the_500th() -> None:
    held = Held()
    async with serving(held) as s:
        scopes = [anyio.CancelScope() for _ in range(499)]
        got: list[object] = []

        async def cancellable(scope: anyio.CancelScope) -> None:
            with scope:
                await s.get_instance(WF, ID)
            got.append("cancelled")

        async with anyio.create_task_group() as tg:
            for scope in scopes:
                tg.start_soon(cancellable, scope)
            tg.start_soon(lambda: _append(got, s.get_instance(WF, ID)))
            await held.arrivals(1)
            await _settle()
            for scope in scopes:
                scope.cancel()
            await _settle()
            held.open.set()
    assert held.requests == 1
    assert not held.gone.is_set(), "the request went on for the last caller"
    assert got.count("cancelled") == 499
    [inst] = [g for g in got if g != "cancelled"]
    assert getattr(inst, "status", None) == "running"


async def test_when_every_caller_is_gone_the_request_is_cancelled_and_released() -> None:
    held = Held()
    async with serving(held) as s:
        with anyio.move_on_after(5) as scope:
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(s.get_instance, WF, ID)
                await held.arrivals(1)
                tg.cancel_scope.cancel()
        assert not scope.cancelled_caught
        with anyio.fail_after(5):
            await held.gone.wait()  # the server saw the connection go
        assert len(s._reads.flights or ()) == 0
        held.open.set()
        assert (await s.get_instance(WF, ID)).status == "running"  # the session is fine
    assert held.requests == 1


async def test_every_caller_gets_an_error_of_the_same_type_and_text() -> None:
    held = Held()
    held.api.inject(Fault.http(500))
    errors: list[BaseException] = []

    async def call(s: WorkflowsSession) -> None:
        try:
            await s.get_instance(WF, ID)
        except InternalServerError as exc:
            errors.append(exc)

    async with serving(held, max_retries=0) as s, anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(call, s)
        await held.arrivals(1)
        await _settle()
        held.open.set()
    assert held.requests == 1
    assert len(errors) == 20
    assert {(type(e), str(e)) for e in errors} == {(InternalServerError, str(errors[0]))}


async def test_a_streamed_output_is_never_shared() -> None:
    held = Held()
    held.api.add_step_output(WF, ID, "export", b"payload")
    bodies: list[bytes] = []

    async def read(s: WorkflowsSession) -> None:
        out = await s.get_step_output(WF, ID, name="export")
        assert isinstance(out, StepStream)
        async with out:
            bodies.append(await out.read())

    async with serving(held) as s, anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(read, s)
        await held.arrivals(1)
        await _settle()
        held.open.set()
    assert bodies == [b"payload"] * 3
    assert held.requests == 3, "callers that joined a stream sent their own request"


async def test_json_step_outputs_and_listing_pages_are_shared_too() -> None:
    held = Held()
    held.api.add_step_output(WF, ID, "fetch", {"rows": 3})
    outs: list[object] = []
    pages: list[object] = []

    async def first_page(s: WorkflowsSession) -> None:
        async for summary in s.list_instances(WF):
            pages.append(summary)
            return

    async with serving(held) as s, anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(lambda: _append(outs, s.get_step_output(WF, ID, name="fetch")))
            tg.start_soon(first_page, s)
        await held.arrivals(2)
        await _settle()
        held.open.set()
    assert held.requests == 2
    assert all(o is outs[0] for o in outs)
    assert isinstance(outs[0], StepOutput)
    assert len(pages) == 5


async def test_different_queries_or_accounts_are_not_shared() -> None:
    held = Held()
    async with serving(held) as s, anyio.create_task_group() as tg:
        tg.start_soon(s.get_instance, WF, ID)
        tg.start_soon(lambda: s.get_instance(WF, ID, simple=True))
        tg.start_soon(lambda: _swallow(s.get_instance(WF, ID, account_id="other")))
        await held.arrivals(3)
        held.open.set()
    assert held.requests == 3


async def _swallow(call: Awaitable[object]) -> None:
    with suppress(Exception):
        await call


async def test_a_joined_call_takes_no_limiter_slot() -> None:
    held = Held()
    # One request per 300 s: a second request would wait (and fail the deadline).
    async with serving(held, rate_limit=RateLimit(1, 300.0)) as s:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                for _ in range(10):
                    tg.start_soon(s.get_instance, WF, ID)
                await held.arrivals(1)
                await _settle()
                held.open.set()
    assert held.requests == 1


async def test_coalesce_false_and_max_age_0_send_their_own_requests() -> None:
    held = Held()
    async with serving(held, coalesce=False) as s, anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(s.get_instance, WF, ID)
        await held.arrivals(4)
        held.open.set()
    assert held.requests == 4
    held = Held()
    async with serving(held) as s, anyio.create_task_group() as tg:
        tg.start_soon(s.get_instance, WF, ID)
        await held.arrivals(1)
        tg.start_soon(lambda: s.get_instance(WF, ID, max_age=0))
        await held.arrivals(2)
        held.open.set()
    assert held.requests == 2


async def test_many_waits_on_one_instance_share_one_poll() -> None:
    api = FakeWorkflowsAPI()
    api.add_instance(WF, ID, make_instance("running", steps=2))
    polls = 0

    @web.middleware
    async def finish(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        nonlocal polls
        if request.query.get("simple") == "true":
            polls += 1
            if polls >= 3:
                api.add_instance(WF, ID, make_instance("complete", steps=3))
        return await handler(request)

    app = api.make_app()
    app.middlewares.append(finish)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}{API_PREFIX}"
    got: list[object] = []
    try:
        async with WorkflowsSession(
            api_token=api.api_token, account_id=api.account_id, base_url=url, rate_limit=None
        ) as s, anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(
                    lambda: _append(got, s.wait_for_instance(WF, ID, poll_interval=0.01))
                )
    finally:
        await runner.cleanup()
    assert polls == 3, "fifty waiters, one poll loop"
    assert len(api.requests) == 4, "three polls and one full fetch"
    assert len(got) == 50
    assert all(getattr(g, "status", None) == "complete" for g in got)


# -- the cache ----------------------------------------------------------------------------


async def test_a_cached_instance_is_reused_then_refreshed_after_ttl(
    fake_api: FakeWorkflowsAPI, make_session: Any
) -> None:
    clock = Clock()
    fake_api.add_instance(WF, ID, make_instance("running", steps=1))
    s = make_session(cache=MemoryCache(ttl=1.0, clock=clock))
    first = await s.get_instance(WF, ID)
    assert await s.get_instance(WF, ID) is first, "a hit is the stored model itself"
    fake_api.add_instance(WF, ID, make_instance("paused", steps=1))
    clock.now += 0.9
    assert (await s.get_instance(WF, ID)).status == "running"
    assert len(fake_api.requests) == 1
    clock.now += 0.2  # past ttl
    assert (await s.get_instance(WF, ID)).status == "paused"
    assert len(fake_api.requests) == 2


async def test_a_terminal_instance_is_kept_for_terminal_ttl(
    fake_api: FakeWorkflowsAPI, make_session: Any
) -> None:
    clock = Clock()
    fake_api.add_instance(WF, ID, make_instance("complete", steps=1))
    s = make_session(cache=MemoryCache(ttl=1.0, terminal_ttl=60.0, clock=clock))
    await s.get_instance(WF, ID)
    clock.now += 59.0
    await s.get_instance(WF, ID)
    assert len(fake_api.requests) == 1
    clock.now += 1.5
    await s.get_instance(WF, ID)
    assert len(fake_api.requests) == 2


async def test_only_complete_json_step_outputs_are_cached(
    fake_api: FakeWorkflowsAPI, make_session: Any
) -> None:
    fake_api.add_step_output(WF, ID, "done", {"n": 1})
    fake_api.add_step_output(WF, ID, "busy", None, status="running")
    s = make_session(cache=MemoryCache())
    for _ in range(3):
        await s.get_step_output(WF, ID, name="done")
        await s.get_step_output(WF, ID, name="busy")
    paths = [r.query.get("name") for r in fake_api.requests]
    assert paths.count("done") == 1
    assert paths.count("busy") == 3


async def test_max_age_bounds_a_cached_answer_and_0_always_sends(
    fake_api: FakeWorkflowsAPI, make_session: Any
) -> None:
    clock = Clock()
    fake_api.add_instance(WF, ID, make_instance("running", steps=1))
    s = make_session(cache=MemoryCache(ttl=10.0, clock=clock))
    await s.get_instance(WF, ID)
    clock.now += 0.5
    await s.get_instance(WF, ID, max_age=1.0)  # young enough
    assert len(fake_api.requests) == 1
    await s.get_instance(WF, ID, max_age=0.4)  # too old for this caller
    assert len(fake_api.requests) == 2
    await s.get_instance(WF, ID, max_age=0)
    assert len(fake_api.requests) == 3


async def test_errors_are_never_cached(fake_api: FakeWorkflowsAPI, make_session: Any) -> None:
    s = make_session(cache=MemoryCache())
    with pytest.raises(NotFoundError):
        await s.get_instance(WF, ID)
    fake_api.add_instance(WF, ID, make_instance("running", steps=1))
    assert (await s.get_instance(WF, ID)).status == "running"
    assert len(fake_api.requests) == 2


# -- writes -------------------------------------------------------------------------------
# The session's write calls call _note_write after every write; until they exist these
# tests call it directly, exactly as a write does.


async def test_a_write_drops_the_instances_cache_entries(
    fake_api: FakeWorkflowsAPI, make_session: Any
) -> None:
    fake_api.add_instance(WF, ID, make_instance("running", steps=1))
    fake_api.add_step_output(WF, ID, "done", {"n": 1})
    s = make_session(cache=MemoryCache(ttl=60.0))
    await s.get_instance(WF, ID)
    await s.get_instance(WF, ID, simple=True)
    await s.get_step_output(WF, ID, name="done")
    fake_api.add_instance(WF, ID, make_instance("paused", steps=1))
    s._note_write(fake_api.account_id, WF, ID)
    assert (await s.get_instance(WF, ID)).status == "paused"
    assert (await s.get_instance(WF, ID, simple=True)).status == "paused"
    await s.get_step_output(WF, ID, name="done")
    assert len(fake_api.requests) == 6


async def test_a_read_after_a_write_never_joins_a_request_begun_before_it() -> None:
    held = Held()
    got: list[Any] = []
    async with serving(held, cache=MemoryCache(ttl=60.0)) as s:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: _append(got, s.get_instance(WF, ID)))
            await held.arrivals(1)
            held.api.add_instance(WF, ID, make_instance("paused", steps=1))
            s._note_write(held.api.account_id, WF, ID)
            tg.start_soon(lambda: _append(got, s.get_instance(WF, ID)))
            await held.arrivals(2)
            held.open.set()
        assert held.requests == 2, "the read after the write sent its own request"
        # The answer of the request begun before the write was not stored after it.
        assert (await s.get_instance(WF, ID)).status == "paused"
    assert [g.status for g in got] == ["paused", "paused"]


# -- logging and arguments ----------------------------------------------------------------


async def test_joined_calls_and_cache_hits_are_logged_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    held = Held()
    caplog.set_level(logging.DEBUG, logger="cfwf_async")
    async with serving(held, cache=MemoryCache()) as s:
        async with anyio.create_task_group() as tg:
            tg.start_soon(s.get_instance, WF, ID)
            await held.arrivals(1)
            tg.start_soon(s.get_instance, WF, ID)
            await _settle()
            held.open.set()
        await s.get_instance(WF, ID)
    messages = [r.getMessage() for r in caplog.records]
    assert any("joined a request in flight" in m for m in messages)
    assert any(m.endswith("-> from the cache") for m in messages)
    assert not any(held.api.api_token in m for m in messages)


async def test_invalid_arguments_fail_before_any_request(
    fake_api: FakeWorkflowsAPI, make_session: Any
) -> None:
    with pytest.raises(TypeError, match="coalesce"):
        make_session(coalesce="yes")
    with pytest.raises(TypeError, match="cache"):
        make_session(cache=object())
    s = make_session()
    with pytest.raises(ValueError, match="max_age"):
        await s.get_instance(WF, ID, max_age=-1)
    with pytest.raises(TypeError, match="max_age"):
        await s.get_step_output(WF, ID, name="x", max_age="1")
    assert fake_api.requests == []


# -- Redis --------------------------------------------------------------------------------

needs_redis = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    with running_redis(tmp_path_factory.mktemp("quota-redis")) as server:
        yield server


@needs_redis
async def test_sessions_sharing_a_redis_cache_share_answers(
    fake_api: FakeWorkflowsAPI, make_session: Any, redis_server: RedisServer
) -> None:
    from cfwf_async.redis import RedisCache

    fake_api.add_instance(WF, ID, make_instance("complete", steps=1))
    async with RedisCache.from_url(
        redis_server.url, ttl=1.0, terminal_ttl=60.0, prefix="quota-share:"
    ) as cache:
        one, two = make_session(cache=cache), make_session(cache=cache)
        assert (await one.get_instance(WF, ID)).status == "complete"
        assert (await two.get_instance(WF, ID)).status == "complete"
        assert len(fake_api.requests) == 1
        one._note_write(fake_api.account_id, WF, ID)  # as a write does
        await one.aclose()  # lets the invalidation reach Redis
        await two.get_instance(WF, ID)
        assert len(fake_api.requests) == 2, "one session's write dropped the shared entry"


@asynccontextmanager
async def two_processes(
    held: Held, redis_server: RedisServer, prefix: str
) -> AsyncIterator[tuple[WorkflowsSession, WorkflowsSession]]:
    """Two sessions as two processes would have them: a RedisCache and a Redis client
    each, on one Redis."""
    from cfwf_async.redis import RedisCache

    async with held_url(held) as url, \
            RedisCache.from_url(redis_server.url, prefix=prefix, fill_wait=30) as ca, \
            RedisCache.from_url(redis_server.url, prefix=prefix, fill_wait=30) as cb, \
            held_session(held, url, cache=ca) as a, held_session(held, url, cache=cb) as b:
        yield a, b


async def _waiting_in_redis(session: WorkflowsSession) -> None:
    """Until ``session``'s RedisCache listens for stores (it starts to when a read first
    waits for another process's request)."""
    with anyio.fail_after(5):
        await session._reads.cache._fills.ready.wait()  # type: ignore[union-attr]


@needs_redis
async def test_processes_sharing_a_redis_cache_share_one_request(
    redis_server: RedisServer,
) -> None:
    held = Held()
    async with two_processes(held, redis_server, "quota-miss-1:") as (a, b):
        got: list[object] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: _append(got, a.get_instance(WF, ID)))
            await held.arrivals(1)
            for _ in range(20):  # b's callers: one lookup, waiting for a's request
                tg.start_soon(lambda: _append(got, b.get_instance(WF, ID)))
            await _waiting_in_redis(b)
            held.open.set()
    assert held.requests == 1
    assert len(got) == 21
    assert all(getattr(g, "status", None) == "running" for g in got)


@needs_redis
@pytest.mark.parametrize("how", ["fails", "is cancelled"])
async def test_a_process_waiting_for_a_request_that_fails_sends_its_own_at_once(
    redis_server: RedisServer, how: str
) -> None:
    held = Held()
    if how == "fails":
        held.api.inject(Fault.http(404))
    prefix = f"quota-miss-{how[:4]}:"
    async with two_processes(held, redis_server, prefix) as (a, b):
        got: list[object] = []
        with anyio.fail_after(10):  # far less than the 30 s fill_wait
            async with anyio.create_task_group() as tg:
                scope = anyio.CancelScope()

                async def first() -> None:
                    with scope, suppress(NotFoundError):
                        await a.get_instance(WF, ID)

                tg.start_soon(first)
                await held.arrivals(1)
                tg.start_soon(lambda: _append(got, b.get_instance(WF, ID)))
                await _waiting_in_redis(b)
                if how == "is cancelled":
                    scope.cancel()
                held.open.set()
    assert [getattr(g, "status", None) for g in got] == ["running"]
    assert held.arrived == 2


@needs_redis
async def test_a_read_after_a_write_does_not_take_another_process_answer_begun_before(
    redis_server: RedisServer,
) -> None:
    held = Held()
    async with two_processes(held, redis_server, "quota-miss-write:") as (a, b):
        got: list[object] = []
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: _append(got, a.get_instance(WF, ID)))
                await held.arrivals(1)  # a's request began: before b's write
                b._note_write(held.api.account_id, WF, ID)  # as b's pause would
                tg.start_soon(lambda: _append(got, b.get_instance(WF, ID)))
                await _waiting_in_redis(b)
                held.open.set()
    # a's answer was not stored (the write came after its lookup), so b sent its own.
    assert held.arrived == 2
    assert len(got) == 2


async def test_redis_down_does_not_fail_calls(
    fake_api: FakeWorkflowsAPI, make_session: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from cfwf_async.redis import RedisCache

    fake_api.add_instance(WF, ID, make_instance("running", steps=1))
    async with RedisCache.from_url(
        f"redis://127.0.0.1:{free_port()}/0", ttl=1.0, terminal_ttl=60.0
    ) as cache:
        s = make_session(cache=cache)
        for _ in range(3):
            assert (await s.get_instance(WF, ID)).status == "running"
        s._note_write(fake_api.account_id, WF, ID)
        assert (await s.get_instance(WF, ID)).status == "running"
    assert len(fake_api.requests) == 4
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
