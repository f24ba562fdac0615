"""FakeWorkflowsAPI: the fake Workflows REST API, its registrations and its routes."""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Final, Self

from aiohttp import web

from .._resource import AsyncResource
from ..session import WorkflowsSession
from ._bodies import StreamBody, reset_connection, send_body, wait_unless_gone
from ._builders import API_PREFIX, envelope, envelope_error
from ._faults import (
    Answer,
    BodyFault,
    Delay,
    DropAnswer,
    Fault,
    FaultPlan,
    Reset,
    Truncate,
    fake_error,
)
from ._listing import listing_page, summarise
from ._quota import SimulatedQuota
from ._workflows import WorkflowState, add_workflow_routes
from ._writes import WriteState, add_write_routes

__all__ = ["FakeWorkflowsAPI", "RecordedRequest"]

_FAULT: Final = web.RequestKey("cfwf_async.fault", Fault)
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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


class FakeWorkflowsAPI(WriteState, WorkflowState, AsyncResource):
    """An in-process fake of the Workflows REST API, served on 127.0.0.1.

    ``api_token`` (or ``api_email`` + ``api_key``) are the credentials it accepts and
    ``account_id`` the only account it knows. ``async with FakeWorkflowsAPI() as api``
    serves it until the block ends (:attr:`base_url` is then set); :meth:`serve` does the
    same and yields the base URL.
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
        #: Every request received, in order of arrival.
        self.requests: list[RecordedRequest] = []
        self._instances: dict[tuple[str, str], bytes | dict[str, Any]] = {}
        # Listing entries registered explicitly; the others derive from _instances.
        self._summaries: dict[tuple[str, str], dict[str, Any]] = {}
        #: Page size of a listing request that sends no ``per_page``.
        self.default_per_page = 50
        self._outputs: dict[tuple[str, str, str, str, int | None], Any] = {}
        self._faults = FaultPlan()
        #: How many times each fault was injected, by :attr:`Fault.label`.
        self.injected: Counter[str] = Counter()
        self._rays = itertools.count(1)
        #: ``http://127.0.0.1:<port>/client/v4`` while serving, else None.
        self.base_url: str | None = None
        self._runner: web.AppRunner | None = None
        self._quota: SimulatedQuota | None = None
        #: Requests that arrived after the simulated quota (``set_ratelimit``) had run
        #: out; the real API would have answered them 429 and blocked the user.
        self.over_quota = 0
        WriteState.__init__(self)
        WorkflowState.__init__(self)

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

    # -- faults and quota ---------------------------------------------------------

    def inject(self, fault: Fault, *, times: int = 1) -> None:
        """Give the next ``times`` requests ``fault`` (after faults injected earlier).

        Scripted faults come first, before random ones (:meth:`fault_rate`) and before
        the credential check::

            api.inject(Fault.rate_limit(retry_after=1))
            api.inject(Fault.http(503), times=2)
        """
        self._faults.script(fault, times)

    def fault_rate(self, rate: float, mix: Sequence[Fault], *, seed: int = 0) -> None:
        """Inject a fault into a random share ``rate`` (0..1) of requests, drawn from ``mix``.

        Each request draws once: with probability ``rate`` it gets one of ``mix``, picked
        uniformly (list a fault twice to make it twice as likely). ``seed`` makes the
        sequence of draws repeatable; which request meets which draw still depends on
        the order requests arrive in. ``rate=0`` turns random faults off::

            api.fault_rate(0.2, [Fault.http(503), Fault.reset(), Fault.delay(1.0)], seed=1)
        """
        self._faults.randomise(rate, mix, seed)

    def clear_faults(self) -> None:
        """Drop scripted faults and stop random ones (:attr:`injected` keeps its counts)."""
        self._faults.clear()

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
        self._quota = (
            None if remaining is None
            else SimulatedQuota(remaining, reset, quota, window, policy)
        )

    # -- serving ---------------------------------------------------------------

    def make_app(self) -> web.Application:
        """The ``aiohttp.web`` application, for callers that run it themselves."""
        app = web.Application(middlewares=[self._inject_faults])
        base = API_PREFIX + "/accounts/{account_id}/workflows/{workflow_name}/instances"
        app.router.add_get(base, self._list_instances)
        app.router.add_get(base + "/{instance_id}", self._get_instance)
        app.router.add_get(base + "/{instance_id}/step", self._get_step_output)
        add_write_routes(app, base, self)
        add_workflow_routes(app, self)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Start serving; return the base URL (``http://127.0.0.1:<port>/client/v4``)."""
        if self._runner is not None:
            raise RuntimeError("the fake API is already serving")
        runner = web.AppRunner(self.make_app(), access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.base_url = f"http://{host}:{runner.addresses[0][1]}{API_PREFIX}"
        return self.base_url

    async def aclose(self) -> None:
        """Stop serving (what was registered and recorded stays)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    @asynccontextmanager
    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
        """Run the fake API; yields its base URL (``http://127.0.0.1:<port>/client/v4``)."""
        url = await self.start(host, port)
        try:
            yield url
        finally:
            await self.aclose()

    def session(self, **overrides: Any) -> WorkflowsSession:
        """A :class:`WorkflowsSession` bound to this running fake API.

        Its token (unless ``api_email``/``api_key`` are given), account and base URL,
        and no client-side rate limit (the fake has no quota unless :meth:`set_ratelimit`
        sets one); ``overrides`` are any other session arguments (``max_retries=0``,
        ``timeout=0.2``...). Close it (``async with``) when done.
        """
        if self.base_url is None:
            raise RuntimeError("the fake API is not serving: start it first")
        if "api_key" not in overrides and "api_email" not in overrides:
            overrides.setdefault("api_token", self.api_token)
        overrides.setdefault("account_id", self.account_id)
        overrides.setdefault("rate_limit", None)
        overrides.setdefault("base_url", self.base_url)
        return WorkflowsSession(**overrides)

    # -- faults on the wire ---------------------------------------------------------

    @web.middleware
    async def _inject_faults(
        self, request: web.Request, handler: _Handler
    ) -> web.StreamResponse:
        """Draw a fault for the request; the handler records it and ``_check`` answers it."""
        fault = self._faults.draw()
        if fault is None:
            return await handler(request)
        request[_FAULT] = fault
        self.injected[fault.label] += 1
        if isinstance(fault, Delay):
            await wait_unless_gone(request, fault.seconds)
        resp = await handler(request)
        match fault:
            case Reset() | DropAnswer():
                reset_connection(request)
            case BodyFault() if isinstance(resp, web.Response) and not resp.prepared:
                return await self._spoil(request, resp, fault)
        return resp

    async def _spoil(
        self, request: web.Request, resp: web.Response, fault: BodyFault
    ) -> web.StreamResponse:
        """Send a ready answer (JSON or an error envelope) again, spoiled by ``fault``."""
        body = resp.body if isinstance(resp.body, bytes) else b""
        headers = {
            k: v for k, v in resp.headers.items()
            if k.lower() not in ("content-length", "content-type")
        }

        async def whole() -> AsyncIterator[bytes]:
            yield body

        return await send_body(
            request, resp.status, headers, resp.content_type, whole(), len(body), fault
        )

    def _canned(self, fault: Fault) -> web.Response | None:
        """The answer a fault gives instead of the real one, if it gives one."""
        match fault:
            case Answer(status=status, body=body, headers=headers, content_type=ctype):
                return web.Response(
                    status=status, body=body, content_type=ctype,
                    headers={**self._headers(), **headers},
                )
            case Truncate(status=int(status)):
                return self._json(status, fake_error(status))
            case Reset():
                # An empty shell: the middleware drops the connection before it goes
                # out, and no handler gets to stream anything first.
                return web.Response(headers=self._headers())
        return None

    # -- handlers ------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        headers = {"cf-ray": f"{next(self._rays):016x}-FAKE"}
        if self._quota is not None:
            # Every answer counts one request against the simulated quota.
            self.over_quota += self._quota.take(headers)
        return headers

    def _json(self, status: int, body: bytes) -> web.Response:
        return web.Response(
            status=status, body=body, content_type="application/json", headers=self._headers()
        )

    def _admit(self, request: web.Request) -> web.StreamResponse | None:
        """Record the request; then an injected fault's answer, credentials, the account.

        None lets the handler answer for real.
        """
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
        canned = None if fault is None else self._canned(fault)
        if canned is not None:
            return canned
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

    async def _list_instances(self, request: web.Request) -> web.StreamResponse:
        refused = self._admit(request)
        if refused is not None:
            return refused
        workflow = request.match_info["workflow_name"]
        entries = {
            instance_id: summarise(workflow, instance_id, result)
            for (name, instance_id), result in self._instances.items()
            if name == workflow and not isinstance(result, bytes)
        }
        for (name, instance_id), summary in self._summaries.items():
            if name == workflow:
                entries[instance_id] = summary
        try:
            page, info = listing_page(entries.values(), request.query, self.default_per_page)
        except ValueError as exc:
            return self._json(400, envelope_error(10002, str(exc)))
        return self._json(200, envelope(page, result_info=info))

    async def _get_instance(self, request: web.Request) -> web.StreamResponse:
        refused = self._admit(request)
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
        return self._json(200, envelope(result))

    async def _get_step_output(self, request: web.Request) -> web.StreamResponse:
        refused = self._admit(request)
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
            fault = request.get(_FAULT)
            return await send_body(
                request, 200, self._headers(), "application/octet-stream",
                found.chunks(), found.size, fault if isinstance(fault, BodyFault) else None,
            )
        return self._json(200, envelope(found))
