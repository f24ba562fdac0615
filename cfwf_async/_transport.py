"""The one seam between the SDK and aiohttp's (and asyncio's) internals: a release that
changes them breaks this module only (``tests/test_transport.py`` says what broke).

* :func:`translate` / :func:`mapped` turn aiohttp, ``OSError`` and timeout failures
  into the SDK's errors, for the session's attempts and for a stream's reads alike,
  and never chain an exception that carries the request's headers (credentials);
* :class:`BodyDecoder` decodes ``Content-Encoding`` itself (requests are sent with
  ``auto_decompress=False``): aiohttp's decoder ends a gzip body that stops mid-member
  as if it were complete, and inflates a whole chunk at once however large it grows;
* :class:`Sender` sends one request (any method, an optional JSON body) and classifies
  its answer, reading JSON bodies with :func:`read_body` up to a decoded-size cap;
  :func:`never_sent` tells a failure that provably left nothing applied; :class:`Gate`
  decides when a request may leave;
* :class:`Watchdog` and :func:`shrink_reads` / :func:`restore_reads` (defined in
  :mod:`cfwf_async._downloads`, re-exported here) work around two behaviours of the
  transport under a long download.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Final, Generic, NoReturn, Protocol, TypeVar

import aiohttp
import anyio
from yarl import URL

from . import _protocol as proto
from . import errors
from ._downloads import READ_SIZE, Watchdog, restore_reads, shrink_reads
from ._retry import clamp_server_wait
from .ratelimit import Limiter

__all__ = [
    "ACCEPT_ENCODING",
    "READ_SIZE",
    "BodyDecoder",
    "BodyError",
    "Decode",
    "ErrorMap",
    "Gate",
    "Request",
    "Sender",
    "Watchdog",
    "content_encoding",
    "mapped",
    "never_sent",
    "read_body",
    "request_headers",
    "restore_reads",
    "shrink_reads",
    "translate",
]

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

logger = logging.getLogger("cfwf_async")

#: The encodings :class:`BodyDecoder` handles, sent as ``Accept-Encoding``.
ACCEPT_ENCODING: Final = "gzip, deflate"

_GZIP_MAGIC: Final = b"\x1f\x8b"
_OCTET_STREAM: Final = "application/octet-stream"

#: How many bytes asyncio's plain-socket transport asks recv() for while a stream is
#: read, and the most a co----------------------------------------------------
# Errors


class BodyError(Exception):
    """A body that cannot be decoded: cut short, corrupt, or an unknown encoding."""


def _safe_reason(exc: BaseException) -> str:
    """A transport error's text, which names host and port but never headers."""
    text = str(exc)
    return text if len(text) < 300 else text[:300] + "..."


def _carries_request(exc: BaseException) -> bool:
    """True if ``exc`` or anything it chains holds the request (and so its headers)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        item = todo.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, aiohttp.ClientResponseError) or hasattr(item, "request_info"):
            return True
        todo += (item.__cause__, item.__context__)
    return False


class ErrorMap:
    """How one caller names its failures; :func:`translate` does the mapping.

    ``where`` starts every message (``"GET /accounts/..."``, ``"the stream"``);
    ``timeout`` is the limit for the timeout message; ``broken`` builds the error for a
    body that broke off or does not decode (None: such a failure is a connection
    error); ``in_body`` says a :class:`aiohttp.ClientResponseError` is a protocol
    violation inside the body rather than a bad answer head; ``closed`` says the
    owner was closed under the call.
    """

    __slots__ = ("broken", "cf_ray", "closed", "in_body", "timeout", "where")

    def __init__(
        self,
        where: str,
        *,
        timeout: float | None,
        broken: Callable[[str], errors.WorkflowsError] | None = None,
        in_body: bool = False,
        closed: Callable[[], bool] | None = None,
        cf_ray: str | None = None,
    ) -> None:
        self.where = where
        self.timeout = timeout
        self.broken = broken
        self.in_body = in_body
        self.closed = closed
        self.cf_ray = cf_ray


def translate(exc: BaseException, how: ErrorMap) -> errors.WorkflowsError | None:
    """The SDK error for a transport failure, or None for anything else.

    Cancellation, the SDK's own errors and foreign exceptions are not translated. The
    result's ``__cause__`` is ``exc`` unless ``exc`` (or its chain) holds the request,
    whose headers carry the credentials; raise the result outside the ``except`` block
    (see :func:`mapped`) so that it does not chain ``exc`` as its context either.
    """
    failure: errors.WorkflowsError
    if isinstance(exc, errors.WorkflowsError) or not isinstance(exc, Exception):
        return None
    if how.closed is not None and how.closed():
        failure = errors.APIConnectionError(f"{how.where}: the session was closed")
    elif isinstance(exc, (TimeoutError, aiohttp.ServerTimeoutError)):
        limit = "" if how.timeout is None else f" after {how.timeout:g} s"
        failure = errors.APITimeoutError(f"{how.where} timed out{limit}", cf_ray=how.cf_ray)
    elif how.broken is not None and (
        isinstance(exc, (BodyError, aiohttp.ClientPayloadError))
        or (how.in_body and isinstance(exc, aiohttp.ClientResponseError))
    ):
        failure = how.broken(f"{type(exc).__name__}: {_safe_reason(exc)}")
    elif isinstance(exc, (aiohttp.ClientError, OSError, BodyError)):
        failure = errors.APIConnectionError(
            f"{how.where} failed: {type(exc).__name__}: {_safe_reason(exc)}", cf_ray=how.cf_ray
        )
    else:
        return None
    failure.__cause__ = None if _carries_request(exc) else exc
    return failure


async def mapped(awaitable: Awaitable[T], how: ErrorMap) -> T:
    """Await ``awaitable``, raising transport failures as the SDK's errors."""
    try:
        return await awaitable
    except BaseException as exc:
        failure = translate(exc, how)
        if failure is None:
            raise
    # Raised here, after the except block, so that the failure's __context__ is not
    # the transport exception (which may carry the request's headers).
    raise failure


