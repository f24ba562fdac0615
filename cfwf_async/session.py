"""WorkflowsSession: the one place that owns aiohttp and does I/O."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping
from contextlib import aclosing
from datetime import datetime
from typing import Final, Self, TypeVar

import aiohttp
import anyio
from yarl import URL

from . import _protocol as proto
from . import _transport as transport
from . import errors
from ._control import ControlMixin
from ._resource import AsyncResource
from ._retry import RetryBudget, RetryPolicy, clamp_server_wait
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
from .listing import InstanceListing
from .models import Instance, StepOutput
from .ratelimit import Limiter, RateLimit
from .streaming import StepStream

__all__ = ["WorkflowsSession"]

logger = logging.getLogger("cfwf_async")

T = TypeVar("T")


class _Default:
    """Marks an argument left at its default (so ``None`` can mean "disabled")."""

    def __repr__(self) -> str:
        return "<default>"


_DEFAULT: Final = _Default()
#: How much longer each watch_instance poll waits than the one before.
_POLL_BACKOFF: Final = 1.25
#: The default cap on a JSON answer's decoded size.
_MAX_RESPONSE_BYTES: Final = 64 * 1024 * 1024


def _env_credentials(
    api_token: str | None, api_email: str | None, api_key: str | None
) -> tuple[str | None, str | None, str | None]:
    """The credentials given, or else those of the environment (a token first)."""
    if api_token is None and api_email is None and api_key is None:
        env = os.environ
        api_token = env.get("CLOUDFLARE_API_TOKEN") or None
        if api_token is None:
            api_email = env.get("CLOUDFLARE_EMAIL") or None
            api_key = env.get("CLOUDFLARE_API_KEY") or None
    return api_token, api_email, api_key


class WorkflowsSession(ControlMixin, WorkflowsMixin, AsyncResource):
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
    ) -> None:
        api_token, api_email, api_key = _env_credentials(api_token, api_email, api_key)
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
        self._budget: RetryBudget | None = (
            RetryBudget() if isinstance(retry_budget, _Default) else retry_budget
        )
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
        self._headers: Final = transport.request_headers(headers, f"cfwf_async/{__version__}")
        self._sender: Final = transport.Sender(
            headers=None if self._owns_http else self._headers,
            timeout=self.timeout,
            max_bytes=self.max_response_bytes,
            gate=self._gate,
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
        http, self._http = self._http, None
        if http is not None and self._owns_http and not http.closed:
            await http.close()

    @property
    def closed(self) -> bool:
        return self._closed

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
    ) -> Instance:
        """Status, timing and step log of one instance.

        ``order`` is ``"asc"`` (oldest step first, the API's default) or ``"desc"``;
        ``simple=True`` skips the step details (``steps`` is empty, ``step_count`` set)::

            inst = await session.get_instance("checkout", "order-981", order="desc")
            for step in inst.steps:
                print(step.type, step.name)
        """
        account = self._account(account_id)
        proto.check_workflow_name(workflow_name)
        proto.check_instance_id(instance_id)
        query: dict[str, str] = {}
        if order is not None:
            query["order"] = proto.check_choice("order", order, proto.ORDERS)
        if simple is not None:
            if not isinstance(simple, bool):
                raise TypeError(f"simple must be a bool, got {type(simple).__name__}")
            query["simple"] = "true" if simple else "false"
        path = proto.instance_path(account, workflow_name, instance_id)
        return await self._call(path, query, proto.decode_instance)

    async def get_step_output(
        self,
        workflow_name: str,
        instance_id: str,
        *,
        name: str,
        type: str = "step",
        attempt: int | None = None,
        account_id: str | None = None,
    ) -> StepOutput | StepStream:
        """The full output of one step: a :class:`StepOutput` or a :class:`StepStream`.

        ``name`` is the exact step name from the instance log (``"fetch page-1"``),
        ``type`` is ``"step"`` or ``"waitForEvent"``, ``attempt`` picks one attempt
        (1-based). A step that returned a ``ReadableStream`` comes back as a
        :class:`StepStream` that must be consumed or closed::

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
        path = proto.instance_path(account, workflow_name, instance_id) + "/step"
        return await self._call(
            path, query, proto.decode_step_output, on_stream=self._stream
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
            return await self._call(path, page_query, proto.decode_instance_page)

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
        return self._watch(workflow_name, instance_id, interval, ceiling, simple, account)

    async def _watch(
        self,
        workflow_name: str,
        instance_id: str,
        interval: float,
        ceiling: float,
        simple: bool,
        account: str,
    ) -> AsyncGenerator[Instance, None]:
        while True:
            polled = await self.get_instance(
                workflow_name, instance_id, simple=simple, account_id=account
            )
            yield polled
            if polled.is_terminal:
                return
            await anyio.sleep(interval)
            interval = min(interval * _POLL_BACKOFF, ceiling)

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
        against the account's quota.

        ``timeout`` (seconds, None for no limit) bounds the whole wait, final fetch
        included; when it runs out the builtin :class:`TimeoutError` is raised. Errors
        of a poll (for example :class:`NotFoundError`) propagate after the session's
        retries. Cancelling the caller leaves nothing behind::

            inst = await session.wait_for_instance("checkout", "order-981", timeout=600)
            if inst.status == "errored":
                print(inst.error)
        """
        deadline = proto.check_timeout("timeout", timeout, allow_none=True)
        polls = self.watch_instance(
            workflow_name,
            instance_id,
            poll_interval=poll_interval,
            max_poll_interval=max_poll_interval,
            account_id=account_id,
        )
        status = "unknown"
        with anyio.move_on_after(deadline):
            async with aclosing(polls):
                async for polled in polls:
                    status = polled.status
                    if polled.is_terminal:
                        return await self.get_instance(
                            workflow_name, instance_id, account_id=account_id
                        )
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

    async def _call(
        self,
        path: str,
        query: Mapping[str, str],
        decode: transport.Decode[T],
        *,
        on_stream: Callable[[aiohttp.ClientResponse, str | None], T] | None = None,
    ) -> T:
        """One API call: limiter, attempt, classify, and retries per the policy.

        ``decode`` turns a 2xx JSON body into the result; ``on_stream``, when given,
        takes over a 2xx ``application/octet-stream`` answer instead.
        """
        http = self._client()
        target = self.base_url + path
        if query:
            target += "?" + proto.query_string(query)
        request = transport.Request(
            path, URL(target, encoded=True), decode, on_stream,
            timeout=self.timeout, closed=self._is_closed,
        )
        retry = 0
        spent = 0  # what the latest retry took from the budget
        while True:
            if self._closed:  # closed while this call waited: never retried
                raise errors.APIConnectionError(f"GET {path}: the session was closed")
            # Idle fast path: with no limiter and no 429 pause in force there is nothing
            # to wait for, so skip the coroutine round trips.
            if not self._gate.idle:
                await self._gate.wait_turn()
            try:
                result = await self._sender.attempt(http, request, retry + 1)
            except errors.WorkflowsError as exc:
                retry += 1
                delay = self._retry_delay(retry, exc, path)
                if delay is None:
                    raise
                spent = delay[1]
                await anyio.sleep(delay[0])
                continue
            if self._budget is not None:
                self._budget.refund(spent)
            return result

    def _retry_delay(
        self, retry: int, exc: errors.WorkflowsError, path: str
    ) -> tuple[float, int] | None:
        """The wait before retry ``retry`` (at most MAX_SERVER_WAIT) and its cost, or None."""
        delay = self._policy.delay(retry, exc)
        if delay is None or self._closed:
            return None
        delay = clamp_server_wait(delay)
        spent = 0
        if self._budget is not None:
            spent = self._budget.try_spend(exc)
            if not spent:
                if logger.isEnabledFor(logging.DEBUG):
                    logger.debug("GET %s not retried: the retry budget is empty", path)
                return None
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("GET %s retrying in %.3f s after %s", path, delay, type(exc).__name__)
        return delay, spent
