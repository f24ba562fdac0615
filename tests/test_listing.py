"""list_instances: cursor paging that always ends, lazily, leaking nothing.

Against the fake API (which pages by opaque cursors) and against plain aiohttp.web
servers scripted to misbehave: replayed cursors, empty and odd last pages, a page
that never answers.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import aiohttp
import anyio
import msgspec
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from cfwf_async import (
    APIResponseValidationError,
    BadRequestError,
    InstanceListing,
    InstanceSummary,
    NotFoundError,
    RateLimitError,
    RateLimitInfo,
    WorkflowsSession,
)
from cfwf_async import _protocol as proto
from cfwf_async.testing import FakeWorkflowsAPI, Fault, make_instance

T0 = datetime(2026, 11, 16, 0, 0, tzinfo=UTC)
LIST_PATH = "/client/v4/accounts/acct/workflows/checkout/instances"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def stamp(i: int) -> str:
    return (T0 + timedelta(minutes=i)).isoformat().replace("+00:00", "Z")


def summary(i: int, status: str = "errored", **extra: Any) -> dict[str, Any]:
    return {
        "id": f"order-{i:04d}",
        "status": status,
        "created_on": stamp(i),
        "started_on": stamp(i),
        "ended_on": stamp(i + 1),
        "modified_on": stamp(i + 1),
        "version_id": "0b7d4c2e-3f1a-4e5b-9c8d-7a6f5e4d3c2b",
        "workflow_id": "5f0c3d1e-0000-4000-8000-000000000001",
        "trigger_source": "api",
        **extra,
    }


def page_body(items: list[Any] | None, cursor: Any = ..., **envelope: Any) -> bytes:
    info: dict[str, Any] = {"count": len(items or []), "per_page": 100}
    if cursor is not ...:
        info["cursor"] = cursor
    return msgspec.json.encode(
        {"success": True, "errors": [], "messages": [], "result": items, "result_info": info,
         **envelope}
    )


@asynccontextmanager
async def plain_server(handler: Handler) -> AsyncIterator[str]:
    """A bare aiohttp.web server answering the listing path with ``handler``."""
    app = web.Application()
    app.router.add_get(LIST_PATH, handler)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/client/v4"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def plain_session(base_url: str, **kwargs: Any) -> AsyncIterator[WorkflowsSession]:
    async with WorkflowsSession(
        api_token="t", account_id="acct", base_url=base_url, rate_limit=None, **kwargs
    ) as session:
        yield session


async def drain(listing: InstanceListing, got: list[str] | None) -> None:
    """Run a listing to its end, noting ids in ``got`` (None: fail at the first item).

    Bounded by a timeout, so that a regression (an endless listing) fails, not hangs.
    """
    with anyio.fail_after(5):
        async for s in listing:
            if got is None:
                raise KeyError("the caller's own error")
            got.append(s.id)


def scripted(pages: dict[str | None, bytes], seen: list[dict[str, str]]) -> Handler:
    """A handler answering by the request's cursor (None for the first page)."""

    async def handle(request: web.Request) -> web.Response:
        seen.append(dict(request.query))
        body = pages[request.query.get("cursor")]
        return web.Response(body=body, content_type="application/json",
                            headers={"cf-ray": "8f00-TEST"})

    return handle


# -- paging against the fake API --------------------------------------------------


@pytest.mark.anyio
async def test_250_instances_over_pages_of_100_take_three_requests(
    fake_api: FakeWorkflowsAPI, session: WorkflowsSession
) -> None:
    for i in range(250):
        fake_api.add_summary("checkout", f"order-{i:04d}", summary(i))
        # Interleaved instances the status filter must drop.
        fake_api.add_summary("checkout", f"done-{i:04d}", summary(i, status="complete"))
    fake_api.add_summary("checkout", "too-early", summary(-60))
    start, end = T0, T0 + timedelta(days=1)

    got = [
        s.id
        async for s in session.list_instances(
            "checkout", status="errored", date_start=start, date_end=end,
            direction="asc", per_page=100,
        )
    ]

    assert got == [f"order-{i:04d}" for i in range(250)]
    assert len(fake_api.requests) == 3
    queries = [r.query for r in fake_api.requests]
    filters = {
        "status": "errored",
        "date_start": "2026-11-16T00:00:00.000Z",
        "date_end": "2026-11-17T00:00:00.000Z",
        "direction": "asc",
        "per_page": "100",
    }
    assert queries[0] == filters
    cursors = [q.get("cursor") for q in queries]
    assert cursors[0] is None
    assert cursors[1]
    assert cursors[2]
    assert cursors[1] != cursors[2]
    assert all({k: v for k, v in q.items() if k != "cursor"} == filters for q in queries)


