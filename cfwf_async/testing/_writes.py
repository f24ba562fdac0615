"""The fake API's write endpoints, with real state.

Creating makes an instance that ``get_instance`` and the listing show; pause, resume,
terminate and restart move its status; an event completes a matching, unfinished
``waitForEvent`` step; deleting removes the instance. :class:`WriteState` keeps what
happened (:attr:`WriteState.events`, :attr:`WriteState.restarts`) for tests to assert.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import msgspec
from aiohttp import web

from ._builders import envelope, envelope_error

if TYPE_CHECKING:
    from ._api import FakeWorkflowsAPI

__all__ = ["WriteState", "add_write_routes"]

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_WriteHandler = Callable[[web.Request, dict[str, str]], Awaitable[web.Response]]
#: The status each accepted change moves an instance to.
_MOVES: Final = {
    "pause": "paused", "resume": "running", "terminate": "terminated", "restart": "running",
}
#: Statuses an event is refused in: the instance is not running.
_NO_EVENTS: Final = frozenset({"paused", "errored", "terminated", "complete"})
_TERMINAL: Final = frozenset({"complete", "errored", "terminated"})
_VERSION: Final = "0b7d4c2e-3f1a-4e5b-9c8d-7a6f5e4d3c2b"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class WriteState:
    """What the fake API's writes did, for tests to assert on."""

    def __init__(self) -> None:
        #: Every event delivered: ``(workflow, instance id, event type, payload)``.
        self.events: list[tuple[str, str, str, Any]] = []
        #: Every restart applied: ``(workflow, instance id, the "from" step or None)``.
        self.restarts: list[tuple[str, str, Any]] = []


def _new_instance(params: Any) -> dict[str, Any]:
    now = _now()
    return {
        "status": "running", "queued": now, "start": now, "end": None, "error": None,
        "output": "", "params": params, "steps": [], "success": None,
        "trigger": {"source": "api"}, "versionId": _VERSION,
    }


def _created(workflow: str, instance_id: str) -> dict[str, Any]:
    return {
        "id": instance_id, "status": "queued", "version_id": _VERSION,
        "workflow_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"workflow:{workflow}")),
    }


def _body(request_bytes: bytes) -> Any:
    return msgspec.json.decode(request_bytes) if request_bytes else None


