"""Delivering a body on the wire: whole, or spoiled the way a :class:`BodyFault` says."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

from aiohttp import web

from ._faults import BadChunking, BodyFault, Stall, Trickle, Truncate

__all__ = ["ChunkSource", "StreamBody", "reset_connection", "send_body", "wait_unless_gone"]

ChunkSource = Callable[[], AsyncIterator[bytes]]


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


async def wait_unless_gone(request: web.Request, seconds: float) -> None:
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


def reset_connection(request: web.Request) -> None:
    """Drop the connection with a TCP RST (SO_LINGER 0), as a crashed peer would."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def send_body(
    request: web.Request,
    status: int,
    headers: Mapping[str, str],
    content_type: str,
    chunks: AsyncIterator[bytes],
    size: int | None,
    fault: BodyFault | None = None,
) -> web.StreamResponse:
    """Stream an answer's body, spoiled the way ``fault`` says (whole without one).

    A client that hangs up mid-body ends the answer quietly: nobody is left to tell,
    and the server must not log it as its own error.
    """
    resp = web.StreamResponse(status=status, headers=headers)
    resp.content_type = content_type
    if size is not None and not isinstance(fault, BadChunking):
        resp.content_length = size
    try:
        await resp.prepare(request)
        match fault:
            case Truncate(keep=keep) | BadChunking(keep=keep) | Stall(keep=keep):
                await _send_part(resp, chunks, -1 if size is None else int(size * keep))
                await _break_off(request, fault)
                return resp
            case Trickle(chunk_size=step, interval=interval):
                async for chunk in chunks:
                    for i in range(0, len(chunk), step):
                        await resp.write(chunk[i : i + step])
                        await asyncio.sleep(interval)
            case _:
                async for chunk in chunks:
                    await resp.write(chunk)
        await resp.write_eof()
    except ConnectionError:
        _close(request)
    return resp


async def _send_part(resp: web.StreamResponse, chunks: AsyncIterator[bytes], limit: int) -> None:
    """Write the body's first ``limit`` bytes (its first chunk when ``limit`` is -1)."""
    sent = 0
    async for chunk in chunks:
        if limit < 0 or sent + len(chunk) >= limit:
            part = chunk if limit < 0 else chunk[: limit - sent]
            if part:
                await resp.write(part)
            return
        await resp.write(chunk)
        sent += len(chunk)


async def _break_off(request: web.Request, fault: BodyFault) -> None:
    """End a cut body the way ``fault`` says, then close the connection."""
    transport = request.transport
    match fault:
        case Stall(seconds=seconds):
            await wait_unless_gone(request, seconds)
        case BadChunking() if transport is not None:
            # A pause first, so the good part reaches the client on its own and the
            # damage shows mid-body rather than together with the headers.
            await asyncio.sleep(0.05)
            # Not a hex size: the client's chunk parser must refuse it.
            transport.write(b"zz-not-a-size\r\n")
    _close(request)


def _close(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.close()  # flushes what was written, then FIN: a short body