@pytest.mark.anyio
async def test_cursors_sent_are_the_ones_the_server_gave() -> None:
    seen: list[dict[str, str]] = []
    items = [summary(i) for i in range(250)]
    pages = {
        None: page_body(items[:100], "opaque/+=A"),
        "opaque/+=A": page_body(items[100:200], "B"),
        "B": page_body(items[200:]),
    }
    async with plain_server(scripted(pages, seen)) as url, plain_session(url) as session:
        got = [s.id async for s in session.list_instances("checkout", per_page=100)]
    assert got == [it["id"] for it in items]
    assert [q.get("cursor") for q in seen] == [None, "opaque/+=A", "B"]
    assert all(q["per_page"] == "100" for q in seen)
    assert all("page" not in q for q in seen)


@pytest.mark.anyio
async def test_break_after_five_items_made_one_request(
    fake_api: FakeWorkflowsAPI, session: WorkflowsSession
) -> None:
    for i in range(250):
        fake_api.add_summary("checkout", f"order-{i:04d}", summary(i))
    listing = session.list_instances("checkout", per_page=100)
    assert fake_api.requests == []  # nothing is sent before the loop starts
    got = []
    async for s in listing:
        got.append(s.id)
        if len(got) == 5:
            break
    assert got == [f"order-{i:04d}" for i in range(5)]
    assert len(fake_api.requests) == 1
    assert listing.pages == 1


@pytest.mark.anyio
async def test_empty_listing_makes_one_request(
    fake_api: FakeWorkflowsAPI, session: WorkflowsSession
) -> None:
    assert [s async for s in session.list_instances("checkout")] == []
    assert len(fake_api.requests) == 1


@pytest.mark.anyio
async def test_fake_derives_summaries_from_registered_instances(
    fake_api: FakeWorkflowsAPI, session: WorkflowsSession
) -> None:
    fake_api.add_instance("checkout", "run-1", make_instance("running"))
    fake_api.add_instance("checkout", "done-1", make_instance("complete"))
    fake_api.add_instance("other", "elsewhere", make_instance("complete"))
    got = {s.id: s async for s in session.list_instances("checkout")}
    assert set(got) == {"run-1", "done-1"}
    running, done = got["run-1"], got["done-1"]
    assert running.status == "running"
    assert running.ended_on is None  # the fake sends "", like the API
    assert done.ended_on == datetime(2026, 10, 30, 8, 4, 10, 4000, tzinfo=UTC)
    assert done.created_on is not None
    assert done.created_on.utcoffset() == timedelta(0)
    assert done.version_id == "0b7d4c2e-3f1a-4e5b-9c8d-7a6f5e4d3c2b"
    assert done.trigger_source == "api"
    assert done.workflow_id
    assert done.workflow_id == running.workflow_id
    assert done.is_terminal
    assert not running.is_terminal


@pytest.mark.anyio
async def test_fake_filters_by_date_window_and_pages_backwards(
    fake_api: FakeWorkflowsAPI, session: WorkflowsSession
) -> None:
    for i in range(10):
        fake_api.add_summary("checkout", f"order-{i:04d}", summary(i))
    got = [
        s.id
        async for s in session.list_instances(
            "checkout",
            date_start=T0 + timedelta(minutes=2),
            date_end=T0 + timedelta(minutes=7),
            direction="desc",
            per_page=2,
        )
    ]
    assert got == [f"order-{i:04d}" for i in (7, 6, 5, 4, 3, 2)]
    assert len(fake_api.requests) == 3


@pytest.mark.anyio
async def test_fake_refuses_a_cursor_issued_for_other_filters(
    fake_api: FakeWorkflowsAPI, session: WorkflowsSession, base_url: str
) -> None:
    for i in range(3):
        fake_api.add_summary("checkout", f"order-{i:04d}", summary(i))
    async for _ in session.list_instances("checkout", per_page=1):
        break
    async for _ in session.list_instances("checkout", per_page=1):
        pass
    cursor = fake_api.requests[-1].query["cursor"]
    url = f"{base_url}/accounts/{fake_api.account_id}/workflows/checkout/instances"
    headers = {"Authorization": f"Bearer {fake_api.api_token}"}
    async with aiohttp.ClientSession() as http:
        for query in ({"cursor": cursor, "status": "errored"}, {"cursor": cursor, "page": "2"},
                      {"cursor": "not a cursor"}, {"per_page": "0"}, {"status": "nope"}):
            async with http.get(url, params=query, headers=headers) as resp:
                assert resp.status == 400, query
        async with http.get(url, params={"cursor": cursor}, headers=headers) as resp:
            assert resp.status == 200