# ---------------------------------------------------------------------------
# Content-Encoding


def content_encoding(response: aiohttp.ClientResponse) -> str | None:
    """The answer's ``Content-Encoding``, lower-cased, or None for an identity body."""
    encoding = response.headers.get("Content-Encoding", "").strip().lower()
    return None if encoding in ("", "identity") else encoding


class BodyDecoder:
    """Decodes a gzip or deflate body incrementally, with an end check and bounded output.

    :meth:`feed` hands over encoded bytes, :meth:`take` returns at most ``max_length``
    decoded bytes (empty when more input is needed), and :meth:`finish`, at the end of
    the body, raises :class:`BodyError` if the compressed stream did not end properly:
    a body cut short between HTTP-level boundaries is never a silent short read.
    Concatenated gzip members are decoded in turn; bytes after a deflate stream are an
    error. Inflating at most ``max_length`` bytes per call keeps a decompression bomb
    from ever being held in memory.
    """

    __slots__ = ("_gzip", "_inflater", "_pending", "encoding")

    def __init__(self, encoding: str) -> None:
        if encoding not in ("gzip", "x-gzip", "deflate"):
            raise BodyError(f"the answer uses an unsupported Content-Encoding {encoding!r}")
        self.encoding = encoding
        self._gzip = encoding != "deflate"
        self._inflater: zlib._Decompress | None = None
        self._pending = b""

    def _new_inflater(self, first: bytes) -> zlib._Decompress:
        if self._gzip:
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        # RFC 9110 deflate is zlib-wrapped, but some servers send a raw deflate stream
        # (a zlib header's low nibble is 8, "deflate").
        return zlib.decompressobj(zlib.MAX_WBITS if first[0] & 0x0F == 8 else -zlib.MAX_WBITS)

    def feed(self, data: bytes) -> None:
        self._pending = self._pending + data if self._pending else data

    def take(self, max_length: int) -> bytes:
        """Up to ``max_length`` (>= 1) decoded bytes; ``b""`` when more input is needed."""
        try:
            while self._pending:
                inflater = self._inflater
                if inflater is None or inflater.eof:
                    inflater = self._next_member()
                out = inflater.decompress(self._pending, max_length)
                self._pending = inflater.unconsumed_tail or inflater.unused_data
                if out:
                    return out
        except zlib.error as exc:
            raise BodyError(f"the {self.encoding} body is corrupt: {exc}") from None
        return b""

    def _next_member(self) -> zlib._Decompress:
        if self._inflater is not None and not (
            self._gzip and self._pending.startswith(_GZIP_MAGIC[: len(self._pending)])
        ):
            raise BodyError(f"bytes follow the end of the {self.encoding} stream")
        self._inflater = self._new_inflater(self._pending)
        return self._inflater

    def finish(self) -> None:
        """The body ended: raise :class:`BodyError` unless the encoded stream did too."""
        if self._pending or (self._inflater is not None and not self._inflater.eof):
            raise BodyError(
                f"the {self.encoding} body ended before its compressed stream did"
            )


