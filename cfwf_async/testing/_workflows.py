"""The fake API's workflow and version endpoints, with real state.

A workflow exists once :meth:`WorkflowState.add_workflow` or ``update_workflow``
created it, or once any instance of it was added or created; deleting it removes its
instances too. Every workflow has at least one version, and every version a step graph.
The workflow and version listings page by page number, like the real API.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web

from ._builders import API_PREFIX, envelope, envelope_error
from ._writes import _now, _Routes

if TYPE_CHECKING:
    from ._api import FakeWorkflowsAPI

__all__ = ["WorkflowState", "add_workflow_routes"]

_COUNTED = ("queued", "running", "paused", "errored", "terminated", "complete", "waiting",
            "waitingForPause")


def _version(workflow_id: str, class_name: str, number: int) -> dict[str, Any]:
    now = _now()
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{workflow_id}/version/{number}")),
        "class_name": class_name, "workflow_id": workflow_id, "created_on": now,
        "modified_on": now, "has_dag": True, "language": "javascript",
    }


def _graph(class_name: str) -> dict[str, Any]:
    """A small graph document in the API's shape: one ``step.do``, then a sleep."""
    retries = {"backoff": "exponential", "delay": "1 second", "limit": 5}
    return {"version": 1, "workflow": {
        "class_name": class_name, "functions": {},
        "nodes": [
            {"type": "step_do", "name": "fetch", "nodes": [],
             "config": {"retries": retries, "timeout": "10 minutes"}},
            {"type": "step_sleep", "name": "pause", "duration": "1 hour"},
        ],
    }}


