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
from typing import NoReturn, Self

import aiohttp

from . import _transport as transport
from ._files import atomic_file, check_target
from ._protocol import check_int
from ._resource import AsyncResource
from .errors import OutputTooLargeError, StreamError, WorkflowsError

__all__ = ["StepStream"]

# How many bytes StepStream.save() gathers before handing them to the file's thread.
_WRITE_BATCH = 1024 * 1024


class StepStream(AsyncResource):
    """The raw bytes of a streamed step output.

    Iterate it for ``bytes`` chunks, or use :meth:`read` (with a size cap) or
    :meth:`save` (to a file, chunk by chunk). Use it as an async context manager so the
    connection is released however the block ends::

        out = await session.get_step_output("etl", "run-7", name="export-1")
        if isinstance(out, StepStream):
            async with out:
                async for chunk in out:
                    sink.write(chunk)

    A body that ends before its ``Content-Length``, or a compressed body whose
    compressed stream does not end, raises :class:`StreamError`; it is never a silent
    short read. The session's ``timeout`` bounds the wait for each chunk,
    not the whole download, so a large output that keeps flowing always finishes.
    """

    __slots__ = (
        "_closed",
        "_consumed",
        "_content",
        "_decoder",
        "_on_close",
        "_response",
        "_shrunk",
        "_timeout",
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
        timeout: float | None = None,
    ) -> None:
        self._response = response
        self._content = response.content
        self._closed = False
        self._consumed = False
        self._watchdog: transport.Watchdog | None = None
        self._shrunk: asyncio.BaseTransport | None = None
        self._on_close = on_close
        self._timeout = timeout
        # A compressed body is decoded here (the request asked aiohttp not to), so that
        # one whose compressed stream stops early fails instead of ending quietly. An
        # unknown encoding fails on the first read, like any other undecodable body.
        encoding = transport.content_encoding(response)
        self._decoder: transport.BodyDecoder | str | None = encoding
        #: The size the server announced, or None for a chunked body. Also None for a
        #: compressed body: its Content-Length counts encoded bytes, while the chunks
        #: handed over are decoded (aiohttp itself checks the encoded length).
        self.content_length: int | None = response.content_length if encoding is None else None
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
            if self._decoder is None:
                chunk = await self._content.readany()
            else:
                chunk = await self._read_decoded()
        except BaseException as exc:
            self._abort()
            failure = transport.translate(exc, self._error_map())
            if failure is None:
                raise  # cancellation and foreign errors pass through untouched
        else:
            return self._count(chunk)
        # Raised outside the except block: the failure must not chain the transport
        # error as its context (see _transport.translate).
        raise failure

    def _count(self, chunk: bytes) -> bytes:
        """Account for a chunk (or, empty, the end of the body) against Content-Length."""
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

    async def _read_decoded(self) -> bytes:
        """The next decoded piece of a compressed body (at most READ_SIZE bytes)."""
        decoder = self._decoder
        if not isinstance(decoder, transport.BodyDecoder):
            decoder = self._decoder = transport.BodyDecoder(str(decoder))
        while not (piece := decoder.take(transport.READ_SIZE)):
            raw = await self._content.readany()
            if not raw:
                decoder.finish()
                return b""
            decoder.feed(raw)
        return piece

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
        self._watchdog = transport.Watchdog(self._response)
        self._shrunk = transport.shrink_reads(self._response)

    def _error_map(self) -> transport.ErrorMap:
        """How this stream names a failure, with the bytes handed over so far."""
        return transport.ErrorMap(
            f"reading the stream (after {self.bytes_read} bytes)",
            timeout=self._timeout,
            broken=self._broken,
            in_body=True,
            cf_ray=self.cf_ray,
        )

    def _broken(self, reason: str) -> WorkflowsError:
        return StreamError(
            f"the stream broke after {self.bytes_read} bytes: {reason}",
            received=self.bytes_read,
            expected=self.content_length,
            cf_ray=self.cf_ray,
        )

    # -- whole-body helpers --------------------------------------------------

    async def read(self, max_bytes: int | None = None) -> bytes:
        """Read the rest of the stream into memory.

        With ``max_bytes``, raise :class:`OutputTooLargeError` (and release the
        connection) as soon as the body would exceed it, before buffering more; a
        ``Content-Length`` above the cap fails before any byte is read.
        """
        if max_bytes is not None:
            check_int("max_bytes", max_bytes)
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

        The bytes go to a fresh temporary file beside ``path`` (created exclusively,
        never through a link), which is renamed to ``path`` only after the whole body
        arrived: a failed or cancelled download never leaves a file that looks complete,
        nor a temporary one. ``progress(bytes_read, content_length)`` is called after
        each chunk arrives, before it is written; an exception it raises ends the save.
        Chunks are written in batches of about 1 MiB, so at most that much (plus one
        chunk) is held in memory. A ``path`` that is a directory, or whose directory
        does not exist, raises :class:`ValueError` before anything is read.
        """
        async with self:
            target = check_target("path", path)
            async with atomic_file(target) as f:
                # Each write is a hop to a worker thread (about as costly as receiving
                # a 128 KiB chunk), so chunks go to the file in batches.
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
        return self.bytes_read

    # -- lifetime ----------------------------------------------------------------

    def _stop(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._shrunk is not None:
            transport.restore_reads(self._shrunk)
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

    def __del__(self) -> None:
        # Last resort for a stream dropped without close: give the socket back.
        if not getattr(self, "_closed", True):
            self._closed = True
            self._stop()
            self._response.close()
