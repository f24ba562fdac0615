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
from typing import Self

import aiohttp
import anyio

from .errors import APIConnectionError, APITimeoutError, OutputTooLargeError, StreamError

__all__ = ["StepStream"]

# How long a read waits before checking that the connection is still open.
_CLOSED_CHECK = 0.25

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
        "_on_close",
        "_response",
        "_started",
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
        self._closed = False
        self._consumed = False
        self._started = False
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
        chunk = await self._next_chunk()
        if not chunk:
            raise StopAsyncIteration
        return chunk

    async def _next_chunk(self) -> bytes:
        """The next chunk, or b"" at a complete end; releases on end, error or cancel."""
        if self._closed:
            if self._consumed:
                return b""
            raise StreamError(
                "the stream was closed before it was read to the end",
                received=self.bytes_read,
                expected=self.content_length,
                cf_ray=self.cf_ray,
            )
        self._started = True
        try:
            chunk = await self._read_any()
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
        return b""

    async def _read_any(self) -> bytes:
        """``readany()``, plus a check that the connection is still there while waiting.

        aiohttp's C parser, on a corrupt chunk header that arrives after the headers,
        closes the connection without failing the body or keeping the read timeout
        (aiohttp 3.14): a plain ``readany()`` would then wait forever.
        """
        content = self._response.content
        chunk = content.read_nowait()  # raises the body's error, if it has one
        if chunk or content.at_eof():
            return chunk
        # A plain timer callback rather than a cancel scope around the wait: a fast
        # stream waits once per chunk (about 4,000 times per GiB), and a scope cost
        # about 8 µs a time against about 1 µs for arming and cancelling a timer.
        loop = asyncio.get_running_loop()
        received = content.total_bytes
        watchdog: asyncio.TimerHandle

        def check() -> None:
            nonlocal watchdog
            connection = self._response.connection
            if content.total_bytes != received or content.is_eof():
                return  # the wait is over already; the reader wakes with the data
            if connection is None or connection.closed:
                content.set_exception(
                    aiohttp.ClientPayloadError(
                        "the connection closed before the body was complete"
                    )
                )
            else:
                watchdog = loop.call_later(_CLOSED_CHECK, check)

        watchdog = loop.call_later(_CLOSED_CHECK, check)
        try:
            return await content.readany()
        finally:
            watchdog.cancel()

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
        """Write the stream to ``path`` chunk by chunk; return the number of bytes.

        The bytes go to ``<path>.part`` first, which is renamed to ``path`` only after
        the whole body arrived, so a failed or cancelled download never leaves a file
        that looks complete. ``progress(bytes_read, content_length)`` is called after
        each chunk.
        """
        target = os.fspath(path)
        partial = target + ".part"
        async with self:
            try:
                async with await anyio.open_file(partial, "wb") as f:
                    async for chunk in self:
                        await f.write(chunk)
                        if progress is not None:
                            progress(self.bytes_read, self.content_length)
                await anyio.Path(partial).replace(target)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await anyio.Path(partial).unlink(missing_ok=True)
                raise
        return self.bytes_read

    # -- lifetime ----------------------------------------------------------------

    def _release(self) -> None:
        if not self._closed:
            self._closed = True
            self._response.release()
            if self._on_close is not None:
                self._on_close()

    def _abort(self) -> None:
        """Drop the connection: unread bytes remain, so it cannot be reused."""
        if not self._closed:
            self._closed = True
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
            self._response.close()
