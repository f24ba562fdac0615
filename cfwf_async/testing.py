"""A fake Cloudflare Workflows API for tests: a real ``aiohttp.web`` server on loopback.

Register instances and step outputs, start the server, point a session at it::

    from cfwf_async import WorkflowsSession
    from cfwf_async.testing import FakeWorkflowsAPI

    api = FakeWorkflowsAPI()
    api.add_instance("checkout", "order-1", {"status": "complete", "steps": []})
    api.add_step_output("checkout", "order-1", "charge-1", {"ok": True})
    async with api.serve() as base_url:
        async with WorkflowsSession(
            api_token=api.api_token, account_id=api.account_id, base_url=base_url
        ) as session:
            inst = await session.get_instance("checkout", "order-1")
    assert api.requests[0].path.endswith("/instances/order-1")

The server checks credentials like Cloudflare does (401 with an error envelope), answers
404 for anything not registered, gives every answer a ``cf-ray`` header, and records each
request in :attr:`FakeWorkflowsAPI.requests`. :meth:`FakeWorkflowsAPI.fail_next` scripts
error answers, for testing retry and error handling.
"""

from __future__ import annotations

import base64
import itertools
import uuid
import zlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import msgspec
from aiohttp import web

from .models import INSTANCE_STATUSES

__all__ = ["FakeWorkflowsAPI", "RecordedRequest", "ScriptedAnswer", "StreamBody", "make_instance"]

API_PREFIX: Final = "/client/v4"

ChunkSource = Callable[[], AsyncIterator[bytes]]


@dataclass(frozen=True)
class RecordedRequest:
    """One request the fake API received.

    ``path`` is percent-decoded (what the server routed on), ``raw_path`` is as sent.
    """

    method: str
    path: str
    raw_path: str
    query: dict[str, str]
    headers: dict[str, str]
    match: dict[str, str]