async def read_body(
    response: aiohttp.ClientResponse, *, limit: int, what: str, cf_ray: str | None
) -> bytes:
    """The whole decoded body, holding at most about ``limit`` bytes.

    Raises :class:`BodyError` for a body that broke off or does not decode, and
    :class:`~cfwf_async.errors.OutputTooLargeError` as soon as the decoded body would
    exceed ``limit`` (the caller then closes the connection).
    """
    encoding = content_encoding(response)
    decoder = None if encoding is None else BodyDecoder(encoding)
    announced = response.content_length if decoder is None else None
    if announced is not None and announced > limit:
        raise _too_large(what, limit, announced, cf_ray)
    content = response.content
    if decoder is None and announced is not None:
        # The common answer: plain, of a known size within the limit; one read.
        try:
            return await content.readexactly(announced)
        except asyncio.IncompleteReadError as exc:
            raise BodyError(
                f"the body broke off after {len(exc.partial)} of {announced} bytes"
            ) from None
        except aiohttp.ClientPayloadError as exc:
            raise BodyError(f"the body broke off: {_safe_reason(exc)}") from exc
    buffer = bytearray()
    try:
        while raw := await content.readany():
            if decoder is None:
                buffer += raw
            else:
                decoder.feed(raw)
                while len(buffer) <= limit and (piece := decoder.take(limit + 1 - len(buffer))):
                    buffer += piece
            if len(buffer) > limit:
                raise _too_large(what, limit, announced, cf_ray)
    except aiohttp.ClientPayloadError as exc:
        raise BodyError(f"the body broke off: {_safe_reason(exc)}") from exc
    if decoder is not None:
        decoder.finish()
    return bytes(buffer)


def _too_large(
    what: str, limit: int, size: int | None, cf_ray: str | None
) -> errors.OutputTooLargeError:
    return errors.OutputTooLargeError(
        f"{what}: the answer is larger than max_response_bytes={limit}",
        size=size,
        limit=limit,
        cf_ray=cf_ray,
    )


# ---------------------------------------------------------------------------
# One request


def request_headers(auth: Mapping[str, str], user_agent: str) -> dict[str, str]:
    """The headers every request carries: credentials, identity and what it accepts."""
    return {
        **auth,
        "User-Agent": user_agent,
        # The step endpoint answers raw bytes for streamed outputs: accept both, so a
        # strict server never refuses a stream over content negotiation.
        "Accept": "application/json, application/octet-stream",
        # Bodies are decoded here (so a truncated one is caught): offer only the
        # encodings BodyDecoder handles.
        "Accept-Encoding": ACCEPT_ENCODING,
    }


class Decode(Protocol[T_co]):
    """Decodes a 2xx JSON body (``_protocol.decode_instance`` and its siblings)."""

    def __call__(self, body: bytes, *, status: int, cf_ray: str | None) -> T_co: ...


class Request(Generic[T]):
    """What every attempt of one API call needs: ``decode`` turns a 2xx JSON body into
    the result; ``on_stream``, if given, takes over a 2xx octet-stream answer instead.
    ``method`` defaults to GET; ``body``, if given, is sent as ``application/json``.
    """

    __slots__ = ("body", "decode", "errors", "method", "on_stream", "path", "url")

    def __init__(
        self,
        path: str,
        url: URL,
        decode: Decode[T],
        on_stream: Callable[[aiohttp.ClientResponse, str | None], T] | None,
        *,
        timeout: float,
        closed: Callable[[], bool],
        method: str = "GET",
        body: bytes | None = None,
    ) -> None:
        self.path = path
        self.url = url
        self.decode = decode
        self.on_stream = on_stream
        self.method = method
        self.body = body
        self.errors = ErrorMap(f"{method} {path}", timeout=timeout, closed=closed)


def never_sent(exc: errors.WorkflowsError) -> bool:
    """True when the failed attempt provably left nothing applied on the server.

    A 429 refused the request, and a connection that was never made (refused, DNS,
    TLS handshake) carried no request. Anything else after sending (a reset, a timeout,
    a 5xx) leaves the outcome unknown.
    """
    if isinstance(exc, errors.RateLimitError):
        return True
    return type(exc) is errors.APIConnectionError and isinstance(
        exc.__cause__, aiohttp.ClientConnectorError
    )


