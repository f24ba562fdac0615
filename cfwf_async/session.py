"""WorkflowsSession: the one place that owns aiohttp and does I/O."""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping
from datetime import datetime
from typing import Final, Self, TypeVar

import aiohttp

from . import _protocol as proto
from . import _transport as transport
from . import _wire as wire
from ._calls import Caller, env_credentials
from ._reads import WAIT_TARGET, Reads, poll
from ._resource import AsyncResource
from ._retry import RetryBudget, RetryPolicy
from ._version import __version__
from ._workflows import WorkflowsMixin
from .batch import (
    Batch,
    BatchProgress,
    StepRef,
    StreamedOutput,
    instances_batch,
    step_outputs_batch,
)
from .cache import Cache, check_max_age
from .listing import InstanceListing
from .models import Instance, StepOutput
from .ratelimit import Limiter, RateLimit
from .streaming import StepStream

__all__ = ["WorkflowsSession"]

T = TypeVar("T")


class _Default:
    """Marks an argument left at its default (so ``None`` can mean "disabled")."""

    def __repr__(self) -> str:
        return "<default>"


_DEFAULT: Final = _Default()
#: The default cap on a JSON answer's decoded size.
_MAX_RESPONSE_BYTES: Final = 64 * 1024 * 1024


class WorkflowsSession(WorkflowsMixin, AsyncResource):
    """An async client for Cloudflare Workflows' instance and step-output endpoints.

    Every argument is optional where the environment can supply it::

        async with WorkflowsSession() as session:  # CLOUDFLARE_API_TOKEN, CLOUDFLARE_ACCOUNT_ID
            inst = await session.get_instance("checkout", "order-981")
            print(inst.status, [s.name for s in inst.steps])

    Arguments (all keyword-only):

    ``api_token``
        An API token (``Authorization: Bearer``); else ``CLOUDFLARE_API_TOKEN``.
    ``api_email``, ``api_key``
        The legacy global key pair; else ``CLOUDFLARE_EMAIL`` / ``CLOUDFLARE_API_KEY``.
    ``account_id``
        Default account for every call; else ``CLOUDFLARE_ACCOUNT_ID``. Each call may
        override it.
    ``base_url``
        Else ``CLOUDFLARE_BASE_URL``, else ``https://api.cloudflare.com/client/v4``.
        Plain ``http://`` is refused unless the host is loopback or
        ``allow_insecure_http=True``.
    ``timeout``
        Seconds for one attempt that gets a JSON answer (connect, headers and the whole
        body). For a streamed output it bounds connecting and each wait for the next
        chunk, never the whole download.
    ``max_response_bytes``
        The largest decoded JSON answer (success or error body) accepted, 64 MiB by
        default; a larger one raises :class:`OutputTooLargeError` (not retried) having
        held at most about that much. Streamed outputs are not bounded by it.
    ``max_retries``
        Extra attempts after connection errors, timeouts, 408, 409, 429 and 5xx.
    ``retry_after_cap``
        No call waits longer than this because of what a server said (a 429's
        ``Retry-After``, a pause or an exhausted quota known to a shared limiter): it
        raises :class:`RateLimitError` at once, with ``retry_after`` set, instead.
    ``retry_budget``
        A :class:`RetryBudget` shared by every call of the session, so that retries stop
        multiplying load when most calls fail; ``None`` disables it.
    ``http_session``
        A caller's :class:`aiohttp.ClientSession`: used, never closed by us.
    ``rate_limit``
        A :class:`~cfwf_async.ratelimit.Limiter` shared by every call of the session;
        defaults to a fresh ``RateLimit(1200, 300.0)`` (Cloudflare's account quota).
        ``None`` disables client-side limiting (a 429 still pauses the session).
    ``coalesce``
        Identical reads in flight at once (same account, path and query) share one
        request, which alone takes a limiter slot and retries (a stream is never
        shared); on by default.
    ``cache``
        A :class:`~cfwf_async.cache.Cache` (:class:`MemoryCache`,
        :class:`~cfwf_async.redis.RedisCache`) reused by ``get_instance`` and
        ``get_step_output``; off by default. The caller closes it.
    """

    def __init__(
        self,
        *,
        api_token: str | None = None,
        api_email: str | None = None,
        api_key: str | None = None,
        account_id: str | None = None,
        base_url: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 2,
        http_session: aiohttp.ClientSession | None = None,
        rate_limit: Limiter | _Default | None = _DEFAULT,
        retry_after_cap: float = 60.0,
        retry_budget: RetryBudget | _Default | None = _DEFAULT,
        allow_insecure_http: bool = False,
        max_response_bytes: int = _MAX_RESPONSE_BYTES,
        coalesce: bool = True,
        cache: Cache | None = None,
    ) -> None:
        api_token, api_email, api_key = env_credentials(api_token, api_email, api_key)
        headers = proto.auth_headers(api_token=api_token, api_email=api_email, api_key=api_key)
        self._auth_kind: Final = "token" if api_token else "global key"
        if account_id is None:
            account_id = os.environ.get("CLOUDFLARE_ACCOUNT_ID") or None
        self.account_id = None if account_id is None else proto.check_account_id(account_id)
        if base_url is None:
            base_url = os.environ.get("CLOUDFLARE_BASE_URL") or proto.DEFAULT_BASE_URL
        self.base_url: Final[str] = proto.check_base_url(
            base_url, allow_insecure_http=allow_insecure_http
        )
        self.timeout: Final[float] = proto.check_timeout("timeout", timeout)
        proto.check_int("max_retries", max_retries)
        self.max_response_bytes: Final[int] = proto.check_int(
            "max_response_bytes", max_response_bytes, minimum=1
        )
        cap = proto.check_timeout("retry_after_cap", retry_after_cap)
        self._policy: Final = RetryPolicy(max_retries, retry_after_cap=cap)
        self._budget = RetryBudget() if isinstance(retry_budget, _Default) else retry_budget
        if isinstance(rate_limit, _Default):
            rate_limit = RateLimit(1200, 300.0)
        if rate_limit is not None and not isinstance(rate_limit, Limiter):
            raise TypeError("rate_limit must be a RateLimit, a Limiter or None")
        self.rate_limit: Final[Limiter | None] = rate_limit
        self._gate: Final = transport.Gate(rate_limit, cap)
        if http_session is not None and not isinstance(http_session, aiohttp.ClientSession):
            raise TypeError("http_session must be an aiohttp.ClientSession")
        self._http = http_session
        self._owns_http: Final = http_session is None
        self._closed = False
        self._reads: Final = Reads(self.base_url, coalesce=coalesce, cache=cache)
        self._headers: Final = transport.request_headers(headers, f"cfwf_async/{__version__}")
        self._sender: Final = transport.Sender(
            headers=None if self._owns_http else self._headers, timeout=self.timeout,
            max_bytes=self.max_response_bytes, gate=self._gate, own_http=self._owns_http,
        )
        self._caller = Caller(
            self.base_url, timeout=self.timeout, policy=self._policy, budget=self._budget,
            gate=self._gate, sender=self._sender, client=self._client, closed=self._is_closed,
        )

    def __repr__(self) -> str:
        return (
            f"WorkflowsSession(account_id={self.account_id!r}, base_url={self.base_url!r}, "
            f"auth={self._auth_kind!r})"
        )

    # -- lifetime ------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._client()
        return await super().__aenter__()

    async def aclose(self) -> None:
        """Close the HTTP session if this object created it (a caller's stays open).

        Calls still in flight fail with :class:`APIConnectionError` and are not
        retried; a call made afterwards raises :class:`RuntimeError`.
        """
        self._closed = True
        await self._reads.aclose()
        http, self._http = self._http, None
        if http is not None and self._owns_http and not http.closed:
            await http.close()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def cache(self) -> Cache | None:
        """The cache given to the constructor (never closed by the session), or None."""
        return self._reads.cache

    def _client(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("this WorkflowsSession is closed")
        http = self._http
        if http is None:
            # Our own session carries our headers, so a request does not merge a dict
            # into the defaults every time (see _transport.Sender).
            http = self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=100, ttl_dns_cache=300),
                auto_decompress=False,
                headers=self._headers,
            )
        return http

    # -- public calls ------------------------------------------------------------

    async def get_instance(
        self,
        workflow_name: str,
        instance_id: str,
        *,
        order: str | None = None,
        simple: bool | None = None,
        account_id: str | None = None,
        max_age: float | None = None,
    ) -> Instance:
        """Status, timing and step log of one instance.

        ``order`` is ``"asc"`` (oldest step first, the API's default) or ``"desc"``;
        ``simple=True`` skips the step details (``steps`` is empty, ``step_count`` set).
        ``max_age`` (seconds) bounds how old a cached or shared answer may be
        (``0``: always a fresh request; None: the cache's ``ttl``)::

            inst = await session.get_instance("checkout", "order-981", order="desc")
            for step in inst.steps:
                print(step.type, step.name)
        """
        path, query = self._instance_request(
            workflow_name, instance_id, order, simple, account_id
        )
        return await self._read(path, path, query, proto.decode_instance, Instance, max_age)

    async def get_instance_json(
        self,
        workflow_name: str,
        instance_id: str,
        *,
        order: str | None = None,
        simple: bool | None = None,
        account_id: str | None = None,
    ) -> bytes:
        """The API's own ``result`` object of :meth:`get_instance`, as JSON bytes.

        For a tool that passes the answer on (``cfwf describe --json`` prints it): null
        fields and fields this version does not know stay as sent. The answer is still
        checked as an :class:`Instance`, so a broken one raises what :meth:`get_instance`
        would. Always a request of its own: never cached, never shared.
        """
        path, query = self._instance_request(
            workflow_name, instance_id, order, simple, account_id
        )
        return await self._caller.call(path, query, wire.decode_instance_json)

    def _instance_request(
        self, workflow_name: str, instance_id: str, order: str | None, simple: bool | None,
        account_id: str | None,
    ) -> tuple[str, dict[str, str]]:
        """The checked path and query of a ``get_instance`` request."""
        account = self._account(account_id)
        proto.check_workflow_name(workflow_name)
        proto.check_instance_id(instance_id)
        query = proto.instance_query(order, simple)
        return proto.instance_path(account, workflow_name, instance_id), query

    async def get_step_output(
        self,
        workflow_name: str,
        instance_id: str,
        *,
        name: str,
        type: str = "step",
        attempt: int | None = None,
        account_id: str | None = None,
        max_age: float | None = None,
    ) -> StepOutput | StepStream:
        """The full output of one step: a :class:`StepOutput` or a :class:`StepStream`.

        ``name`` is the exact step name from the instance log (``"fetch page-1"``),
        ``type`` is ``"step"`` or ``"waitForEvent"``, ``attempt`` picks one attempt
        (1-based), ``max_age`` as for :meth:`get_instance`. A step that returned a
        ``ReadableStream`` comes back as a :class:`StepStream` (never cached or shared)
        that must be consumed or closed::

            out = await session.get_step_output("etl", "run-7", name="export-1")
            if isinstance(out, StepStream):
                async with out:
                    await out.save("export.bin")
            else:
                print(out.status, out.output)
        """
        account = self._account(account_id)
        proto.check_workflow_name(workflow_name)
        proto.check_instance_id(instance_id)
        query = {
            "name": proto.check_str("name", name),
            "type": proto.check_choice("type", type, proto.STEP_TYPES),
        }
        if attempt is not None:
            query["attempt"] = str(proto.check_positive_int("attempt", attempt))
        scope = proto.instance_path(account, workflow_name, instance_id)
        return await self._read(
            scope + "/step", scope, query, proto.decode_step_output, StepOutput, max_age,
            on_stream=self._stream,
        )

    def list_instances(
        self,
        workflow_name: str,
        *,
        status: str | None = None,
        date_start: datetime | None = None,
        date_end: datetime | None = None,
        direction: str | None = None,
        per_page: int | None = None,
        account_id: str | None = None,
    ) -> InstanceListing:
        """A workflow's instances as an async iterator of :class:`InstanceSummary`.

        No ``await`` before ``async for``: pages are requested lazily, each through the
        session's limiter and retries, following the API's cursor until a page has none.
        ``status`` is one of :data:`INSTANCE_STATUSES`; ``date_start`` / ``date_end`` are
        timezone-aware datetimes (sent in UTC); ``direction`` is ``"asc"`` or ``"desc"``;
        ``per_page`` the page size. Arguments are checked here, before any request::

            since = datetime(2026, 11, 16, tzinfo=UTC)
            async for s in session.list_instances("checkout", status="errored",
                                                  date_start=since):
                print(s.id, s.created_on, s.ended_on)
        """
        account = self._account(account_id)
        proto.check_workflow_name(workflow_name)
        query = proto.listing_query(
            status=status,
            date_start=date_start,
            date_end=date_end,
            direction=direction,
            per_page=per_page,
        )
        path = proto.instances_path(account, workflow_name)

        async def fetch(page_query: Mapping[str, str]) -> proto.InstancePage:
            return await self._read(path, path, page_query, proto.decode_instance_page)

        return InstanceListing(fetch, query)

    # -- waiting and batches -------------------------------------------------------

    def watch_instance(
        self,
        workflow_name: str,
        instance_id: str,
        *,
        poll_interval: float = 1.0,
        max_poll_interval: float = 30.0,
        simple: bool = True,
        account_id: str | None = None,
    ) -> AsyncGenerator[Instance, None]:
        """Poll an instance, yielding every :class:`Instance` seen, until it ends.

        Each poll is :meth:`get_instance` with ``simple`` (by default no step log, the
        cheapest answer); the first waits nothing, the next ``poll_interval`` seconds,
        each later one a quarter longer up to ``max_poll_interval`` (pass the same value
        for a fixed pace). The iterator ends after yielding the first instance whose
        status is terminal (``complete``, ``errored``, ``terminated``). Errors of a poll
        propagate after the session's retries. Arguments are checked here, before any
        request::

            async for inst in session.watch_instance("checkout", "order-981"):
                print(inst.status)
        """
        account = self._account(account_id)
        proto.check_workflow_name(workflow_name)
        proto.check_instance_id(instance_id)
        interval = proto.check_timeout("poll_interval", poll_interval)
        ceiling = max(interval, proto.check_timeout("max_poll_interval", max_poll_interval))
        if not isinstance(simple, bool):
            raise TypeError(f"simple must be a bool, got {type(simple).__name__}")
        return poll(
            lambda: self.get_instance(
                workflow_name, instance_id, simple=simple, account_id=account
            ),
            interval,
            ceiling,
        )

    async def wait_for_instance(
        self,
        workflow_name: str,
        instance_id: str,
        *,
        # A deadline argument reads better here than asking every caller to wrap the
        # call in a cancel scope.
        timeout: float | None = None,  # noqa: ASYNC109
        poll_interval: float = 1.0,
        max_poll_interval: float = 30.0,
        account_id: str | None = None,
    ) -> Instance:
        """Wait until an instance is ``complete``, ``errored`` or ``terminated``; return it.

        Polls cheaply (``simple=True``, no step log) through :meth:`watch_instance`,
        first ``poll_interval`` seconds apart, then a quarter longer each time up to
        ``max_poll_interval``; once the status is terminal, fetches and returns the
        full :class:`Instance`, steps included. Each poll is an API call and counts
        against the account's quota; with coalescing on, every wait on one instance
        shares one poll loop (at the pace of the wait that started it).

        ``timeout`` (seconds, None for no limit) bounds the whole wait, final fetch
        included; when it runs out the builtin :class:`TimeoutError` is raised. Errors
        of a poll (for example :class:`NotFoundError`) propagate after the session's
        retries. Cancelling the caller leaves nothing behind::

            inst = await session.wait_for_instance("checkout", "order-981", timeout=600)
            if inst.status == "errored":
                print(inst.error)
        """
        deadline = proto.check_timeout("timeout", timeout, allow_none=True)
        polls = self.watch_instance(  # checks the arguments; iterated by one waiter only
            workflow_name,
            instance_id,
            poll_interval=poll_interval,
            max_poll_interval=max_poll_interval,
            account_id=account_id,
        )
        account = self._account(account_id)
        scope = proto.instance_path(account, workflow_name, instance_id)
        found, status = await self._reads.wait(
            self._reads.key(scope, scope, {})._replace(target=WAIT_TARGET),
            polls,
            lambda: self.get_instance(workflow_name, instance_id, account_id=account),
            deadline,
        )
        if found is not None:
            return found
        raise TimeoutError(
            f"instance {instance_id!r} of workflow {workflow_name!r} did not finish within "
            f"{deadline:g} s (last status: {status})"
        )

    def get_instances(
        self,
        workflow_name: str,
        instance_ids: Iterable[str],
        *,
        concurrency: int = 16,
        order: str | None = None,
        simple: bool | None = None,
        account_id: str | None = None,
        on_progress: Callable[[BatchProgress], object] | None = None,
    ) -> Batch[str, Instance]:
        """Fetch many instances of one workflow concurrently, as a :class:`Batch`.

        Yields one :class:`BatchResult` per id (duplicates included) as the answers
        arrive, each with the :class:`Instance` or the error for that id; one failure
        never stops the others. At most ``concurrency`` requests are in flight, and all
        of them go through the session's limiter and retries. ``order`` and ``simple``
        are passed to every :meth:`get_instance`. Arguments and every id are checked
        here, before any request::

            async with session.get_instances("checkout", ids, concurrency=32) as batch:
                async for result in batch:
                    if result.ok:
                        print(result.key, result.value.status)
                    else:
                        print(result.key, "failed:", result.error)

        ``on_progress`` receives a :class:`BatchProgress` (``done``, ``failed``,
        ``total``) on entry and after each result.
        """
        account = self._account(account_id)
        proto.check_workflow_name(workflow_name)
        if order is not None:
            proto.check_choice("order", order, proto.ORDERS)
        if simple is not None and not isinstance(simple, bool):
            raise TypeError(f"simple must be a bool, got {type(simple).__name__}")

        async def fetch_instance(instance_id: str) -> Instance:
            return await self.get_instance(
                workflow_name, instance_id, order=order, simple=simple, account_id=account
            )

        return instances_batch(
            fetch_instance, instance_ids, concurrency=concurrency, on_progress=on_progress
        )

    def get_step_outputs(
        self,
        workflow_name: str,
        instance_id: str,
        *,
        steps: Iterable[StepRef | str] | None = None,
        concurrency: int = 8,
        stream_dir: str | os.PathLike[str] | None = None,
        max_stream_bytes: int | None = None,
        account_id: str | None = None,
        on_progress: Callable[[BatchProgress], object] | None = None,
    ) -> Batch[StepRef, StepOutput | StreamedOutput]:
        """Fetch the full output of many steps of one instance concurrently.

        With ``steps=None`` the instance's log is fetched on entering the batch and
        every ``step.do`` and ``waitForEvent`` step in it is fetched (once each, in any
        order); or pass the steps yourself, as :class:`StepRef` or bare ``step.do``
        names. Each :class:`BatchResult` is keyed by its :class:`StepRef` and holds a
        :class:`StepOutput` (JSON) or a :class:`StreamedOutput` (a streamed output,
        already read to the end, its connection released).

        Streamed outputs are never held open or buffered without a bound:
        ``stream_dir`` saves each to ``<stream_dir>/<encoded step name>.bin`` (created
        if missing; a name over 240 bytes is cut and gets a hash, and a step listed
        twice is fetched once, both results sharing it); ``max_stream_bytes`` alone
        reads each into memory up to that cap (and caps the saved files when given
        with ``stream_dir``). A streamed output over the cap, or any streamed output
        when neither is given, is an :class:`OutputTooLargeError` result for that
        step::

            async with session.get_step_outputs("etl", "run-7", stream_dir="out") as batch:
                async for result in batch:
                    value = result.unwrap()
                    if isinstance(value, StreamedOutput):
                        print(result.key.name, "saved to", value.path)
                    else:
                        print(result.key.name, value.output)
        """
        account = self._account(account_id)
        proto.check_workflow_name(workflow_name)
        proto.check_instance_id(instance_id)

        async def fetch_output(ref: StepRef) -> StepOutput | StepStream:
            return await self.get_step_output(
                workflow_name, instance_id, name=ref.name, type=ref.type, account_id=account
            )

        async def fetch_log() -> Instance:
            return await self.get_instance(workflow_name, instance_id, account_id=account)

        return step_outputs_batch(
            fetch_output,
            fetch_log,
            steps=steps,
            concurrency=concurrency,
            stream_dir=stream_dir,
            max_stream_bytes=max_stream_bytes,
            on_progress=on_progress,
        )

    # -- machinery -----------------------------------------------------------------

    def _account(self, account_id: str | None) -> str:
        return proto.check_account_id(account_id if account_id is not None else self.account_id)

    def _stream(self, resp: aiohttp.ClientResponse, ray: str | None) -> StepStream:
        return StepStream(resp, cf_ray=ray, timeout=self.timeout)

    def _is_closed(self) -> bool:
        return self._closed

    async def _read(
        self,
        path: str,
        scope_path: str,
        query: Mapping[str, str],
        decode: transport.Decode[T],
        kind: type[Instance | StepOutput] | None = None,
        max_age: float | None = None,
        *,
        on_stream: Callable[[aiohttp.ClientResponse, str | None], T] | None = None,
    ) -> T:
        """A read through the cache and coalescer (see ``_reads``), else the request
        loop: ``decode`` turns a 2xx JSON body into the result; ``on_stream``, when given,
        takes over a 2xx ``application/octet-stream`` answer instead."""
        max_age = check_max_age(max_age)
        return await self._reads.read(
            self._reads.key(scope_path, path, query),
            path,
            lambda: self._caller.call(path, query, decode, on_stream),
            kind,
            max_age=max_age,
        )

    def _note_write(self, account: str, workflow_name: str, instance_id: str) -> None:
        """Called after every write to an instance, whatever its outcome.

        Drops the instance's cache entries before any later read of it looks there,
        and no later read joins a request that began before the write.
        """
        self._reads.note_write(
            proto.instance_path(account, workflow_name, instance_id),
            proto.instances_path(account, workflow_name),
        )
