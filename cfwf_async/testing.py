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
request in :attr:`FakeWorkflowsAPI.requests`.

Faults, for testing retry and error handling: :meth:`FakeWorkflowsAPI.inject` scripts a
:class:`Fault` for the next requests, :meth:`FakeWorkflowsAPI.fault_rate` injects faults
at a seeded random rate, and :attr:`FakeWorkflowsAPI.injected` counts what was injected::

    from cfwf_async.testing import Fault

    api.inject(Fault.http(503), times=2)            # two 503 envelopes, then the real answer
    api.inject(Fault.reset())                       # connection reset before any answer
    api.fault_rate(0.2, [Fault.http(500), Fault.edge_page(502),
                         Fault.rate_limit(0), Fault.reset()], seed=7)
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import math
import random
import socket
import struct
import time
import uuid
import zlib
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import msgspec
from aiohttp import web

from .models import INSTANCE_STATUSES

__all__ = [
    "FakeWorkflowsAPI",
    "Fault",
    "RecordedRequest",
    "StreamBody",
    "make_instance",
]

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
    #: The label of the :class:`Fault` injected into this request, or None.
    fault: str | None = None
    #: When the request arrived (``time.monotonic()``), for measuring pacing.
    received_at: float = field(default_factory=time.monotonic)


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



def envelope_error(code: int, message: str) -> bytes:
    """A Cloudflare error envelope as bytes."""
    return msgspec.json.encode(
        {"errors": [{"code": code, "message": message}], "messages": [], "success": False,
         "result": None}
    )


_EDGE_PAGE: Final = """<!DOCTYPE html>
<html lang="en"><head><title>api.cloudflare.com | {status}: edge error</title></head>
<body><h1>Error code {status}</h1>
<p>The Cloudflare edge could not get a valid answer from the origin (fake page, cf-ray {ray}).</p>
</body></html>
"""

# Which statuses Cloudflare's edge answers with an HTML page rather than a JSON envelope.
EDGE_STATUSES: Final = frozenset({502, 504, *range(520, 528)})