# -- it always ends ------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_cursor_handed_back_again_raises_after_two_requests() -> None:
    seen: list[dict[str, str]] = []
    first = [summary(i) for i in range(3)]

    async def handle(request: web.Request) -> web.Response:
        seen.append(dict(request.query))
        return web.Response(body=page_body(first, "stuck"), content_type="application/json",
                            headers={"cf-ray": "8f01-TEST"})

    got: list[str] = []
    async with plain_server(handle) as url, plain_session(url) as session:
        listing = session.list_instances("checkout")
        with pytest.raises(APIResponseValidationError, match="stuck") as info:
            await drain(listing, got)
        assert [s async for s in listing] == []  # finished, sends nothing more
    assert got == [it["id"] for it in first]  # the replayed page is not handed out twice
    assert [q.get("cursor") for q in seen] == [None, "stuck"]
    assert info.value.cf_ray == "8f01-TEST"
    assert info.value.status_code == 200


@pytest.mark.anyio
async def test_a_cursor_cycle_raises_after_a_bounded_number_of_requests() -> None:
    seen: list[dict[str, str]] = []
    pages = {
        None: page_body([summary(0)], "A"),
        "A": page_body([summary(1)], "B"),
        "B": page_body([summary(2)], "A"),
    }
    async with plain_server(scripted(pages, seen)) as url, plain_session(url) as session:
        got: list[str] = []
        with pytest.raises(APIResponseValidationError, match="'A'"):
            await drain(session.list_instances("checkout"), got)
    assert got == ["order-0000", "order-0001"]
    assert len(seen) == 3


@pytest.mark.anyio
@pytest.mark.parametrize("last", [..., None, ""], ids=["absent", "null", "empty"])
async def test_a_page_without_cursor_is_the_last(last: Any) -> None:
    seen: list[dict[str, str]] = []
    pages = {None: page_body([summary(0)], "next"), "next": page_body([summary(1)], last)}
    async with plain_server(scripted(pages, seen)) as url, plain_session(url) as session:
        got = [s.id async for s in session.list_instances("checkout")]
    assert got == ["order-0000", "order-0001"]
    assert len(seen) == 2


@pytest.mark.anyio
@pytest.mark.parametrize("result", [[], None], ids=["empty-list", "null"])
async def test_a_page_without_items_is_the_last_even_with_a_cursor(result: Any) -> None:
    seen: list[dict[str, str]] = []
    pages: dict[str | None, bytes] = {None: page_body(result, "more")}
    async with plain_server(scripted(pages, seen)) as url, plain_session(url) as session:
        assert [s async for s in session.list_instances("checkout")] == []
    assert len(seen) == 1


# -- filters are checked before any request -----------------------------------------

NAIVE = datetime(2026, 11, 16, 0, 0)

BAD_FILTERS: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"status": "failed"}, ValueError, "status"),
    ({"status": 3}, TypeError, "status"),
    ({"date_start": NAIVE}, ValueError, "date_start"),
    ({"date_end": NAIVE}, ValueError, "date_end"),
    ({"date_start": "2026-11-16T00:00:00Z"}, TypeError, "date_start"),
    ({"date_start": T0 + timedelta(seconds=1), "date_end": T0}, ValueError, "date_start"),
    ({"direction": "up"}, ValueError, "direction"),
    ({"direction": "ASC"}, ValueError, "direction"),
    ({"per_page": 0}, ValueError, "per_page"),
    ({"per_page": -5}, ValueError, "per_page"),
    ({"per_page": True}, TypeError, "per_page"),
    ({"per_page": "100"}, TypeError, "per_page"),
    ({"account_id": ""}, ValueError, "account_id"),
    ({"account_id": 7}, TypeError, "account_id"),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("kwargs", "exc", "name"), BAD_FILTERS)
