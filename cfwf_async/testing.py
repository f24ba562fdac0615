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

import itertools
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
from aiohttp import web

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
        """
        self._instances[(workflow_name, instance_id)] = (
            result if isinstance(result, bytes) else dict(result)
        )

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