@dataclass(frozen=True)
class StreamBody:
    """A streamed (``application/octet-stream``) step output.

    ``chunks`` is called once per request and yields the body; ``size`` becomes the
    ``Content-Length`` (None sends the body chunked).
    """

    chunks: ChunkSource
    size: int | None

    @classmethod
    def from_bytes(cls, data: bytes, *, chunk_size: int = 64 * 1024) -> StreamBody:
        async def gen() -> AsyncIterator[bytes]:
            for i in range(0, len(data), chunk_size):
                yield data[i : i + chunk_size]

        return cls(gen, len(data))

    @classmethod
    def repeat(cls, size: int, *, chunk_size: int = 256 * 1024, fill: bytes = b"x") -> StreamBody:
        """``size`` bytes of ``fill``, produced on the fly (never held in memory)."""
        block = (fill * (chunk_size // len(fill) + 1))[:chunk_size]

        async def gen() -> AsyncIterator[bytes]:
            left = size
            while left > 0:
                n = min(left, chunk_size)
                yield block if n == chunk_size else block[:n]
                left -= n

        return cls(gen, size)


@dataclass
class ScriptedAnswer:
    """An answer the fake API gives instead of the real one (see ``fail_next``)."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


def envelope_error(code: int, message: str) -> bytes:
    """A Cloudflare error envelope as bytes."""
    return msgspec.json.encode(
        {"errors": [{"code": code, "message": message}], "messages": [], "success": False,
         "result": None}
    )


def make_instance(
    status: str = "complete",
    *,
    steps: int = 3,
    version_id: str = "0b7d4c2e-3f1a-4e5b-9c8d-7a6f5e4d3c2b",
    params: Any = None,
) -> dict[str, Any]:
    """A plausible instance ``result`` with ``steps`` completed ``step.do`` entries."""
    step_list = [
        {
            "type": "step",
            "name": f"step {i}-1",
            "start": "2026-10-30T08:00:00.500Z",
            "end": "2026-10-30T08:00:01.900Z",
            "success": True,
            "output": f'{{"n":{i}}}',
            "attempts": [
                {"start": "2026-10-30T08:00:00.500Z", "end": "2026-10-30T08:00:01.900Z",
                 "error": None, "success": True}
            ],
            "config": {"retries": {"delay": "10 seconds", "limit": 5, "backoff": "exponential"},
                       "timeout": "10 minutes"},
        }
        for i in range(steps)
    ]
    terminal = status in ("complete", "errored", "terminated")
    return {
        "status": status,
        "queued": "2026-10-30T08:00:00.120Z",
        "start": "2026-10-30T08:00:00.480Z",
        "end": "2026-10-30T08:04:10.004Z" if terminal else None,
        "error": None,
        "output": "done" if status == "complete" else "",
        "params": params if params is not None else {"orderId": "o-981"},
        "step_count": steps,
        "steps": step_list,
        "success": True if status == "complete" else (False if terminal else None),
        "trigger": {"source": "api"},
        "versionId": version_id,
    }


class FakeWorkflowsAPI:
    """An in-process fake of the Workflows REST API, served on 127.0.0.1.

    ``api_token`` (or ``api_email`` + ``api_key``) are the credentials it accepts and
    ``account_id`` the only account it knows.
    """

    def __init__(
        self,
        *,
        api_token: str = "test-token",
        api_email: str | None = None,
        api_key: str | None = None,
        account_id: str = "test-account",
    ) -> None:
        self.api_token = api_token
        self.api_email = api_email
        self.api_key = api_key
        self.account_id = account_id
        self.requests: list[RecordedRequest] = []
        self._instances: dict[tuple[str, str], bytes | dict[str, Any]] = {}
        # Listing entries registered explicitly; the others derive from _instances.
        self._summaries: dict[tuple[str, str], dict[str, Any]] = {}
        #: Page size of a listing request that sends no ``per_page``.
        self.default_per_page = 50
        self._outputs: dict[tuple[str, str, str, str, int | None], Any] = {}
        self._scripted: deque[ScriptedAnswer] = deque()
        self._rays = itertools.count(1)
        self.base_url: str | None = None

    # -- registration ----------------------------------------------------------

    def add_instance(
        self, workflow_name: str, instance_id: str, result: Mapping[str, Any] | bytes
    ) -> None:
        """Serve ``result`` (the envelope's ``result`` object) for this instance.

        ``bytes`` are served verbatim as the whole answer body (envelope included), for
        recorded samples and deliberately broken bodies.

        A ``result`` mapping also shows up in the workflow's listing, summarised from
        its ``queued``, ``start``, ``end``, ``versionId`` and ``trigger`` fields (see
        :meth:`add_summary` to list something else).
        """
        self._instances[(workflow_name, instance_id)] = (
            result if isinstance(result, bytes) else dict(result)
        )

    def add_summary(
        self, workflow_name: str, instance_id: str, summary: Mapping[str, Any]
    ) -> None:
        """List ``summary`` for this instance, instead of one derived from its result.

        ``summary`` holds the wire fields of a listing entry (``status``,
        ``created_on``, ``ended_on``, ``trigger_source``, ...; ``id`` is set to
        ``instance_id``). The instance needs no :meth:`add_instance`: a listed instance
        that ``get_instance`` does not know is a valid test too. Listings are ordered by
        ``created_on``, then by registration.
        """
        self._summaries[(workflow_name, instance_id)] = {**summary, "id": instance_id}

    def add_step_output(
        self,
        workflow_name: str,
        instance_id: str,
        name: str,
        output: Any = None,
        *,
        type: str = "step",
        status: str = "complete",
        error: Mapping[str, str] | None = None,
        attempt: int | None = None,
    ) -> None:
        """Serve a JSON step output (``StepOutput``) for step ``name``.

        ``output`` may also be a :class:`StreamBody` or ``bytes``: then the answer is
        ``application/octet-stream`` with those bytes as the body.
        """
        value: Any
        if isinstance(output, bytes):
            value = StreamBody.from_bytes(output)
        elif isinstance(output, StreamBody):
            value = output
        else:
            value = {"status": status, "error": dict(error) if error else None, "output": output}
        self._outputs[(workflow_name, instance_id, type, name, attempt)] = value

    def fail_next(
        self,
        status: int,
        *,
        times: int = 1,
        errors: list[tuple[int, str]] | None = None,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        """Answer the next ``times`` requests with ``status`` instead of the real answer.

        By default the body is a Cloudflare error envelope (``errors`` as
        ``(code, message)`` pairs); pass ``body`` for anything else (an HTML edge page,
        an empty body).
        """
        if body is None:
            items = errors or [(10000 + status, f"fake error {status}")]
            body = msgspec.json.encode(
                {"errors": [{"code": c, "message": m} for c, m in items], "messages": [],
                 "success": False, "result": None}
            )
        for _ in range(times):
            self._scripted.append(
                ScriptedAnswer(status, body, dict(headers or {}), content_type)
            )

    # -- serving ---------------------------------------------------------------

    def make_app(self) -> web.Application:
        """The ``aiohttp.web`` application, for callers that run it themselves."""
        app = web.Application()
        base = API_PREFIX + "/accounts/{account_id}/workflows/{workflow_name}/instances"
        app.router.add_get(base, self._list_instances)
        app.router.add_get(base + "/{instance_id}", self._get_instance)
        app.router.add_get(base + "/{instance_id}/step", self._get_step_output)
        return app

    @asynccontextmanager
    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
        """Run the fake API; yields its base URL (``http://127.0.0.1:<port>/client/v4``)."""
        runner = web.AppRunner(self.make_app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1]
        self.base_url = f"http://{host}:{bound}{API_PREFIX}"
        try:
            yield self.base_url
        finally:
            await runner.cleanup()

    # -- handlers ------------------------------------------------------------------

    def _record(self, request: web.Request) -> None:
        self.requests.append(
            RecordedRequest(
                method=request.method,
                path=request.path,
                raw_path=request.raw_path.split("?", 1)[0],
                query=dict(request.query),
                headers=dict(request.headers),
                match=dict(request.match_info),
            )
        )

    def _headers(self) -> dict[str, str]:
        return {"cf-ray": f"{next(self._rays):016x}-FAKE"}

    def _json(self, status: int, body: bytes) -> web.Response:
        return web.Response(
            status=status, body=body, content_type="application/json", headers=self._headers()
        )

    def _check(self, request: web.Request) -> web.StreamResponse | None:
        """Scripted answers first, then authentication and the account."""
        if self._scripted:
            answer = self._scripted.popleft()
            return web.Response(
                status=answer.status,
                body=answer.body,
                content_type=answer.content_type,
                headers={**self._headers(), **answer.headers},
            )
        h = request.headers
        authed = h.get("Authorization") == f"Bearer {self.api_token}" or (
            self.api_key is not None
            and h.get("X-Auth-Key") == self.api_key
            and h.get("X-Auth-Email") == self.api_email
        )
        if not authed:
            return self._json(401, envelope_error(10000, "Authentication error"))
        if request.match_info["account_id"] != self.account_id:
            return self._json(404, envelope_error(10000, "account.not_found"))
        return None

    def _listed(self, workflow_name: str) -> list[dict[str, Any]]:
        """A workflow's listing entries, oldest first; registration order breaks ties."""
        entries: dict[str, dict[str, Any]] = {}
        for (workflow, instance_id), result in self._instances.items():
            if workflow == workflow_name and not isinstance(result, bytes):
                entries[instance_id] = _summarise(workflow, instance_id, result)
        for (workflow, instance_id), summary in self._summaries.items():
            if workflow == workflow_name:
                entries[instance_id] = summary
        return sorted(entries.values(), key=lambda e: _parse_time(e.get("created_on")) or _EPOCH)

    async def _list_instances(self, request: web.Request) -> web.StreamResponse:
        """The listing: filters, ``direction`` and opaque cursors over ``per_page`` pages.

        A cursor encodes the offset of the next page and a fingerprint of the filters,
        so a cursor sent with other filters is refused (400), like a real opaque token.
        """
        self._record(request)
        refused = self._check(request)
        if refused is not None:
            return refused
        q = request.query
        try:
            listing = _ListingQuery.parse(q, self.default_per_page)
        except ValueError as exc:
            return self._json(400, envelope_error(10002, str(exc)))
        entries = [e for e in self._listed(request.match_info["workflow_name"]) if listing.keeps(e)]
        if listing.direction == "desc":
            entries.reverse()
        page = entries[listing.offset : listing.offset + listing.per_page]
        after = listing.offset + len(page)
        info: dict[str, Any] = {
            "count": len(page),
            "per_page": listing.per_page,
            "total_count": len(entries),
        }
        if page and after < len(entries):
            info["cursor"] = listing.cursor(after)
        body = msgspec.json.encode(
            {"errors": [], "messages": [], "success": True, "result": page, "result_info": info}
        )
        return self._json(200, body)

    async def _get_instance(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        refused = self._check(request)
        if refused is not None:
            return refused
        m = request.match_info
        found = self._instances.get((m["workflow_name"], m["instance_id"]))
        if found is None:
            return self._json(404, envelope_error(10001, "instance.not_found"))
        if isinstance(found, bytes):
            return self._json(200, found)
        result = dict(found)
        steps = list(result.get("steps") or [])
        if request.query.get("order") == "desc":
            steps.reverse()
        if request.query.get("simple") == "true":
            result["step_count"] = len(steps)
            steps = []
        result["steps"] = steps
        body = msgspec.json.encode(
            {"errors": [], "messages": [], "success": True, "result": result}
        )
        return self._json(200, body)

    async def _get_step_output(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        refused = self._check(request)
        if refused is not None:
            return refused
        m, q = request.match_info, request.query
        name, kind = q.get("name"), q.get("type", "step")
        if not name:
            return self._json(400, envelope_error(10002, "name: required"))
        attempt = int(q["attempt"]) if q.get("attempt", "").isdigit() else None
        key = (m["workflow_name"], m["instance_id"], kind, name)
        found = self._outputs.get((*key, attempt))
        if found is None and attempt is not None:
            found = self._outputs.get((*key, None))
        if found is None:
            return self._json(404, envelope_error(10001, "step.not_found"))
        if isinstance(found, StreamBody):
            resp = web.StreamResponse(headers=self._headers())
            resp.content_type = "application/octet-stream"
            if found.size is not None:
                resp.content_length = found.size
            await resp.prepare(request)
            async for chunk in found.chunks():
                await resp.write(chunk)
            await resp.write_eof()
            return resp
        body = msgspec.json.encode(
            {"errors": [], "messages": [], "success": True, "result": found}
        )
        return self._json(200, body)

# -- listing -----------------------------------------------------------------------

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_LIST_FILTERS: Final = ("status", "date_start", "date_end", "direction")


def _parse_time(value: object) -> datetime | None:
    """An ISO 8601 date-time (naive ones taken as UTC), or None if it is not one."""
    if not isinstance(value, str) or not value:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _summarise(workflow_name: str, instance_id: str, result: Mapping[str, Any]) -> dict[str, Any]:
    """The listing entry of a registered instance, shaped like the live API's.

    ``ended_on`` is an empty string while the instance runs, as the API sends it.
    """
    trigger = result.get("trigger")
    source = trigger.get("source") if isinstance(trigger, Mapping) else None
    entry: dict[str, Any] = {
        "id": instance_id,
        "status": result.get("status"),
        "created_on": result.get("queued"),
        "started_on": result.get("start"),
        "ended_on": result.get("end") or "",
        "modified_on": result.get("end") or result.get("start") or result.get("queued"),
        "version_id": result.get("versionId"),
        "workflow_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"workflow:{workflow_name}")),
    }
    if source is not None:
        entry["trigger_source"] = source
    return entry


@dataclass(frozen=True)
class _ListingQuery:
    """A listing request's query, checked the way the API checks it."""

    status: str | None
    start: datetime | None
    end: datetime | None
    direction: str
    per_page: int
    offset: int
    fingerprint: str

    @classmethod
    def parse(cls, q: Mapping[str, str], default_per_page: int) -> _ListingQuery:
        """Raise ValueError (a 400 answer) for anything the API would refuse."""
        status = q.get("status")
        if status is not None and status not in INSTANCE_STATUSES:
            raise ValueError(f"status: unknown value {status!r}")
        direction = q.get("direction", "asc")
        if direction not in ("asc", "desc"):
            raise ValueError("direction: must be asc or desc")
        raw_per_page = q.get("per_page", str(default_per_page))
        if not raw_per_page.isdigit() or int(raw_per_page) < 1:
            raise ValueError("per_page: must be an integer >= 1")
        times: list[datetime | None] = []
        for name in ("date_start", "date_end"):
            raw = q.get(name)
            when = _parse_time(raw)
            if raw is not None and when is None:
                raise ValueError(f"{name}: not an ISO 8601 date-time")
            times.append(when)
        if "cursor" in q and "page" in q:
            raise ValueError("cursor and page are mutually exclusive")
        filters = "\x00".join(q.get(k, "") for k in _LIST_FILTERS)
        fingerprint = format(zlib.crc32(filters.encode()), "08x")
        offset = 0
        if "cursor" in q:
            offset = _cursor_offset(q["cursor"], fingerprint)
        return cls(status, times[0], times[1], direction, int(raw_per_page), offset, fingerprint)

    def keeps(self, entry: Mapping[str, Any]) -> bool:
        """Whether ``entry`` passes the status and ``created_on`` window filters."""
        if self.status is not None and entry.get("status") != self.status:
            return False
        if self.start is None and self.end is None:
            return True
        created = _parse_time(entry.get("created_on"))
        if created is None:
            return False
        return (self.start is None or created >= self.start) and (
            self.end is None or created <= self.end
        )

    def cursor(self, offset: int) -> str:
        """The opaque cursor of the page starting at ``offset`` under these filters."""
        raw = f"{offset}.{self.fingerprint}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _cursor_offset(cursor: str, fingerprint: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        offset_text, _, made_for = raw.partition(".")
        offset = int(offset_text)
    except ValueError:  # binascii.Error and UnicodeDecodeError included
        raise ValueError("cursor: invalid") from None
    if made_for != fingerprint:
        raise ValueError("cursor: issued for other filters")
    if offset < 0:
        raise ValueError("cursor: invalid")
    return offset
