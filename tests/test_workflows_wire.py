"""Each workflow and version call's exact method, path, query and JSON body, and how
odd answers decode, seen by a plain aiohttp.web handler."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
from aiohttp import web

from cfwf_async import APIResponseValidationError, NotFoundError, OutcomeUnknownError

pytestmark = pytest.mark.anyio

ServeApp = Callable[[web.Application], AbstractAsyncContextManager[str]]
WF = "/client/v4/accounts/acc/workflows"
STAMP = "2026-11-01T10:00:00Z"
WORKFLOW = {"id": "w-1", "name": "wf", "class_name": "C", "script_name": "s",
            "created_on": STAMP, "modified_on": STAMP, "instances": {"running": 2}}
VERSION = {"id": "v-1", "class_name": "C", "workflow_id": "w-1", "created_on": STAMP,
           "modified_on": STAMP, "has_dag": True, "language": "javascript"}


class Recorder:
    """Answers with ``answers`` in turn: (status, result, result_info); records requests."""

    def __init__(self, *answers: tuple[int, Any, Any]) -> None:
        self.answers = list(answers)
        self.seen: list[tuple[str, str, dict[str, str], Any]] = []

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        body = json.loads(raw) if raw else None
        self.seen.append((request.method, request.raw_path.split("?")[0],
                          dict(request.query), body))
        status, result, info = self.answers.pop(0) if self.answers else (200, None, None)
        doc: dict[str, Any] = {
            "success": status < 400, "messages": [], "result": result,
            "errors": [] if status < 400 else [{"code": 1, "message": str(result)}],
        }
        if info is not None:
            doc["result_info"] = info
        return web.json_response(doc, status=status)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app


async def drain(listing: Any) -> list[Any]:
    return [item async for item in listing]


@pytest.mark.parametrize(
    ("call", "answer", "method", "path", "query", "body"),
    [
        (lambda s: drain(s.list_workflows()), [WORKFLOW], "GET", WF,
         {"page": "1", "per_page": "100"}, None),
        (lambda s: s.get_workflow("my wf"), WORKFLOW, "GET", WF + "/my%20wf", {}, None),
        (lambda s: s.update_workflow("wf", class_name="C", script_name="s"), WORKFLOW,
         "PUT", WF + "/wf", {}, {"class_name": "C", "script_name": "s"}),
        (lambda s: s.delete_workflow("wf"), {"status": "ok"}, "DELETE", WF + "/wf", {}, None),
        (lambda s: drain(s.list_versions("wf")), [VERSION], "GET", WF + "/wf/versions",
         {"page": "1", "per_page": "100"}, None),
        (lambda s: s.get_version("wf", "v-1"), VERSION, "GET", WF + "/wf/versions/v-1", {},
         None),
        (lambda s: s.get_version_graph("wf", "v-1"), {**VERSION, "graph": None}, "GET",
         WF + "/wf/versions/v-1/graph", {}, None),
        (lambda s: s.get_workflow("wf", account_id="other"), WORKFLOW, "GET",
         "/client/v4/accounts/other/workflows/wf", {}, None),
    ],
)
async def test_exact_request(
    serve_app: ServeApp, make_session: Any, call: Any, answer: Any, method: str, path: str,
    query: dict[str, str], body: Any,
) -> None:
    rec = Recorder((200, answer, None))
    async with serve_app(rec.app()) as url:
        await call(make_session(url + "/client/v4", account_id="acc"))
    assert rec.seen == [(method, path, query, body)]


async def test_answers_decode_with_repairs_and_unknown_fields(
    serve_app: ServeApp, make_session: Any
) -> None:
    odd = {**WORKFLOW, "created_on": "2026-11-01T10:00:00", "instances": {"running": 50.0,
           "waitingForPause": 1, "sleeping": 3}, "brand_new": {"x": 1}}
    graph = {"version": 1, "workflow": {"class_name": "C", "nodes": [{"type": "new_kind"}]}}
    rec = Recorder((200, odd, None), (200, {**VERSION, "graph": graph, "limits": {}}, None))
    async with serve_app(rec.app()) as url:
        session = make_session(url + "/client/v4", account_id="acc")
        wf = await session.get_workflow("wf")
        got = await session.get_version_graph("wf", "v-1")
    assert wf.instances is not None
    assert (wf.instances.running, wf.instances.waiting_for_pause) == (50, 1)
    assert type(wf.instances.running) is int
    assert wf.created_on is not None
    assert wf.created_on.utcoffset() is not None
    assert got.graph == graph


async def test_pages_follow_page_numbers_until_total_pages(
    serve_app: ServeApp, make_session: Any
) -> None:
    info = {"page": 1, "per_page": 100, "total_pages": 2}
    first = [{**WORKFLOW, "name": f"w{n}"} for n in range(100)]
    rec = Recorder((200, first, info), (200, [{**WORKFLOW, "name": "last"}], info))
    async with serve_app(rec.app()) as url:
        names = [w.name for w in await drain(
            make_session(url + "/client/v4", account_id="acc").list_workflows())]
    assert names == [f"w{n}" for n in range(100)] + ["last"]
    assert [q["page"] for _m, _p, q, _b in rec.seen] == ["1", "2"]


async def test_full_page_then_empty_page_ends(serve_app: ServeApp, make_session: Any) -> None:
    full = [{**VERSION, "id": f"v{n}"} for n in range(100)]
    rec = Recorder((200, full, None), (200, [], None))
    async with serve_app(rec.app()) as url:
        got = await drain(make_session(url + "/client/v4", account_id="acc").list_versions("wf"))
    assert len(got) == 100
    assert len(rec.seen) == 2


async def test_a_repeated_page_ends_with_validation_error(
    serve_app: ServeApp, make_session: Any
) -> None:
    full = [{**WORKFLOW, "name": f"w{n}"} for n in range(100)]
    rec = Recorder((200, full, None), (200, full, None), (200, full, None))
    async with serve_app(rec.app()) as url:
        listing = make_session(url + "/client/v4", account_id="acc").list_workflows()
        names: list[str] = []

        async def collect() -> None:
            async for w in listing:
                names.append(w.name)

        with pytest.raises(APIResponseValidationError, match="already handed out"):
            await collect()
    assert len(names) == len(set(names)) == 100
    assert len(rec.seen) == 2


async def test_put_is_retried_after_an_unknown_outcome(
    serve_app: ServeApp, make_session: Any
) -> None:
    rec = Recorder((502, "edge", None), (200, {**WORKFLOW, "version_id": "v-2"}, None))
    async with serve_app(rec.app()) as url:
        session = make_session(url + "/client/v4", account_id="acc")
        wf = await session.update_workflow("wf", class_name="C", script_name="s")
    assert wf.version_id == "v-2"
    assert [m for m, *_ in rec.seen] == ["PUT", "PUT"]


async def test_put_that_gives_up_after_unknown_outcome(
    serve_app: ServeApp, make_session: Any
) -> None:
    rec = Recorder(*[(503, "down", None)] * 3)
    async with serve_app(rec.app()) as url:
        session = make_session(url + "/client/v4", account_id="acc", max_retries=2)
        with pytest.raises(OutcomeUnknownError):
            await session.update_workflow("wf", class_name="C", script_name="s")
    assert len(rec.seen) == 3


async def test_delete_404_after_unknown_outcome_is_deleted(
    serve_app: ServeApp, make_session: Any
) -> None:
    rec = Recorder((502, "edge", None), (404, "workflow.not_found", None))
    async with serve_app(rec.app()) as url:
        session = make_session(url + "/client/v4", account_id="acc")
        assert await session.delete_workflow("wf") is None
    assert [m for m, *_ in rec.seen] == ["DELETE", "DELETE"]


async def test_delete_404_on_first_attempt_is_not_found(
    serve_app: ServeApp, make_session: Any
) -> None:
    rec = Recorder((404, "workflow.not_found", None))
    async with serve_app(rec.app()) as url:
        session = make_session(url + "/client/v4", account_id="acc")
        with pytest.raises(NotFoundError):
            await session.delete_workflow("wf")
    assert len(rec.seen) == 1


@pytest.mark.parametrize(
    ("call", "exc", "name"),
    [
        (lambda s: s.get_workflow(5), TypeError, "workflow_name"),
        (lambda s: s.get_workflow(""), ValueError, "workflow_name"),
        (lambda s: s.get_workflow("x" * 65), ValueError, "workflow_name"),
        (lambda s: s.update_workflow("wf", class_name=1, script_name="s"), TypeError,
         "class_name"),
        (lambda s: s.update_workflow("wf", class_name="C", script_name=""), ValueError,
         "script_name"),
        (lambda s: s.delete_workflow(".."), ValueError, "workflow_name"),
        (lambda s: drain(s.list_versions(None)), TypeError, "workflow_name"),
        (lambda s: s.get_version("wf", ""), ValueError, "version_id"),
        (lambda s: s.get_version_graph("wf", 3), TypeError, "version_id"),
        (lambda s: drain(s.list_workflows(account_id="")), ValueError, "account_id"),
    ],
)
async def test_arguments_checked_before_any_request(
    serve_app: ServeApp, make_session: Any, call: Any, exc: type[Exception], name: str
) -> None:
    rec = Recorder()
    async with serve_app(rec.app()) as url:
        with pytest.raises(exc, match=name):
            await call(make_session(url + "/client/v4", account_id="acc"))
    assert rec.seen == []
