"""StepStream: a streamed step output, handed over chunk by chunk.

When a step returned a ``ReadableStream``, Cloudflare serves its output as
``application/octet-stream``; it can be far larger than memory. A :class:`StepStream`
owns the HTTP response until the body is exhausted, the stream is closed, the caller
leaves an ``async with`` block early, an error occurs, or the task is cancelled: in every
case the connection goes back to the pool (or is closed when unread bytes remain).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from types import TracebackType
from typing import NoReturn, Self

import aiohttp
import anyio

from .errors import APIConnectionError, APITimeoutError, OutputTooLargeError, StreamError

__all__ = ["StepStream"]

# How often a stream that is being read checks that its connection is still open.
_CLOSED_CHECK = 0.25

# How many bytes asyncio's plain-socket transport asks recv() for while a stream is read.
# Its default, 256 KiB, is a fresh bytes object per read, just over glibc's threshold for
# giving freed memory back to the kernel: a process can fall into a mode where every read
# maps new pages and faults on each of them (about 190,000 page faults and 3x the CPU
# per GiB, measured on loopback). 128 KiB reads stay in reused heap memory.
_READ_SIZE = 128 * 1024

# How many bytes StepStream.save() gathers before handing them to the file's thread.
_WRITE_BATCH = 1024 * 1024


class _Watchdog:
    """Fails a stream whose connection closed under a read that aiohttp left waiting.

    aiohttp's C parser, on a corrupt chunk header that arrives after the headers, closes
    the connection without failing the body or keeping the read timeout (aiohttp 3.14),
    so a plain ``readany()`` would wait forever. One timer per stream, re-armed every
    0.25 s while the body is incomplete, costs nothing per chunk (a 1 GiB body is about
    8,000 chunks). It holds the response, never the StepStream, so a dropped stream is
    still collected and closed by ``StepStream.__del__``.
    """

    __slots__ = ("_handle", "_loop", "_response")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self._loop = asyncio.get_running_loop()
        self._handle: asyncio.TimerHandle | None = self._loop.call_later(
            _CLOSED_CHECK, self._check
        )

    def _check(self) -> None:
        self._handle = None
        response = self._response
        content = response.content
        if response.closed or content.is_eof() or content.exception() is not None:
            return
        connection = response.connection
        if connection is None or connection.closed:
            content.set_exception(
                aiohttp.ClientPayloadError("the connection closed before the body was complete")
            )
            return
        self._handle = self._loop.call_later(_CLOSED_CHECK, self._check)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def _shrink_reads(response: aiohttp.ClientResponse) -> asyncio.BaseTransport | None:
    """Make a plain-socket connection read ``_READ_SIZE`` bytes at a time; return it.

    Only asyncio's own socket transport has a ``max_size`` (a class attribute, which an
    instance attribute shadows); TLS and uvloop transports do not and are left alone, as
    is a transport whose default is already no larger.
    """
    connection = response.connection
    transport = connection.transport if connection is not None else None
    if transport is None:
        return None
    default = getattr(type(transport), "max_size", None)
    if not isinstance(default, int) or default <= _READ_SIZE:
        return None
    try:
        transport.max_size = _READ_SIZE  # type: ignore[attr-defined]
    except (AttributeError, TypeError):  # no instance __dict__: keep the default
        return None
    return transport


def _restore_reads(transport: asyncio.BaseTransport) -> None:
    """Give a connection back its default read size (it may be pooled by now: the
    response hands it back when the body ends, and a smaller read harms nobody)."""
    vars(transport).pop("max_size", None)


class StepStream:
    """The raw bytes of a streamed step output.

    Iterate it for ``bytes`` chunks, or use :meth:`read` (with a size cap) or
    :meth:`save` (to a file, chunk by chunk). Use it as an async context manager so the
    connection is released however the block ends::

        out = await session.get_step_output("etl", "run-7", name="export-1")
        if isinstance(out, StepStream):
            async with out:
                async for chunk in out:
                    sink.write(chunk)

    A body that ends before its ``Content-Length`` raises :class:`StreamError`; it is
    never a silent short read. The session's ``timeout`` bounds the wait for each chunk,
    not the whole download, so a large output that keeps flowing always finishes.
    """

    __slots__ = (
        "_closed",
        "_consumed",
        "_content",
        "_on_close",
        "_response",
        "_shrunk",
        "_watchdog",
        "bytes_read",
        "cf_ray",
        "content_length",
        "content_type",
    )

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        *,
        cf_ray: str | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._response = response
        self._content = response.content
        self._closed = False
        self._consumed = False
        self._watchdog: _Watchdog | None = None
        self._shrunk: asyncio.BaseTransport | None = None
        self._on_close = on_close
        #: The size the server announced, or None for a chunked body. Also None for a
        #: compressed body: its Content-Length counts encoded bytes, while the chunks
        #: handed over are decoded (aiohttp itself checks the encoded length).
        encoding = response.headers.get("Content-Encoding", "").strip().lower()
        self.content_length: int | None = (
            response.content_length if encoding in ("", "identity") else None
        )
        self.content_type: str = response.content_type
        #: Cloudflare's request id, for support tickets.
        self.cf_ray = cf_ray
        #: Bytes handed to the caller so far.
        self.bytes_read = 0

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        size = "?" if self.content_length is None else str(self.content_length)
        return f"<StepStream {state} {self.bytes_read}/{size} bytes>"

    @property
    def closed(self) -> bool:
        """True once the connection was released (exhausted, closed or failed)."""
        return self._closed

    # -- iteration ---------------------------------------------------------

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        # The hot path of a download: one await of aiohttp's zero-copy readany() and a
        # count per chunk; the timeouts and the closed-connection check live elsewhere.
        if self._closed:
            self._after_close()
        if self._watchdog is None:
            self._start()
        try:
            chunk = await self._content.readany()
        except BaseException as exc:
            self._abort()
            translated = self._translate(exc)
            if translated is exc:
                # Cancellation and foreign errors pass through untouched; ``raise exc
                # from exc`` would make the exception its own cause.
                raise
            raise translated from exc
        if chunk:
            self.bytes_read += len(chunk)
            if self.content_length is not None and self.bytes_read > self.content_length:
                self._abort()
                raise StreamError(
                    f"received more bytes ({self.bytes_read}) than Content-Length "
                    f"({self.content_length})",
                    received=self.bytes_read,
                    expected=self.content_length,
                    cf_ray=self.cf_ray,
                )
            return chunk
        # End of body.
        if self.content_length is not None and self.bytes_read != self.content_length:
            self._abort()
            raise StreamError(
                f"the stream ended after {self.bytes_read} of {self.content_length} bytes",
                received=self.bytes_read,
                expected=self.content_length,
                cf_ray=self.cf_ray,
            )
        self._consumed = True
        self._release()
        raise StopAsyncIteration

    def _after_close(self) -> NoReturn:
        """Iterating a released stream: the end if it was read through, else an error."""
        if self._consumed:
            raise StopAsyncIteration
        raise StreamError(
            "the stream was closed before it was read to the end",
            received=self.bytes_read,
            expected=self.content_length,
            cf_ray=self.cf_ray,
        )

    def _start(self) -> None:
        """First read: watch the connection, and use the read size made for streams."""
        self._watchdog = _Watchdog(self._response)
        self._shrunk = _shrink_reads(self._response)

    def _translate(self, exc: BaseException) -> BaseException:
        if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
            return APITimeoutError(
                f"no data for the stream within the timeout after {self.bytes_read} bytes",
                cf_ray=self.cf_ray,
            )
        # A ClientResponseError while reading the body is a protocol violation in it.
        if isinstance(exc, (aiohttp.ClientPayloadError, aiohttp.ClientResponseError)):
            return StreamError(
                f"the stream broke after {self.bytes_read} bytes: {exc}",
                received=self.bytes_read,
                expected=self.content_length,
                cf_ray=self.cf_ray,
            )
        if isinstance(exc, (aiohttp.ClientError, OSError)):
            return APIConnectionError(
                f"the connection failed after {self.bytes_read} bytes of the stream: "
                f"{type(exc).__name__}",
                cf_ray=self.cf_ray,
            )
        return exc

    # -- whole-body helpers --------------------------------------------------

    async def read(self, max_bytes: int | None = None) -> bytes:
        """Read the rest of the stream into memory.

        With ``max_bytes``, raise :class:`OutputTooLargeError` (and release the
        connection) as soon as the body would exceed it, before buffering more; a
        ``Content-Length`` above the cap fails before any byte is read.
        """
        if max_bytes is not None and (
            isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0
        ):
            raise ValueError(f"max_bytes must be an int >= 0 or None, got {max_bytes!r}")
        async with self:
            if (
                max_bytes is not None
                and self.content_length is not None
                and self.content_length - self.bytes_read > max_bytes
            ):
                raise OutputTooLargeError(
                    f"the stream is {self.content_length} bytes, over max_bytes={max_bytes}",
                    size=self.content_length,
                    limit=max_bytes,
                    cf_ray=self.cf_ray,
                )
            buffer = bytearray()
            async for chunk in self:
                buffer += chunk
                if max_bytes is not None and len(buffer) > max_bytes:
                    raise OutputTooLargeError(
                        f"the stream exceeded max_bytes={max_bytes}",
                        size=self.content_length,
                        limit=max_bytes,
                        cf_ray=self.cf_ray,
                    )
            return bytes(buffer)

    async def save(
        self,
        path: str | os.PathLike[str],
        *,
        progress: Callable[[int, int | None], None] | None = None,
    ) -> int:
        """Write the stream to ``path`` as it arrives; return the number of bytes.

        The bytes go to ``<path>.part`` first, which is renamed to ``path`` only after
        the whole body arrived, so a failed or cancelled download never leaves a file
        that looks complete. ``progress(bytes_read, content_length)`` is called after
        each chunk arrives, before it is written; an exception it raises ends the save
        (and removes the partial file). Chunks are written in batches of about 1 MiB,
        so at most that much (plus one chunk) is held in memory.
        """
        target = os.fspath(path)
        partial = target + ".part"
        async with self:
            try:
                async with await anyio.open_file(partial, "wb") as f:
                    # Each write is a hop to a worker thread (about as costly as
                    # receiving a 128 KiB chunk), so chunks go to the file in batches.
                    batch: list[bytes] = []
                    batched = 0
                    async for chunk in self:
                        if progress is not None:
                            progress(self.bytes_read, self.content_length)
                        batch.append(chunk)
                        batched += len(chunk)
                        if batched >= _WRITE_BATCH:
                            await f.writelines(batch)
                            batch, batched = [], 0
                    if batch:
                        await f.writelines(batch)
                await anyio.Path(partial).replace(target)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await anyio.Path(partial).unlink(missing_ok=True)
                raise
        return self.bytes_read

    # -- lifetime ----------------------------------------------------------------

    def _stop(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._shrunk is not None:
            _restore_reads(self._shrunk)
            self._shrunk = None

    def _release(self) -> None:
        if not self._closed:
            self._closed = True
            self._stop()
            self._response.release()
            if self._on_close is not None:
                self._on_close()

    def _abort(self) -> None:
        """Drop the connection: unread bytes remain, so it cannot be reused."""
        if not self._closed:
            self._closed = True
            self._stop()
            self._response.close()
            if self._on_close is not None:
                self._on_close()

    async def aclose(self) -> None:
        """Release the connection; unread bytes are discarded with the connection."""
        if self._consumed:
            self._release()
        else:
            self._abort()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __del__(self) -> None:
        # Last resort for a stream dropped without close: give the socket back.
        if not getattr(self, "_closed", True):
            self._closed = True
            self._stop()
            self._response.close()