async def test_every_bad_filter_fails_before_any_request(
    fake_api: FakeWorkflowsAPI,
    session: WorkflowsSession,
    kwargs: dict[str, Any],
    exc: type[Exception],
    name: str,
) -> None:
    with pytest.raises(exc, match=name):
        session.list_instances("checkout", **kwargs)  # raises at the call, no await
    assert fake_api.requests == []


@pytest.mark.anyio
@pytest.mark.parametrize("workflow_name", ["", "w" * 65, None])
async def test_bad_workflow_name_fails_before_any_request(
    fake_api: FakeWorkflowsAPI, session: WorkflowsSession, workflow_name: Any
) -> None:
    with pytest.raises((ValueError, TypeError), match="workflow_name"):
        session.list_instances(workflow_name)
    assert fake_api.requests == []


@pytest.mark.anyio
async def test_missing_account_fails_naming_the_environment_variable(base_url: str) -> None:
    async with WorkflowsSession(api_token="t", base_url=base_url, rate_limit=None) as session:
        with pytest.raises(ValueError, match="CLOUDFLARE_ACCOUNT_ID"):
            session.list_instances("checkout")


@pytest.mark.anyio
async def test_dates_go_out_in_utc_with_a_z(
    fake_api: FakeWorkflowsAPI, session: WorkflowsSession
) -> None:
    plus2 = timezone(timedelta(hours=2))
    start = datetime(2026, 11, 16, 9, 30, 15, 123456, tzinfo=plus2)
    async for _ in session.list_instances(
        "checkout", date_start=start, date_end=start + timedelta(hours=1)
    ):
        pass
    q = fake_api.requests[0].query
    assert q["date_start"] == "2026-11-16T07:30:15.123Z"
    assert q["date_end"] == "2026-11-16T08:30:15.123Z"


def test_listing_query_is_pure_and_complete() -> None:
    assert proto.listing_query() == {}
    assert proto.listing_query(status="waitingForPause", per_page=1, direction="desc") == {
        "status": "waitingForPause", "direction": "desc", "per_page": "1"
    }
    # Equal bounds are a valid (one-instant) window.
    assert proto.listing_query(date_start=T0, date_end=T0)["date_start"].endswith("Z")


# -- decoding --------------------------------------------------------------------------


def test_running_instances_ended_on_empty_string_is_none() -> None:
    body = page_body(
        [summary(0, status="running", ended_on="", modified_on=""),
         summary(1, status="complete")],
        "next",
    )
    page = proto.decode_instance_page(body)
    running, done = page.items
    assert running.ended_on is None
    assert running.modified_on is None
    assert running.started_on == T0
    assert done.ended_on == T0 + timedelta(minutes=2)
    assert done.ended_on is not None
    assert done.ended_on.tzinfo is not None
    assert page.cursor == "next"


def test_unknown_fields_ignored_unknown_status_kept() -> None:
    body = page_body([summary(0, status="hibernating", shard=7, trigger_source="queue")])
    (item,) = proto.decode_instance_page(body).items
    assert item == InstanceSummary(
        id="order-0000",
        status="hibernating",
        created_on=T0,
        started_on=T0,
        ended_on=T0 + timedelta(minutes=1),
        modified_on=T0 + timedelta(minutes=1),
        version_id="0b7d4c2e-3f1a-4e5b-9c8d-7a6f5e4d3c2b",
        workflow_id="5f0c3d1e-0000-4000-8000-000000000001",
        trigger_source="queue",
    )
    minimal = proto.decode_instance_page(page_body([{"id": "x", "status": "queued",
                                                     "ended_on": None}]))
    assert minimal.items[0].created_on is None
    assert minimal.items[0].trigger_source is None


@pytest.mark.parametrize(
    "body",
    [
        b"<html>502 Bad Gateway</html>",
        b'{"success": true, "result": {"id": "x"}}',
        b'{"success": true, "result": [{"status": "running"}]}',
        b'{"success": true, "result": [{"id": "x", "status": "running", "ended_on": "soon"}]}',
        b'{"success": true, "result": [7]}',
        b'{"success": true, "result": [], "result_info": {"cursor": 5}}',
        b'{"success": false, "errors": [{"code": 1, "message": "nope"}], "result": []}',
    ],
    ids=["html", "object", "no-id", "bad-date", "not-object", "numeric-cursor", "failure"],
)
def test_broken_pages_raise_the_sdk_error_with_cf_ray(body: bytes) -> None:
    with pytest.raises(APIResponseValidationError) as info:
        proto.decode_instance_page(body, status=200, cf_ray="8f02-TEST")
    assert info.value.cf_ray == "8f02-TEST"
    assert "instance listing" in str(info.value)