class ResendGuard:
    """Keeps aiohttp from resending a write by itself, on a session we own.

    aiohttp resends an idempotent request (PUT, DELETE) once when a reused connection
    drops before the answer (its private ``ClientSession._retry_connection``). For a
    write that hides an unknown outcome from the exactly-once rules: a DELETE whose
    answer was lost comes back as the resend's 404, though the first one was applied.
    While writes are in flight the session sends nothing twice on its own; reads started
    meanwhile fall back on the session's own retries, which cover a dropped connection.
    """

    __slots__ = ("_writes",)

    def __init__(self) -> None:
        self._writes = 0

    def enter(self, http: aiohttp.ClientSession) -> None:
        self._writes += 1
        if self._writes == 1:
            http._retry_connection = False

    def leave(self, http: aiohttp.ClientSession) -> None:
        self._writes -= 1
        if self._writes == 0:
            http._retry_connection = True


class Sender:
    """Sends one request and turns its answer into a result or one of the SDK's errors.

    ``timeout`` bounds an attempt's connect, headers and whole JSON body; a streamed
    answer's reads are bounded one by one (by its StepStream). JSON bodies are read up
    to ``max_response_bytes`` decoded bytes. ``gate`` hears every answer's rate-limit
    headers and a 429's ``Retry-After``.
    """

    __slots__ = (
        "_gate", "_guard", "_headers", "_json_timeout", "_stream_timeout", "_write_headers",
        "max_bytes", "timeout",
    )

    def __init__(
        self, *, headers: Mapping[str, str] | None, timeout: float, max_bytes: int, gate: Gate,
        own_http: bool = True,
    ) -> None:
        self._headers = headers
        # A caller's own aiohttp session is left as it is (see ResendGuard).
        self._guard = ResendGuard() if own_http else None
        # Built once: a request with a body adds its Content-Type without merging dicts.
        self._write_headers = {**(headers or {}), "Content-Type": "application/json"}
        self._gate = gate
        self.timeout = timeout
        self.max_bytes = max_bytes
        self._json_timeout = aiohttp.ClientTimeout(total=timeout)
        # Streams: bound connecting and each read, never the whole body.
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None, connect=timeout, sock_read=timeout
        )

    async def attempt(self, http: aiohttp.ClientSession, request: Request[T], attempt: int) -> T:
        """One attempt, its transport failures raised as the SDK's errors."""
        return await mapped(self._exchange(http, request, attempt), request.errors)

    async def _exchange(
        self, http: aiohttp.ClientSession, request: Request[T], attempt: int
    ) -> T:
        started = time.monotonic()
        guard = self._guard if request.method != "GET" else None
        if guard is not None:
            guard.enter(http)
        try:
            resp = await http.request(
                request.method,
                request.url,
                data=request.body,
                headers=self._headers if request.body is None else self._write_headers,
                timeout=self._stream_timeout if request.on_stream else self._json_timeout,
                allow_redirects=False,
                auto_decompress=False,
            )
        except Exception as exc:
            _log_attempt(request, None, attempt, started, type(exc).__name__)
            raise
        finally:
            if guard is not None:
                guard.leave(http)
        handed_over = False
        try:
            ray = resp.headers.get("cf-ray")
            _log_attempt(request, resp.status, attempt, started, ray)
            await self._gate.observe(resp.headers)
            if not 200 <= resp.status < 300:
                await self._fail(request, resp, ray, started)
            if request.on_stream is not None and resp.content_type == _OCTET_STREAM:
                handed_over = True
                return request.on_stream(resp, ray)
            return await self._succeed(request, resp, ray, started)
        finally:
            if not handed_over:
                resp.release()  # closes the connection if unread bytes remain

    async def _read_json(
        self, request: Request[T], resp: aiohttp.ClientResponse, ray: str | None, started: float
    ) -> bytes:
        """A JSON answer's body, within what is left of the attempt's timeout."""
        if request.on_stream is None:
            # Sent with the JSON timeout, whose total already bounds the body: no second
            # deadline (a cancel scope per call is a measurable share of a small call).
            return await read_body(
                resp, limit=self.max_bytes, what=request.errors.where, cf_ray=ray
            )
        # Sent with the stream timeout (per read), because it might have been a stream:
        # as JSON, the body must still arrive within what is left of the attempt.
        with anyio.fail_after(max(0.0, started + self.timeout - time.monotonic())):
            return await read_body(
                resp, limit=self.max_bytes, what=request.errors.where, cf_ray=ray
            )

    async def _succeed(
        self, request: Request[T], resp: aiohttp.ClientResponse, ray: str | None, started: float
    ) -> T:
        """Decode a 2xx JSON answer; a body that breaks off or does not decode fails."""
        try:
            body = await self._read_json(request, resp, ray, started)
        except BodyError as exc:
            # Not retried like a lost connection: the answer said it succeeded.
            raise errors.APIResponseValidationError(
                f"{request.errors.where}: the {resp.status} answer's body is broken: {exc}",
                status_code=resp.status,
                cf_ray=ray,
            ) from exc
        return request.decode(body, status=resp.status, cf_ray=ray)

    async def _fail(
        self, request: Request[T], resp: aiohttp.ClientResponse, ray: str | None, started: float
    ) -> NoReturn:
        """Raise the error a non-2xx answer maps to (its status decides, not its body)."""
        cut_short = False
        try:
            body = await self._read_json(request, resp, ray, started)
        except BodyError:
            body, cut_short = b"", True
        retry_after = proto.parse_retry_after(resp.headers.get("Retry-After"))
        if resp.status == 429 and retry_after:
            await self._gate.pause(retry_after)
        raise proto.status_error(
            resp.status, method=request.method, path=request.path, body=body, cf_ray=ray,
            retry_after=retry_after, cut_short=cut_short,
        )


