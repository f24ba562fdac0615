"""Shared fixtures: every async test runs on asyncio (aiohttp's loop) via anyio's plugin."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

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


@pytest.fixture
async def session(fake_api: FakeWorkflowsAPI, base_url: str) -> AsyncIterator[WorkflowsSession]:
    async with WorkflowsSession(
        api_token=fake_api.api_token,
        account_id=fake_api.account_id,
        base_url=base_url,
        rate_limit=None,
    ) as s:
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