@dataclass(frozen=True)
class Fault:
    """One way for an answer to go wrong; build it with the class methods below.

    Give it to :meth:`FakeWorkflowsAPI.inject` (the next requests) or
    :meth:`FakeWorkflowsAPI.fault_rate` (a random share of all requests). Every fault
    has a short ``label`` (``"503"``, ``"edge 502"``, ``"reset"``...) under which
    :attr:`FakeWorkflowsAPI.injected` counts it and :attr:`RecordedRequest.fault`
    names it.

    Answers instead of the real one:
        :meth:`http` (any status, envelope error), :meth:`rate_limit` (429 with
        ``Retry-After``), :meth:`edge_page` (Cloudflare's HTML error page),
        :meth:`malformed` (a body that is not the promised JSON).
    The transport failing before the answer:
        :meth:`reset` (connection reset), :meth:`delay` (the answer comes late, after
        the client's timeout).
    The real answer (or an error envelope), delivered badly:
        :meth:`truncate` (the body stops short of its ``Content-Length``; JSON or
        stream alike), :meth:`bad_chunking` (a broken chunked encoding),
        :meth:`trickle` (bytes dribble in, for slow streams), :meth:`stall` (part of
        the body, then nothing).
    """

    kind: str
    label: str
    status: int | None = None
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    seconds: float = 0.0
    keep: float = 0.5
    chunk_size: int = 64

    # -- canned answers ----------------------------------------------------------

    @classmethod
    def http(
        cls,
        status: int,
        *,
        errors: Sequence[tuple[int, str]] | None = None,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Fault:
        """Answer with ``status`` and a Cloudflare error envelope.

        ``errors`` are ``(code, message)`` pairs (default one ``fake error <status>``);
        ``body`` replaces the envelope with any bytes.
        """
        _check_status(status)
        if body is None:
            body = _error_envelope(errors or [(10000 + status, f"fake error {status}")])
        return cls(
            "answer", str(status), status=status, body=body,
            headers=dict(headers or {}), content_type=content_type,
        )

    @classmethod
    def rate_limit(cls, retry_after: float | str | None = 0) -> Fault:
        """429 with ``Retry-After: <retry_after>`` (None sends no ``Retry-After``)."""
        headers = {} if retry_after is None else {"Retry-After": _seconds_text(retry_after)}
        body = _error_envelope([(971, "Please wait and consider throttling your request speed")])
        return cls("answer", "429", status=429, body=body, headers=headers)

    @classmethod
    def edge_page(cls, status: int = 502) -> Fault:
        """Cloudflare's edge failing: an HTML error page, not JSON (502, 504, 520..527)."""
        if status not in EDGE_STATUSES:
            raise ValueError(f"status must be 502, 504 or 520..527, got {status!r}")
        return cls(
            "answer", f"edge {status}", status=status,
            body=_EDGE_PAGE.format(status=status, ray="{ray}").encode(),
            content_type="text/html",
        )

    @classmethod
    def malformed(cls, status: int = 200, body: bytes | None = None) -> Fault:
        """A ``application/json`` answer whose body is not an envelope (by default not JSON)."""
        _check_status(status)
        return cls(
            "answer", f"malformed {status}", status=status,
            body=b'{"success": true, "result": <oops>' if body is None else body,
        )

    # -- transport failures before the answer ---------------------------------------

    @classmethod
    def reset(cls) -> Fault:
        """Reset the connection (TCP RST) after reading the request, before any answer."""
        return cls("reset", "reset")

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        """Hold the answer back for ``seconds`` (make it longer than the client's timeout).

        The server stops waiting as soon as the client hangs up.
        """
        return cls("delay", "delay", seconds=_check_seconds(seconds))

    # -- bodies delivered badly -------------------------------------------------------

    @classmethod
    def truncate(cls, keep: float = 0.5, *, status: int | None = None) -> Fault:
        """Announce the full ``Content-Length``, send the first ``keep`` share, hang up.

        Applies to the real answer (a JSON body or a streamed output); with ``status``
        the answer is that status's error envelope instead, cut the same way. A body of
        unknown size (chunked) breaks off after its first chunk.
        """
        if not 0.0 <= keep < 1.0:
            raise ValueError(f"keep must be in [0, 1), got {keep!r}")
        if status is None:
            return cls("truncate", "truncate", keep=keep)
        _check_status(status)
        body = _error_envelope([(10000 + status, f"fake error {status}")])
        return cls("truncate", f"truncate {status}", status=status, body=body, keep=keep)

    @classmethod
    def bad_chunking(cls, keep: float = 0.5) -> Fault:
        """Send the real answer chunked, with a corrupt chunk header after ``keep`` of it.

        The corrupt header follows a 50 ms pause, so it reaches the client after the good
        part (a body of unknown size breaks after its first chunk).
        """
        if not 0.0 <= keep < 1.0:
            raise ValueError(f"keep must be in [0, 1), got {keep!r}")
        return cls("bad_chunking", "bad chunking", keep=keep)

    @classmethod
    def trickle(cls, chunk_size: int = 64, interval: float = 0.05) -> Fault:
        """Send the real answer ``chunk_size`` bytes at a time, ``interval`` seconds apart."""
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
        return cls("trickle", "trickle", seconds=_check_seconds(interval), chunk_size=chunk_size)

    @classmethod
    def stall(cls, keep: float = 0.5, *, seconds: float = 30.0) -> Fault:
        """Send the first ``keep`` share of the real answer, then nothing for ``seconds``.

        The server stops waiting as soon as the client hangs up.
        """
        if not 0.0 <= keep < 1.0:
            raise ValueError(f"keep must be in [0, 1), got {keep!r}")
        return cls("stall", "stall", keep=keep, seconds=_check_seconds(seconds))


def _check_status(status: object) -> None:
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise ValueError(f"status must be an HTTP status (100..599), got {status!r}")


def _check_seconds(seconds: object) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds >= 0:
        raise ValueError(f"seconds must be a number >= 0, got {seconds!r}")
    return float(seconds)


def _seconds_text(value: float | str) -> str:
    if isinstance(value, str):
        return value
    return str(int(value)) if float(value).is_integer() else str(value)


def _error_envelope(items: Sequence[tuple[int, str]]) -> bytes:
    return msgspec.json.encode(
        {"errors": [{"code": c, "message": m} for c, m in items], "messages": [],
         "success": False, "result": None}
    )


_FAULT: Final = web.RequestKey("cfwf_async.fault", Fault)
_BODY_FAULTS: Final = frozenset({"truncate", "bad_chunking", "trickle", "stall"})


async def _wait_unless_gone(request: web.Request, seconds: float) -> None:
    """Sleep up to ``seconds``, returning early once the client has hung up.

    aiohttp does not cancel a handler when its client disconnects, so a delayed or
    stalled answer polls for that instead of holding the server's shutdown.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (left := deadline - loop.time()) > 0:
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        await asyncio.sleep(min(0.02, left))


def _reset(request: web.Request) -> None:
    """Drop the connection with a TCP RST (SO_LINGER 0), as a crashed peer would."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


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
        self._scripted: deque[Fault] = deque()
        self._fault_rate = 0.0
        self._fault_mix: tuple[Fault, ...] = ()
        self._fault_rng = random.Random(0)
        #: How many times each fault was injected, by :attr:`Fault.label`.
        self.injected: Counter[str] = Counter()
        self._rays = itertools.count(1)
        self.base_url: str | None = None
        self._quota: _SimulatedQuota | None = None
        #: Requests that arrived after the simulated quota (``set_ratelimit``) had run
        #: out; the real API would have answered them 429 and blocked the user.
        self.over_quota = 0

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
        an empty body). The same as ``inject(Fault.http(...), times=times)``.
        """
        self.inject(
            Fault.http(
                status, errors=errors, body=body, headers=headers, content_type=content_type
            ),
            times=times,
        )

    def inject(self, fault: Fault, *, times: int = 1) -> None:
        """Give the next ``times`` requests ``fault`` (after faults injected earlier).

        Scripted faults come first, before random ones (:meth:`fault_rate`) and before
        the credential check::

            api.inject(Fault.rate_limit(retry_after=1))
            api.inject(Fault.http(503), times=2)
        """
        if not isinstance(fault, Fault):
            raise TypeError(f"fault must be a Fault, got {type(fault).__name__}")
        if isinstance(times, bool) or not isinstance(times, int) or times < 0:
            raise ValueError(f"times must be an int >= 0, got {times!r}")
        self._scripted.extend([fault] * times)

    def fault_rate(self, rate: float, mix: Sequence[Fault], *, seed: int = 0) -> None:
        """Inject a fault into a random share ``rate`` (0..1) of requests, drawn from ``mix``.

        Each request draws once: with probability ``rate`` it gets one of ``mix``, picked
        uniformly (list a fault twice to make it twice as likely). ``seed`` makes the
        sequence of draws repeatable; which request meets which draw still depends on
        the order requests arrive in. ``rate=0`` turns random faults off::

            api.fault_rate(0.2, [Fault.http(503), Fault.reset(), Fault.delay(1.0)], seed=1)
        """
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
            raise ValueError(f"rate must be a number in [0, 1], got {rate!r}")
        mix = tuple(mix)
        if rate and not mix:
            raise ValueError("mix must name at least one Fault")
        for fault in mix:
            if not isinstance(fault, Fault):
                raise TypeError(f"mix must hold Fault values, got {type(fault).__name__}")
        self._fault_rate = float(rate)
        self._fault_mix = mix
        self._fault_rng = random.Random(seed)

    def clear_faults(self) -> None:
        """Drop scripted faults and stop random ones (:attr:`injected` keeps its counts)."""
        self._scripted.clear()
        self._fault_rate = 0.0

    def _draw_fault(self) -> Fault | None:
        if self._scripted:
            return self._scripted.popleft()
        if self._fault_rate and self._fault_rng.random() < self._fault_rate:
            return self._fault_rng.choice(self._fault_mix)
        return None

    def set_ratelimit(
        self,
        remaining: int | None,
        reset: float = 300.0,
        *,
        quota: int = 1200,
        window: float = 300.0,
        policy: str = "default",
    ) -> None:
        """Send Cloudflare's ``Ratelimit`` headers on every answer, from a simulated quota.

        The next answer says ``Ratelimit: "default";r=<remaining>;t=<reset>`` and
        ``Ratelimit-Policy: "default";q=<quota>;w=<window>``; each later answer reports
        one request fewer (never below 0) and a reset ``t`` counting down in whole
        seconds. When the reset comes, a new window starts with ``quota`` requests.
        Requests arriving with nothing left are counted in :attr:`over_quota` (they are
        still answered normally). ``remaining=None`` stops sending the headers::

            api.set_ratelimit(0, 2)     # "r=0;t=2": a paced client holds for 2 s
            api.set_ratelimit(5, 60, quota=100, window=60)
        """
        if remaining is None:
            self._quota = None
            return
        if isinstance(remaining, bool) or not isinstance(remaining, int) or remaining < 0:
            raise ValueError(f"remaining must be an int >= 0 or None, got {remaining!r}")
        if isinstance(quota, bool) or not isinstance(quota, int) or quota < 1:
            raise ValueError(f"quota must be an int >= 1, got {quota!r}")
        for name, value in (("reset", reset), ("window", window)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                value > 0 and math.isfinite(value)
            ):
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        self._quota = _SimulatedQuota(remaining, float(reset), quota, float(window), policy)

    # -- serving ---------------------------------------------------------------

    def make_app(self) -> web.Application:
        """The ``aiohttp.web`` application, for callers that run it themselves."""
        app = web.Application(middlewares=[self._inject_faults])
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
        fault = request.get(_FAULT)
        self.requests.append(
            RecordedRequest(
                method=request.method,
                path=request.path,
                raw_path=request.raw_path.split("?", 1)[0],
                query=dict(request.query),
                headers=dict(request.headers),
                match=dict(request.match_info),
                fault=None if fault is None else fault.label,
            )
        )

    @web.middleware
    async def _inject_faults(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Draw a fault for the request; the handler records it and ``_check`` answers it."""
        fault = self._draw_fault()
        if fault is None:
            return await handler(request)
        request[_FAULT] = fault
        self.injected[fault.label] += 1
        if fault.kind == "delay":
            await _wait_unless_gone(request, fault.seconds)
        resp = await handler(request)
        if fault.kind == "reset":
            _reset(request)
        elif fault.kind in _BODY_FAULTS and isinstance(resp, web.Response) and not resp.prepared:
            body = resp.body if isinstance(resp.body, bytes) else b""
            headers = {
                k: v for k, v in resp.headers.items()
                if k.lower() not in ("content-length", "content-type")
            }

            async def whole() -> AsyncIterator[bytes]:
                yield body

            return await self._send_body(
                request, resp.status, headers, resp.content_type, whole(), len(body)
            )
        return resp

    async def _send_body(
        self,
        request: web.Request,
        status: int,
        headers: Mapping[str, str],
        content_type: str,
        chunks: AsyncIterator[bytes],
        size: int | None,
    ) -> web.StreamResponse:
        """Stream an answer's body, spoiling it the way the request's fault says."""
        fault = request.get(_FAULT)
        kind = None if fault is None or fault.kind not in _BODY_FAULTS else fault.kind
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_type = content_type
        if size is not None and kind != "bad_chunking":
            resp.content_length = size
        await resp.prepare(request)
        if kind is None:
            async for chunk in chunks:
                await resp.write(chunk)
            await resp.write_eof()
            return resp
        assert fault is not None
        # Where a cut fault breaks off; with no size announced, after the first chunk.
        limit = None if kind == "trickle" else (
            int(size * fault.keep) if size is not None else -1
        )
        sent = 0
        async for chunk in chunks:
            if limit is not None and (limit < 0 or sent + len(chunk) >= limit):
                part = chunk if limit < 0 else chunk[: limit - sent]
                if part:
                    await resp.write(part)
                break
            if kind == "trickle":
                step = fault.chunk_size
                for i in range(0, len(chunk), step):
                    await resp.write(chunk[i : i + step])
                    await asyncio.sleep(fault.seconds)
            else:
                await resp.write(chunk)
            sent += len(chunk)
        else:
            if limit is None:
                await resp.write_eof()
                return resp
        transport = request.transport
        if kind == "stall":
            await _wait_unless_gone(request, fault.seconds)
        elif kind == "bad_chunking" and transport is not None:
            # A pause first, so the good part reaches the client on its own and the
            # damage shows mid-body rather than together with the headers.
            await asyncio.sleep(0.05)
            # Not a hex size: the client's chunk parser must refuse it.
            transport.write(b"zz-not-a-size\r\n")
        if transport is not None:
            transport.close()  # flushes what was written, then FIN: a short body
        return resp

    def _headers(self) -> dict[str, str]:
        headers = {"cf-ray": f"{next(self._rays):016x}-FAKE"}
        if self._quota is not None:
            # Every answer counts one request against the simulated quota.
            over = self._quota.take(headers)
            self.over_quota += over
        return headers

    def _json(self, status: int, body: bytes) -> web.Response:
        return web.Response(
            status=status, body=body, content_type="application/json", headers=self._headers()
        )

    def _check(self, request: web.Request) -> web.StreamResponse | None:
        """An injected fault's answer first, then authentication and the account."""
        fault = request.get(_FAULT)
        if fault is not None and (fault.status is not None or fault.kind == "reset"):
            # A reset answers an empty shell: the middleware drops the connection before
            # it goes out, and no handler gets to stream anything first.
            return web.Response(
                status=fault.status or 200,
                body=fault.body,
                content_type=fault.content_type,
                headers={**self._headers(), **fault.headers},
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
            return await self._send_body(
                request, 200, self._headers(), "application/octet-stream",
                found.chunks(), found.size,
            )
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


# -- rate-limit headers -------------------------------------------------------------


class _SimulatedQuota:
    """The account quota behind ``set_ratelimit``: ``left`` is what the next answer says."""

    def __init__(
        self, remaining: int, reset: float, quota: int, window: float, policy: str
    ) -> None:
        self.left = remaining
        self.reset_at = time.monotonic() + reset
        self.quota = quota
        self.window = window
        self.policy = policy.replace('"', "")

    def take(self, headers: dict[str, str]) -> int:
        """Count one request, add the headers that report it; 1 if it was over the quota."""
        now = time.monotonic()
        if now >= self.reset_at:
            windows = math.floor((now - self.reset_at) / self.window) + 1
            self.reset_at += windows * self.window
            self.left = self.quota - 1
        over = 1 if self.left < 0 else 0
        reset = max(1, math.ceil(self.reset_at - now))
        headers["Ratelimit"] = f'"{self.policy}";r={max(0, self.left)};t={reset}'
        headers["Ratelimit-Policy"] = f'"{self.policy}";q={self.quota};w={self.window:g}'
        self.left -= 1
        return over