class WorkflowState:
    """The fake API's registry of workflows and their versions."""

    _instances: dict[tuple[str, str], bytes | dict[str, Any]]
    _summaries: dict[tuple[str, str], dict[str, Any]]

    def __init__(self) -> None:
        self._workflows: dict[str, dict[str, Any]] = {}

    def add_workflow(
        self, name: str, *, class_name: str = "Workflow", script_name: str = "worker"
    ) -> dict[str, Any]:
        """Register a workflow (as ``update_workflow`` would); return its wire record.

        A new class or script adds a version; the same ones change nothing.
        """
        record = self._workflows.get(name)
        if record is None:
            now = _now()
            workflow_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"workflow:{name}"))
            record = {"id": workflow_id, "name": name, "class_name": class_name,
                      "script_name": script_name, "created_on": now, "modified_on": now,
                      "triggered_on": None, "versions": [_version(workflow_id, class_name, 1)]}
            self._workflows[name] = record
        elif (record["class_name"], record["script_name"]) != (class_name, script_name):
            versions = record["versions"]
            versions.append(_version(record["id"], class_name, len(versions) + 1))
            record.update(class_name=class_name, script_name=script_name, modified_on=_now())
        return record

    def workflow_names(self) -> list[str]:
        """Every workflow that exists, in name order."""
        names = set(self._workflows)
        names.update(wf for wf, _ in self._instances)
        names.update(wf for wf, _ in self._summaries)
        return sorted(names)

    def _workflow(self, name: str) -> dict[str, Any] | None:
        """A workflow's record (made on first use for one known from its instances)."""
        if name not in self._workflows and name not in self.workflow_names():
            return None
        return self.add_workflow(name) if name not in self._workflows else self._workflows[name]

    def _describe(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """A workflow as the reads show it: the record with its instance counts."""
        counts = dict.fromkeys(_COUNTED, 0)
        for (wf, _), inst in self._instances.items():
            if wf == record["name"] and isinstance(inst, dict) and inst["status"] in counts:
                counts[inst["status"]] += 1
        shown = {k: v for k, v in record.items() if k != "versions"}
        return {**shown, "instances": counts}

    def _remove(self, name: str) -> bool:
        found = self._workflow(name) is not None
        self._workflows.pop(name, None)
        for key in [k for k in self._instances if k[0] == name]:
            del self._instances[key]
        for key in [k for k in self._summaries if k[0] == name]:
            del self._summaries[key]
        return found


def _page(items: list[Any], query: Mapping[str, str], default: int) -> bytes:
    page = int(query.get("page", "1"))
    per_page = int(query.get("per_page", str(default)))
    if page < 1 or per_page < 1:
        raise ValueError("page and per_page must be positive")
    chunk = items[(page - 1) * per_page : page * per_page]
    info = {"page": page, "per_page": per_page, "count": len(chunk),
            "total_count": len(items), "total_pages": -(-len(items) // per_page)}
    return envelope(chunk, result_info=info)


class _WorkflowRoutes(_Routes):
    def gone(self, what: str) -> web.Response:
        return self.api._json(404, envelope_error(10001, f"{what}.not_found"))

    async def list_workflows(self, request: web.Request, m: dict[str, str]) -> web.Response:
        api = self.api
        records = [api._describe(r) for n in api.workflow_names()
                   if (r := api._workflow(n)) is not None]
        return self.paged(records, request)

    def paged(self, items: list[Any], request: web.Request) -> web.Response:
        try:
            body = _page(items, request.query, self.api.default_per_page)
        except ValueError as exc:
            return self.api._json(400, envelope_error(10002, str(exc)))
        return self.api._json(200, body)

    async def get_workflow(self, request: web.Request, m: dict[str, str]) -> web.Response:
        record = self.api._workflow(m["workflow_name"])
        return self.gone("workflow") if record is None else self.ok(self.api._describe(record))

    async def put_workflow(self, request: web.Request, m: dict[str, str]) -> web.Response:
        body = msgspec.json.decode(await request.read())
        record = self.api.add_workflow(
            m["workflow_name"], class_name=str(body["class_name"]),
            script_name=str(body["script_name"]),
        )
        shown = {k: v for k, v in record.items() if k != "versions"}
        return self.ok({**shown, "version_id": record["versions"][-1]["id"],
                        "is_deleted": 0, "terminator_running": 0})

    async def delete_workflow(self, request: web.Request, m: dict[str, str]) -> web.Response:
        if not self.api._remove(m["workflow_name"]):
            return self.gone("workflow")
        return self.ok({"status": "ok", "success": True})

    async def list_versions(self, request: web.Request, m: dict[str, str]) -> web.Response:
        record = self.api._workflow(m["workflow_name"])
        if record is None:
            return self.gone("workflow")
        return self.paged(list(reversed(record["versions"])), request)

    def version(self, m: dict[str, str]) -> dict[str, Any] | None:
        record = self.api._workflow(m["workflow_name"])
        versions = [] if record is None else record["versions"]
        return next((v for v in versions if v["id"] == m["version_id"]), None)

    async def get_version(self, request: web.Request, m: dict[str, str]) -> web.Response:
        found = self.version(m)
        return self.gone("version") if found is None else self.ok(found)

    async def get_graph(self, request: web.Request, m: dict[str, str]) -> web.Response:
        found = self.version(m)
        if found is None:
            return self.gone("version")
        return self.ok({**found, "graph": _graph(found["class_name"])})


def add_workflow_routes(app: web.Application, api: FakeWorkflowsAPI) -> None:
    """Route the workflow and version endpoints."""
    r = _WorkflowRoutes(api)
    base = API_PREFIX + "/accounts/{account_id}/workflows"
    one = base + "/{workflow_name}"
    version = one + "/versions/{version_id}"
    app.router.add_get(base, r.admitted(r.list_workflows))
    app.router.add_get(one, r.admitted(r.get_workflow))
    app.router.add_put(one, r.admitted(r.put_workflow))
    app.router.add_delete(one, r.admitted(r.delete_workflow))
    app.router.add_get(one + "/versions", r.admitted(r.list_versions))
    app.router.add_get(version, r.admitted(r.get_version))
    app.router.add_get(version + "/graph", r.admitted(r.get_graph))