def test_next_cursor_names_a_replayed_cursor_shortened() -> None:
    long_cursor = "c" * 500
    page = proto.InstancePage([InstanceSummary(id="x", status="queued")], long_cursor)
    assert proto.next_cursor(page, set()) == long_cursor
    with pytest.raises(APIResponseValidationError, match=r"c{80}\.\.\.") as info:
        proto.next_cursor(page, {long_cursor})
    assert len(str(info.value)) < 300


# -- the session's machinery --------------------------------------------------------


@pytest.mark.anyio
async def test_a_failed_page_is_retried_like_any_call(
    fake_api: FakeWorkflowsAPI, session: WorkflowsSession
) -> None:
    for i in range(5):
        fake_api.add_summary("checkout", f"order-{i:04d}", summary(i))
    listing = session.list_instances("checkout", per_page=2)
    got = [(await listing.__anext__()).id for _ in range(2)]
    fake_api.inject(Fault.http(429, headers={"Retry-After": "0"}))
    got += [s.id async for s in listing]
    assert got == [f"order-{i:04d}" for i in range(5)]
    cursors = [r.query.get("cursor") for r in fake_api.requests]
    assert len(cursors) == 4
    assert cursors[1] == cursors[2]  # the retry asked for the same page


@pytest.mark.anyio
async def test_a_page_failing_after_retries_raises_and_earlier_items_stay(
    fake_api: FakeWorkflowsAPI, base_url: str
) -> None:
    for i in range(5):
        fake_api.add_summary("checkout", f"order-{i:04d}", summary(i))
    async with WorkflowsSession(
        api_token=fake_api.api_token, account_id=fake_api.account_id, base_url=base_url,
        rate_limit=None, max_retries=1,
    ) as session:
        listing = session.list_instances("checkout", per_page=2)
        got = [(await listing.__anext__()).id for _ in range(2)]
        fake_api.inject(Fault.http(429, headers={"Retry-After": "0"}), times=2)
        with pytest.raises(RateLimitError):
            await drain(listing, got)
        assert [s async for s in listing] == []
    assert got == ["order-0000", "order-0001"]
    assert len(fake_api.requests) == 3


class CountingLimiter:
    """A limiter that lets everything through and counts the turns it gave."""

    def __init__(self) -> None:
        self.acquired = 0

    async def acquire(self) -> None:
        self.acquired += 1

    async def pause(self, seconds: float) -> None:
        pass

    async def observe(self, info: RateLimitInfo) -> None:
        pass


@pytest.mark.anyio
async def test_every_page_goes_through_the_sessions_limiter(
    fake_api: FakeWorkflowsAPI, base_url: str
) -> None:
    for i in range(5):
        fake_api.add_summary("checkout", f"order-{i:04d}", summary(i))
    limiter = CountingLimiter()
    async with WorkflowsSession(
        api_token=fake_api.api_token, account_id=fake_api.account_id, base_url=base_url,
        rate_limit=limiter,
    ) as session:
        assert len([s async for s in session.list_instances("checkout", per_page=2)]) == 5
    assert limiter.acquired == 3 == len(fake_api.requests)
    assert all(r.headers["Authorization"] == "Bearer test-token" for r in fake_api.requests)


@pytest.mark.anyio
async def test_account_id_per_call_and_typed_errors(
    fake_api: FakeWorkflowsAPI, session: WorkflowsSession
) -> None:
    with pytest.raises(NotFoundError) as info:
        async for _ in session.list_instances("checkout", account_id="someone-else"):
            pass
    assert info.value.cf_ray
    assert fake_api.requests[0].match["account_id"] == "someone-else"
    fake_api.inject(Fault.http(400))
    with pytest.raises(BadRequestError):
        async for _ in session.list_instances("checkout"):
            pass


# -- nothing leaks -------------------------------------------------------------------


@asynccontextmanager
async def one_connection(fake_api: FakeWorkflowsAPI, base_url: str) -> AsyncIterator[
    WorkflowsSession
]:
    """A session whose pool holds a single connection: a leaked one blocks the next call."""
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http,
        WorkflowsSession(
            api_token=fake_api.api_token, account_id=fake_api.account_id, base_url=base_url,
            rate_limit=None, http_session=http,
        ) as session,
    ):
        yield session


