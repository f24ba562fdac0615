"""Shared fixtures: every async test runs on asyncio (aiohttp's loop) via anyio's plugin."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol

import pytest
from aiohttp import web

from cfwf_async import WorkflowsSession
from cfwf_async.testing import FakeWorkflowsAPI


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _no_cloudflare_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never pick up a developer's real credentials from the environment."""
    for name in (
        "CLOUDFLARE_API_TOKEN",
        "CLOUDFLARE_API_KEY",
        "CLOUDFLARE_EMAIL",
        "CLOUDFLARE_ACCOUNT_ID",
        "CLOUDFLARE_BASE_URL",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def fake_api() -> FakeWorkflowsAPI:
    return FakeWorkflowsAPI()


@pytest.fixture
async def base_url(fake_api: FakeWorkflowsAPI) -> AsyncIterator[str]:
    async with fake_api.serve() as url:
        yield url


class SessionFactory(Protocol):
    def __call__(self, url: str | None = None, **kwargs: Any) -> WorkflowsSession: ...


@pytest.fixture
async def make_session(
    fake_api: FakeWorkflowsAPI, base_url: str
) -> AsyncIterator[SessionFactory]:
    """The one way tests build a session: ``make_session(url=None, **overrides)``.

    Bound to the fake API (its token and account, no rate limit) unless told otherwise;
    ``url`` points it at another server (a ``serve_app`` one). Every session it made is
    closed when the test ends.
    """
    made: list[WorkflowsSession] = []

    def make(url: str | None = None, **kwargs: Any) -> WorkflowsSession:
        kwargs.setdefault("api_token", fake_api.api_token)
        kwargs.setdefault("account_id", fake_api.account_id)
        kwargs.setdefault("rate_limit", None)
        made.append(WorkflowsSession(base_url=base_url if url is None else url, **kwargs))
        return made[-1]

    yield make
    for s in made:
        await s.aclose()


@pytest.fixture
async def session(make_session: SessionFactory) -> AsyncIterator[WorkflowsSession]:
    async with make_session() as s:
        yield s


@asynccontextmanager
async def _serve_app(app: web.Application) -> AsyncIterator[str]:
    """Run a plain aiohttp.web app on loopback; yield its root URL (no trailing slash)."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
def serve_app() -> Callable[[web.Application], AbstractAsyncContextManager[str]]:
    """For hand-written misbehaving servers: ``async with serve_app(app) as url: ...``."""
    return _serve_app


# Redis: each test module that asks gets a redis-server of its own (started once per
# module), and each test a client of its own. Without the redis extra there is nothing
# to start, and the modules that need Redis skip themselves.
try:
    import redis.asyncio as aioredis
    from redis_server import RedisServer, running_redis
except ImportError:  # pragma: no cover - the test extra brings redis
    pass
else:

    @pytest.fixture(scope="module")
    def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
        with running_redis(tmp_path_factory.mktemp("redis")) as server:
            yield server

    @pytest.fixture
    async def rclient(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
        client = aioredis.from_url(redis_server.url)
        try:
            yield client
        finally:
            await client.aclose()