def _log_attempt(
    request: Request[T], status: int | None, attempt: int, started: float, detail: str | None
) -> None:
    """The per-attempt debug line: the status and cf-ray, or why no answer came."""
    if logger.isEnabledFor(logging.DEBUG):
        elapsed = (time.monotonic() - started) * 1000
        where = request.errors.where
        if status is None:
            logger.debug("%s -> no answer (%s) attempt %d in %.1f ms", where, detail, attempt,
                         elapsed)
        else:
            logger.debug("%s -> %d attempt %d in %.1f ms cf-ray %s", where, status, attempt,
                         elapsed, detail)


class Gate:
    """When a session's next request may leave: its limiter, and the 429 pauses.

    A 429's ``Retry-After`` (at most :data:`~cfwf_async._retry.MAX_SERVER_WAIT`) holds
    every request of the session, and of every session sharing the limiter. No request
    waits longer than ``cap`` because of what a server said: past it the wait raises
    :class:`~cfwf_async.errors.RateLimitError` at once, with ``retry_after`` set.
    """

    __slots__ = ("_acquire_within", "blocked_until", "cap", "limiter")

    def __init__(self, limiter: Limiter | None, cap: float) -> None:
        self.limiter = limiter
        self.cap = cap
        self.blocked_until = 0.0
        # A limiter that knows about server-imposed waits can refuse one longer than
        # the cap; one with only the protocol's three methods cannot.
        within = getattr(limiter, "acquire_within", None)
        self._acquire_within: Callable[[float], Awaitable[None]] | None = (
            within if callable(within) else None
        )

    @property
    def idle(self) -> bool:
        """Nothing to wait for: no limiter and no pause in force."""
        return self.limiter is None and self.blocked_until <= time.monotonic()

    async def observe(self, headers: Mapping[str, str]) -> None:
        """Tell the limiter what an answer's ``Ratelimit`` headers said."""
        ratelimit = headers.get("Ratelimit")
        if ratelimit is not None and self.limiter is not None:
            info = proto.parse_ratelimit(ratelimit, headers.get("Ratelimit-Policy"))
            if info is not None:
                await self.limiter.observe(info)

    async def pause(self, seconds: float) -> None:
        """A 429 pauses the whole session, and every session sharing its limiter."""
        seconds = clamp_server_wait(seconds)
        self.blocked_until = max(self.blocked_until, time.monotonic() + seconds)
        if self.limiter is not None:
            await self.limiter.pause(seconds)

    async def wait_turn(self) -> None:
        """Wait out a 429 pause, then take a slot from the limiter."""
        if self.blocked_until > time.monotonic():
            await self._wait_unblocked()
        if self.limiter is not None:
            if self._acquire_within is not None:
                await self._acquire_within(self.cap)
            else:
                await self.limiter.acquire()
            # A 429 may have arrived while we queued in the limiter; the session holds
            # its own requests even if a custom limiter ignores pause().
            if self.blocked_until > time.monotonic():
                await self._wait_unblocked()

    async def _wait_unblocked(self) -> None:
        """Sleep until the 429 pause is over (or fail fast past the cap)."""
        while (left := self.blocked_until - time.monotonic()) > 0:
            if left > self.cap:
                raise errors.RateLimitError(
                    f"Cloudflare rate-limited this session; {left:.0f} s of its Retry-After "
                    f"remain, over retry_after_cap={self.cap:g} s",
                    retry_after=left,
                )
            await anyio.sleep(left)