@pytest.mark.anyio
async def test_no_connection_leaks_after_an_early_break_or_exception(
    fake_api: FakeWorkflowsAPI, base_url: str
) -> None:
    for i in range(250):
        fake_api.add_summary("checkout", f"order-{i:04d}", summary(i))
    fake_api.add_instance("checkout", "order-0000", make_instance("errored"))
    async with one_connection(fake_api, base_url) as session:
        async for s in session.list_instances("checkout", per_page=100):
            if s.id == "order-0004":
                break
        with pytest.raises(KeyError):
            await drain(session.list_instances("checkout", per_page=100), None)
        with anyio.fail_after(5):  # a leaked connection would block here forever
            inst = await session.get_instance("checkout", "order-0000")
            async with session.list_instances("checkout", per_page=100) as listing:
                first = await listing.__anext__()
    assert inst.status == "errored"
    assert first.id == "order-0000"
    assert [s async for s in listing] == []  # closed by async with
    assert len(fake_api.requests) == 4


@pytest.mark.anyio
async def test_cancelling_a_page_in_flight_leaks_nothing() -> None:
    arrived = anyio.Event()
    release = anyio.Event()
    calls = itertools.count()

    async def handle(request: web.Request) -> web.Response:
        if next(calls) == 0:
            arrived.set()
            await release.wait()
        return web.Response(body=page_body([summary(0)]), content_type="application/json")

    async with plain_server(handle) as url:
        try:
            async with (
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http,
                plain_session(url, http_session=http) as session,
            ):
                listing = session.list_instances("checkout")
                with anyio.move_on_after(5) as scope:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(listing.__anext__)
                        await arrived.wait()
                        tg.cancel_scope.cancel()
                assert not scope.cancelled_caught  # cancelled by us, not the timeout
                assert [s async for s in listing] == []  # a cancelled listing is over
                with anyio.fail_after(5):
                    again = [s.id async for s in session.list_instances("checkout")]
        finally:
            release.set()
    assert again == ["order-0000"]


@pytest.mark.anyio
async def test_list_instances_returns_an_iterator_without_await(
    session: WorkflowsSession,
) -> None:
    listing = session.list_instances("checkout")
    assert isinstance(listing, InstanceListing)
    assert listing.__aiter__() is listing
    assert "open" in repr(listing)
    await listing.aclose()
    assert "finished" in repr(listing)
    with pytest.raises(StopAsyncIteration):
        await listing.__anext__()


@pytest.mark.anyio
async def test_one_listing_fetches_one_page_at_a_time(
    fake_api: FakeWorkflowsAPI, session: WorkflowsSession
) -> None:
    fake_api.add_summary("checkout", "order-0000", summary(0))
    listing = session.list_instances("checkout")
    refused: list[RuntimeError] = []

    async def meddle() -> None:
        try:
            await listing.__anext__()
        except RuntimeError as exc:
            refused.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(meddle)  # runs while this task waits for the first page
        first = await listing.__anext__()
    assert first.id == "order-0000"
    assert len(refused) == 1
    assert "already fetching" in str(refused[0])
    assert len(fake_api.requests) == 1


# -- paging logic without a socket (InstanceListing over an in-memory fetch) ----------


def run_listing(answer: Callable[[str | None], proto.InstancePage]) -> tuple[list[str], int, bool]:
    """Drain an InstanceListing whose pages come from ``answer(cursor)``.

    Returns the ids handed out, the number of pages requested, and whether it ended
    with the replayed-cursor error.
    """
    requests = 0

    async def fetch(query: Mapping[str, str]) -> proto.InstancePage:
        nonlocal requests
        requests += 1
        if requests > 1000:
            raise AssertionError("the listing does not end")
        return answer(query.get("cursor"))

    async def main() -> tuple[list[str], bool]:
        got: list[str] = []
        try:
            async for s in InstanceListing(fetch, {"per_page": "3"}):
                got.append(s.id)
        except APIResponseValidationError:
            return got, True
        return got, False

    got, replayed = anyio.run(main)
    return got, requests, replayed