class _Routes:
    """The handlers, bound to one fake API's state."""

    def __init__(self, api: FakeWorkflowsAPI) -> None:
        self.api = api

    def admitted(self, handler: _WriteHandler) -> _Handler:
        """Record and admit the request like every fake endpoint, then ``handler``."""

        async def run(request: web.Request) -> web.StreamResponse:
            refused = self.api._admit(request)
            if refused is not None:
                return refused
            try:
                return await handler(request, dict(request.match_info))
            except (msgspec.DecodeError, TypeError, KeyError, AttributeError) as exc:
                return self.api._json(400, envelope_error(10002, f"bad request body: {exc}"))

        return run

    def ok(self, result: Any = None) -> web.Response:
        return self.api._json(200, envelope(result))

    def missing(self) -> web.Response:
        return self.api._json(404, envelope_error(10001, "instance.not_found"))

    def instance(self, m: dict[str, str]) -> dict[str, Any] | None:
        found = self.api._instances.get((m["workflow_name"], m["instance_id"]))
        return found if isinstance(found, dict) else None

    def create_one(self, workflow: str, entry: dict[str, Any]) -> dict[str, Any]:
        instance_id = entry.get("instance_id") or str(uuid.uuid4())
        self.api._instances[(workflow, instance_id)] = _new_instance(entry.get("params"))
        return _created(workflow, instance_id)

    def taken(self, workflow: str, entries: list[dict[str, Any]]) -> web.Response | None:
        """A 409 when any id exists (a batch is created whole or not at all)."""
        for entry in entries:
            if (workflow, entry.get("instance_id")) in self.api._instances:
                message = f"instance.already_exists: {entry['instance_id']}"
                return self.api._json(409, envelope_error(10021, message))
        return None

    async def create(self, request: web.Request, m: dict[str, str]) -> web.Response:
        entry = _body(await request.read()) or {}
        conflict = self.taken(m["workflow_name"], [entry])
        return conflict or self.ok(self.create_one(m["workflow_name"], entry))

    async def create_batch(self, request: web.Request, m: dict[str, str]) -> web.Response:
        entries = list(_body(await request.read()) or [])
        conflict = self.taken(m["workflow_name"], entries)
        return conflict or self.ok([self.create_one(m["workflow_name"], e) for e in entries])

    async def change_status(self, request: web.Request, m: dict[str, str]) -> web.Response:
        found = self.instance(m)
        if found is None:
            return self.missing()
        body = _body(await request.read())
        action, status = body["status"], found["status"]
        allowed = {
            "pause": status not in _TERMINAL and status not in ("paused", "waitingForPause"),
            "resume": status in ("paused", "waitingForPause"),
            "terminate": status not in _TERMINAL,
            "restart": True,
        }
        if not allowed.get(action, False):
            message = f"instance.invalid_status: cannot {action} a {status} instance"
            return self.api._json(409, envelope_error(10003, message))
        found["status"] = _MOVES[action]
        if action == "terminate":
            found["end"] = _now()
        if action == "restart":
            self.api.restarts.append((m["workflow_name"], m["instance_id"], body.get("from")))
        return self.ok({"status": found["status"], "timestamp": _now()})

    async def event(self, request: web.Request, m: dict[str, str]) -> web.Response:
        found = self.instance(m)
        if found is None:
            return self.missing()
        if found["status"] in _NO_EVENTS:
            message = f"instance.not_running: a {found['status']} instance takes no events"
            return self.api._json(400, envelope_error(10004, message))
        payload = _body(await request.read())
        kind = m["event_type"]
        self.api.events.append((m["workflow_name"], m["instance_id"], kind, payload))
        for step in found.get("steps") or []:
            waiting = step.get("type") == "waitForEvent" and not step.get("finished")
            if waiting and step.get("event_type") == kind:
                step.update(finished=True, output=payload, end=_now())
                break
        return self.ok(None)

    async def delete(self, request: web.Request, m: dict[str, str]) -> web.Response:
        if self.api._instances.pop((m["workflow_name"], m["instance_id"]), None) is None:
            return self.missing()
        return self.ok(None)

    async def batch_ids(self, request: web.Request, m: dict[str, str]) -> web.Response:
        action = request.path.rsplit("/", 1)[1]
        ids = list(_body(await request.read())["instance_ids"])
        done, failed = [], []
        for index, instance_id in enumerate(ids):
            key = (m["workflow_name"], instance_id)
            found = self.api._instances.get(key)
            if not isinstance(found, dict):
                failed.append({"id": instance_id, "index": index, "code": 10001,
                               "message": "instance.not_found"})
            elif action == "terminate" and found["status"] in _TERMINAL:
                failed.append({"id": instance_id, "index": index, "code": 10003,
                               "message": "instance.invalid_status"})
            else:
                if action == "delete":
                    del self.api._instances[key]
                else:
                    found.update(status="terminated", end=_now())
                done.append({"id": instance_id})
        name = "deleted" if action == "delete" else "terminated"
        return self.ok({name: done, "errors": failed})


def add_write_routes(app: web.Application, base: str, api: FakeWorkflowsAPI) -> None:
    """Route the write endpoints under ``base`` (``.../workflows/{wf}/instances``)."""
    r = _Routes(api)
    one = base + "/{instance_id}"
    app.router.add_post(base, r.admitted(r.create))
    app.router.add_post(base + "/batch", r.admitted(r.create_batch))
    app.router.add_post(base + "/batch/delete", r.admitted(r.batch_ids))
    app.router.add_post(base + "/batch/terminate", r.admitted(r.batch_ids))
    app.router.add_patch(one + "/status", r.admitted(r.change_status))
    app.router.add_post(one + "/events/{event_type}", r.admitted(r.event))
    app.router.add_delete(one, r.admitted(r.delete))
