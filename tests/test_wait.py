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
    """An instance that is ``running`` for ``polls`` polls, then ``final`` (never if None).

    A poll is any request with a ``simple`` query (watch_instance may poll with the step
    log, ``simple=false``)."""
    api = FakeWorkflowsAPI()
    api.add_instance(WF, ID, make_instance("running", steps=2))
    seen = 0

    @web.middleware
    async def finish(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        nonlocal seen
        if "simple" in request.query:  # a poll (the final full fetch sends none)
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


# ---------------------------------------------------------------------------
# watch_instance: every poll, until the first terminal one


class _Sleeps:
    """Records the session's poll waits (and yields without waiting them)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.waits: list[float] = []
        real = anyio.sleep

        async def sleep(seconds: float) -> None:
            self.waits.append(seconds)
            await real(0)

        monkeypatch.setattr("cfwf_async._reads.anyio.sleep", sleep)


@pytest.mark.anyio
async def test_watch_yields_every_poll_and_ends_after_the_terminal_one(
    serve_app: ServeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    sleeps = _Sleeps(monkeypatch)
    async with _finishing_after(serve_app, polls=3, final="errored") as (api, session):
        seen = [i.status async for i in session.watch_instance(WF, ID, poll_interval=0.5)]
    assert seen == ["running", "running", "running", "errored"]
    # Only cheap polls, and none after the terminal one.
    assert _simple(api) == [True, True, True, True]
    # The default backoff: a quarter longer each time.
    assert sleeps.waits == [0.5, 0.625, 0.78125]


@pytest.mark.anyio
async def test_watch_at_a_fixed_pace_and_with_the_step_log(
    serve_app: ServeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    sleeps = _Sleeps(monkeypatch)
    async with _finishing_after(serve_app, polls=4) as (api, session):
        polls = session.watch_instance(
            WF, ID, poll_interval=2, max_poll_interval=2, simple=False
        )
        seen = [i async for i in polls]
    assert [i.status for i in seen] == ["running"] * 4 + ["complete"]
    assert seen[-1].steps  # simple=False: the step log comes with every poll
    assert [r.query.get("simple") for r in api.requests] == ["false"] * 5
    assert sleeps.waits == [2.0] * 4


@pytest.mark.anyio
async def test_watch_backoff_stops_at_max_poll_interval(
    serve_app: ServeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    sleeps = _Sleeps(monkeypatch)
    async with _finishing_after(serve_app, polls=5) as (_api, session):
        async for _ in session.watch_instance(WF, ID, poll_interval=1, max_poll_interval=1.5):
            pass
    assert sleeps.waits == [1.0, 1.25, 1.5, 1.5, 1.5]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"poll_interval": 0}, ValueError, "poll_interval"),
        ({"max_poll_interval": "1"}, TypeError, "max_poll_interval"),
        ({"simple": 1}, TypeError, "simple"),
        ({"instance_id": ".."}, ValueError, "instance_id"),
        ({"account_id": ""}, ValueError, "account_id"),
    ],
)
async def test_watch_checks_arguments_when_called_not_when_iterated(
    serve_app: ServeApp, kwargs: dict[str, Any], error: type[Exception], name: str
) -> None:
    args = {"workflow_name": WF, "instance_id": ID, **kwargs}
    async with _finishing_after(serve_app, polls=0) as (api, session):
        with pytest.raises(error, match=name):
            session.watch_instance(**args)  # no await, no iteration
    assert api.requests == []