def items(ids: list[str]) -> list[InstanceSummary]:
    return [InstanceSummary(id=i, status="complete") for i in ids]


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 4), max_size=8))
def test_pages_are_concatenated_up_to_the_first_empty_or_last_one(sizes: list[int]) -> None:
    pages = [[f"p{n}-{k}" for k in range(size)] for n, size in enumerate(sizes)]

    def answer(cursor: str | None) -> proto.InstancePage:
        n = 0 if cursor is None else int(cursor)
        ids = pages[n] if n < len(pages) else []
        nxt = str(n + 1) if n + 1 < len(pages) else None
        return proto.InstancePage(items(ids), nxt if ids else None)

    got, requests, replayed = run_listing(answer)
    first_empty = next((n for n, p in enumerate(pages) if not p), len(pages))
    expected = [i for p in pages[:first_empty] for i in p]
    assert got == expected
    assert requests == max(1, min(first_empty + 1, len(pages)))
    assert not replayed


@settings(max_examples=60, deadline=None)
@given(
    cursors=st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=1, max_size=30),
)
def test_any_server_ends_within_one_request_per_distinct_cursor(cursors: list[str]) -> None:
    """Whatever cursors a server hands out from a set of k, at most k + 1 requests."""
    answers = iter(cursors)
    served = itertools.count()

    def answer(cursor: str | None) -> proto.InstancePage:
        # A new instance on every page: only the cursors misbehave here.
        return proto.InstancePage(items([f"x{next(served)}"]), next(answers, None))

    _, requests, replayed = run_listing(answer)
    distinct = len(set(cursors))
    assert requests <= distinct + 1
    handed_out = cursors[:requests]
    assert replayed == (len(set(handed_out)) < len(handed_out))


@pytest.mark.anyio
async def test_fresh_cursors_over_the_same_page_end_after_two_requests() -> None:
    """A server handing out a new cursor every time but never new items cannot loop."""
    seen: list[dict[str, str]] = []
    same = [summary(i) for i in range(3)]
    fresh = itertools.count()

    async def handle(request: web.Request) -> web.Response:
        seen.append(dict(request.query))
        return web.Response(body=page_body(same, f"c-{next(fresh)}"),
                            content_type="application/json", headers={"cf-ray": "8f02-TEST"})

    got: list[str] = []
    async with plain_server(handle) as url, plain_session(url) as session:
        listing = session.list_instances("checkout")
        with pytest.raises(APIResponseValidationError, match="repeated itself") as info:
            await drain(listing, got)
        assert [s async for s in listing] == []  # finished, sends nothing more
    assert got == [it["id"] for it in same]
    assert [q.get("cursor") for q in seen] == [None, "c-0"]
    assert "cursor did not advance" in str(info.value)
    assert info.value.cf_ray == "8f02-TEST"
    assert info.value.status_code == 200


@pytest.mark.anyio
async def test_instances_a_page_repeats_are_handed_out_once() -> None:
    seen: list[dict[str, str]] = []
    pages = {
        # order-0000 twice on the first page, order-0001 again on the second.
        None: page_body([summary(0), summary(1), summary(0)], "A"),
        "A": page_body([summary(1), summary(2)], "B"),
        "B": page_body([summary(3)]),
    }
    async with plain_server(scripted(pages, seen)) as url, plain_session(url) as session:
        got: list[str] = []
        await drain(session.list_instances("checkout"), got)
    assert got == ["order-0000", "order-0001", "order-0002", "order-0003"]
    assert len(seen) == 3


@settings(max_examples=80, deadline=None)
@given(pages=st.lists(st.lists(st.sampled_from("abcdef"), min_size=1, max_size=4),
                      min_size=1, max_size=30))
def test_no_id_twice_and_an_end_within_one_request_per_id(pages: list[list[str]]) -> None:
    """Pages drawn from k ids under ever-new cursors: each id once, at most k + 1 pages."""
    served = iter(pages)
    cursors = itertools.count()

    def answer(cursor: str | None) -> proto.InstancePage:
        ids = next(served, None)
        if ids is None:
            return proto.InstancePage([], None)
        return proto.InstancePage(items(ids), f"c{next(cursors)}")

    got, requests, repeated = run_listing(answer)
    assert len(got) == len(set(got))
    assert requests <= len(set("abcdef")) + 1
    read = [i for page in pages[:requests] for i in page]
    assert got == list(dict.fromkeys(read))
    # It stops early exactly when a page it read brought nothing new.
    stale = any(set(page) <= set(read[: sum(map(len, pages[:n]))])
                for n, page in enumerate(pages[:requests]))
    assert repeated == stale
