"""wait_for_instance: cheap polls with a gentle backoff, the full instance at the end.

The fake API's app gets a middleware that re-registers the instance as finished after
a number of polls, so the status really changes on the server between requests.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio
import pytest
from aiohttp import web

from cfwf_async import NotFoundError, WorkflowsError, WorkflowsSession
from cfwf_async.testing import API_PREFIX, FakeWorkflowsAPI, make_instance

WF, ID = "etl", "run-7"
ServeApp = Callable[[web.Application], AbstractAsyncContextManager[str]]


@asynccontextmanager
async def _finishing_after(
    serve_app: ServeApp, polls: int | None, final: str = "complete"
) -> AsyncIterator[tuple[FakeWorkflowsAPI, WorkflowsSession]]:
    """An instance that is ``running`` for ``polls`` polls, then ``final`` (never if None)."""
    api = FakeWorkflowsAPI()
    api.add_instance(WF, ID, make_instance("running", steps=2))
    seen = 0

    @web.middleware
    async def finish(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        nonlocal seen
        if request.query.get("simple") == "true":
            seen += 1
            if polls is not None and seen > polls:
                api.add_instance(WF, ID, make_instance(final, steps=3))
        return await handler(request)

    app = api.make_app()
    app.middlewares.append(finish)
    async with serve_app(app) as root, WorkflowsSession(
        api_token=api.api_token, account_id=api.account_id, base_url=root + API_PREFIX
    ) as session:
        yield api, session


def _simple(api: FakeWorkflowsAPI) -> list[bool]:
    return [r.query.get("simple") == "true" for r in api.requests]


@pytest.mark.anyio
async def test_returns_the_full_instance_after_a_few_polls(serve_app: ServeApp) -> None:
    async with _finishing_after(serve_app, polls=3) as (api, session):
        inst = await session.wait_for_instance(WF, ID, timeout=10, poll_interval=0.05)
    assert inst.status == "complete"
    assert [s.name for s in inst.steps] == ["step 0-1", "step 1-1", "step 2-1"]
    # Three running polls, the poll that saw it finish, then one full fetch.
    assert _simple(api) == [True, True, True, True, False]
    t = [r.received_at for r in api.requests]
    gaps = [b - a for a, b in itertools.pairwise(t[:4])]
    # Gentle backoff: 0.05, 0.0625, 0.078 s between the running polls, at least.
    assert sum(gaps) >= 0.05 + 0.0625 + 0.078 - 0.02
    assert gaps[2] > gaps[0]


@pytest.mark.anyio
@pytest.mark.parametrize("status", ["errored", "terminated"])
async def test_every_terminal_status_ends_the_wait(serve_app: ServeApp, status: str) -> None:
    async with _finishing_after(serve_app, polls=0, final=status) as (api, session):
        inst = await session.wait_for_instance(WF, ID, poll_interval=5)
    assert inst.status == status
    assert _simple(api) == [True, False]


@pytest.mark.anyio
async def test_raises_builtin_timeout_error_at_its_timeout(serve_app: ServeApp) -> None:
    async with _finishing_after(serve_app, polls=None) as (api, session):
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="last status: running") as caught:
            await session.wait_for_instance(WF, ID, timeout=0.3, poll_interval=0.05)
        elapsed = time.monotonic() - started
        assert not isinstance(caught.value, WorkflowsError)
        assert elapsed >= 0.3 - 0.02
        assert elapsed < 2.0, "the wait must end at its timeout, not run on"
        assert len(api.requests) >= 3
        assert all(_simple(api))
        # The session is still fine afterwards.
        assert (await session.get_instance(WF, ID)).status == "running"


@pytest.mark.anyio
async def test_cancelling_the_wait_leaves_the_session_usable(serve_app: ServeApp) -> None:
    async with _finishing_after(serve_app, polls=None) as (api, session):
        with anyio.move_on_after(0.15) as scope:
            await session.wait_for_instance(WF, ID, poll_interval=0.05)
        assert scope.cancelled_caught
        sent = len(api.requests)
        await anyio.sleep(0.1)
        assert len(api.requests) == sent, "no poll may continue after cancellation"
        assert (await session.get_instance(WF, ID, simple=True)).status == "running"


@pytest.mark.anyio
async def test_an_unknown_instance_raises_not_found(serve_app: ServeApp) -> None:
    async with _finishing_after(serve_app, polls=0) as (api, session):
        with pytest.raises(NotFoundError):
            await session.wait_for_instance(WF, "no-such-run", poll_interval=0.05)
    assert len(api.requests) == 1


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"timeout": 0}, ValueError, "timeout"),
        ({"timeout": -1.0}, ValueError, "timeout"),
        ({"timeout": "10"}, TypeError, "timeout"),
        ({"poll_interval": 0}, ValueError, "poll_interval"),
        ({"poll_interval": float("inf")}, ValueError, "poll_interval"),
        ({"poll_interval": None}, TypeError, "poll_interval"),
        ({"max_poll_interval": -5}, ValueError, "max_poll_interval"),
        ({"instance_id": ""}, ValueError, "instance_id"),
        ({"workflow_name": "x" * 65}, ValueError, "workflow_name"),
    ],
)
async def test_invalid_arguments_fail_before_any_request(
    serve_app: ServeApp, kwargs: dict[str, Any], error: type[Exception], name: str
) -> None:
    args = {"workflow_name": WF, "instance_id": ID, **kwargs}
    async with _finishing_after(serve_app, polls=0) as (api, session):
        with pytest.raises(error, match=name):
            await session.wait_for_instance(**args)
    assert api.requests == []
