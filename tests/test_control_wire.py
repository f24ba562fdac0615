"""Each write call's exact method, path and JSON body, seen by a plain aiohttp.web handler."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
from aiohttp import web

from cfwf_async import NewInstance

pytestmark = pytest.mark.anyio

ServeApp = Callable[[web.Application], AbstractAsyncContextManager[str]]
BASE = "/client/v4/accounts/acc/workflows/wf/instances"


class Recorder:
    """Answers every request with ``answers`` in turn (status, result); records them."""

    def __init__(self, *answers: tuple[int, Any]) -> None:
        self.answers = list(answers)
        self.seen: list[tuple[str, str, Any]] = []

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        body = json.loads(raw) if raw else None
        self.seen.append((request.method, request.raw_path, body))
        status, result = self.answers.pop(0) if self.answers else (200, None)
        doc = {"success": status < 400, "errors": [] if status < 400 else
               [{"code": 1, "message": str(result)}], "messages": [], "result": result}
        return web.json_response(doc, status=status)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app


CREATED = {"id": "i-1", "status": "queued", "version_id": "v", "workflow_id": "w"}
CHANGED = {"status": "paused", "timestamp": "2026-11-01T10:00:00Z"}


@pytest.mark.parametrize(
    ("call", "answer", "method", "path", "body"),
    [
        (lambda s: s.create_instance("wf", instance_id="i-1", params={"a": 1}), CREATED,
         "POST", BASE, {"instance_id": "i-1", "params": {"a": 1}}),
        (lambda s: s.create_instances("wf", [NewInstance(instance_id="i-1")]), [CREATED],
         "POST", BASE + "/batch", [{"instance_id": "i-1"}]),
        (lambda s: s.pause_instance("wf", "i-1"), CHANGED,
         "PATCH", BASE + "/i-1/status", {"status": "pause"}),
        (lambda s: s.resume_instance("wf", "i-1"), CHANGED,
         "PATCH", BASE + "/i-1/status", {"status": "resume"}),
        (lambda s: s.terminate_instance("wf", "i-1", rollback=True), CHANGED,
         "PATCH", BASE + "/i-1/status", {"status": "terminate", "rollback": True}),
        (lambda s: s.restart_instance("wf", "i-1", from_step="s", count=2, type="do"), CHANGED,
         "PATCH", BASE + "/i-1/status",
         {"status": "restart", "from": {"name": "s", "count": 2, "type": "do"}}),
        (lambda s: s.send_event("wf", "i-1", "my event", {"x": [1]}), None,
         "POST", BASE + "/i-1/events/my%20event", {"x": [1]}),
        (lambda s: s.delete_instance("wf", "i-1"), None, "DELETE", BASE + "/i-1", None),
        (lambda s: s.delete_instances("wf", ["a", "b"]), {"deleted": [{"id": "a"}]},
         "POST", BASE + "/batch/delete", {"instance_ids": ["a", "b"]}),
        (lambda s: s.terminate_instances("wf", ["a"]), [{"id": "a"}],
         "POST", BASE + "/batch/terminate", {"instance_ids": ["a"]}),
    ],
)
async def test_exact_request(
    serve_app: ServeApp, make_session: Any, call: Any, answer: Any, method: str, path: str,
    body: Any,
) -> None:
    rec = Recorder((200, answer))
    async with serve_app(rec.app()) as url:
        session = make_session(url + "/client/v4", account_id="acc")
        await call(session)
    assert rec.seen == [(method, path, body)]


async def test_results_decode(serve_app: ServeApp, make_session: Any) -> None:
    rec = Recorder((200, CREATED), (200, CHANGED), (200, {"deleted": [{"id": "a"}],
                   "errors": [{"id": "b", "index": 1, "code": 10001, "message": "gone"}]}))
    async with serve_app(rec.app()) as url:
        session = make_session(url + "/client/v4", account_id="acc")
        created = await session.create_instance("wf", instance_id="i-1")
        change = await session.pause_instance("wf", "i-1")
        deleted = await session.delete_instances("wf", ["a", "b"])
    assert (created.id, created.version_id, created.workflow_id) == ("i-1", "v", "w")
    assert change.status == "paused"
    assert change.timestamp is not None
    assert deleted.done == ["a"]
    assert [(e.id, e.index, e.message) for e in deleted.errors] == [("b", 1, "gone")]


async def test_create_retry_answered_exists_reads_and_succeeds(
    serve_app: ServeApp, make_session: Any
) -> None:
    # A 502 leaves the create unknown; the read finds nothing yet; the resend is told
    # "already exists" (the first request landed late); the read then finds our params.
    found = {"status": "running", "params": {"a": 1}, "steps": []}
    rec = Recorder((502, "edge"), (404, "not found"), (409, "already exists"), (200, found))
    async with serve_app(rec.app()) as url:
        session = make_session(url + "/client/v4", account_id="acc")
        created = await session.create_instance("wf", instance_id="i-1", params={"a": 1})
    assert created.id == "i-1"
    assert [m for m, _p, _b in rec.seen] == ["POST", "GET", "POST", "GET"]


async def test_exists_in_a_400_on_first_attempt_is_conflict(
    serve_app: ServeApp, make_session: Any
) -> None:
    from cfwf_async import ConflictError

    rec = Recorder((400, "instance with this id already exists"))
    async with serve_app(rec.app()) as url:
        session = make_session(url + "/client/v4", account_id="acc")
        with pytest.raises(ConflictError, match="already exists"):
            await session.create_instance("wf", instance_id="i-1")
    assert len(rec.seen) == 1
