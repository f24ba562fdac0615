"""A loopback server with precomputed answers, cheap enough not to be what is measured.

A raw :class:`asyncio.Protocol` speaking just enough HTTP/1.1 (keep-alive, one request
at a time per connection, no bodies) to serve two kinds of answers:

``GET .../instances/steps-<n>``
    a ``get_instance`` envelope with ``n`` completed ``step.do`` entries. The whole
    answer (status line, headers and body) is built once per distinct request target
    and then written with one ``transport.write``.
``GET .../instances/stream-<bytes>/step?...``
    an ``application/octet-stream`` step output of ``<bytes>`` bytes with a
    ``Content-Length``, written from one preallocated block under flow control, so the
    server never holds more than that block.

aiohttp.web would add routing, request objects and header parsing to every call: here
a request costs one ``bytes.find`` and a dict lookup. Run it as its own process so its
event loop does not compete with the client's::

    python benchmarks/server.py --port 8787   # prints "PORT <n>" once listening
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import ssl
import sys
from typing import Final

import msgspec

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from cfwf_async.testing import make_instance

STREAM_BLOCK: Final = 1024 * 1024
_INSTANCE_RE: Final = re.compile(rb"/instances/steps-(\d+)(?:\?.*)?$")
_STREAM_RE: Final = re.compile(rb"/instances/stream-(\d+)/step(?:\?.*)?$")

# The headers Cloudflare sends that a client has to look at (cf-ray and the
# rate-limit pair), so that parsing them is part of what the clients pay for. The
# budget is far too large to ever bind: a limiter following it measures its cost, not
# its pacing (a canned answer cannot count down like the real API).
_COMMON_HEADERS: Final = (
    b"cf-ray: 8f1e2d3c4b5a6978-AMS\r\n"
    b'Ratelimit: "default";r=999999999;t=300\r\n'
    b'Ratelimit-Policy: "burst";q=1000000000;w=300\r\n'
)


def instance_body(steps: int) -> bytes:
    """The envelope ``get_instance`` answers for an instance of ``steps`` steps."""
    return msgspec.json.encode(
        {"errors": [], "messages": [], "success": True, "result": make_instance(steps=steps)}
    )


def _answer(status: str, content_type: bytes, length: int) -> bytes:
    return (
        f"HTTP/1.1 {status}\r\n".encode()
        + b"Content-Type: " + content_type + b"\r\n"
        + f"Content-Length: {length}\r\n".encode()
        + _COMMON_HEADERS
        + b"\r\n"
    )


_NOT_FOUND_BODY: Final = b'{"errors":[{"code":10001,"message":"not found"}],"success":false}'
_NOT_FOUND: Final = (
    _answer("404 Not Found", b"application/json", len(_NOT_FOUND_BODY)) + _NOT_FOUND_BODY
)


class _Answers:
    """Precomputed answers keyed by the raw request target."""

    def __init__(self) -> None:
        self.cache: dict[bytes, bytes | int] = {}
        self._bodies: dict[int, bytes] = {}

    def lookup(self, target: bytes) -> bytes | int:
        """Whole answer bytes, or an int: the size of an octet-stream to send."""
        found = self.cache.get(target)
        if found is not None:
            return found
        m = _INSTANCE_RE.search(target)
        if m is not None:
            steps = int(m.group(1))
            body = self._bodies.get(steps)
            if body is None:
                body = self._bodies[steps] = instance_body(steps)
            found = _answer("200 OK", b"application/json", len(body)) + body
        else:
            s = _STREAM_RE.search(target)
            found = int(s.group(1)) if s is not None else _NOT_FOUND
        self.cache[target] = found
        return found


class _Connection(asyncio.Protocol):
    def __init__(self, answers: _Answers, block: bytes) -> None:
        self._answers = answers
        self._block = block
        self._buf = b""
        self._transport: asyncio.Transport | None = None
        self._can_write = asyncio.Event()
        self._can_write.set()
        self._streaming: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._can_write.set()
        if self._streaming is not None:
            self._streaming.cancel()

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    def data_received(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        transport = self._transport
        assert transport is not None
        while self._streaming is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            line_end = buf.find(b"\r\n", 0, end + 2)
            target = buf[:line_end].split(b" ", 2)[1]
            buf = buf[end + 4 :]
            answer = self._answers.lookup(target)
            if isinstance(answer, bytes):
                transport.write(answer)
            else:
                self._streaming = asyncio.get_running_loop().create_task(self._stream(answer))
        self._buf = buf

    async def _stream(self, size: int) -> None:
        transport = self._transport
        assert transport is not None
        transport.write(_answer("200 OK", b"application/octet-stream", size))
        block, view = self._block, memoryview(self._block)
        left = size
        try:
            while left > 0:
                if not self._can_write.is_set():
                    await self._can_write.wait()
                if self._transport is None:
                    return
                n = min(left, len(block))
                transport.write(block if n == len(block) else view[:n])
                left -= n
        finally:
            self._streaming = None
        if self._buf:
            # A request that arrived while streaming (the client does not pipeline, so
            # this only happens after the body was read).
            pending, self._buf = self._buf, b""
            self.data_received(pending)


async def serve(
    host: str,
    port: int,
    *,
    until_stdin_closes: bool = False,
    tls: tuple[str, str] | None = None,
) -> None:
    answers = _Answers()
    block = b"\xa5" * STREAM_BLOCK
    loop = asyncio.get_running_loop()
    context = None
    if tls is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*tls)
    server = await loop.create_server(
        lambda: _Connection(answers, block), host, port, backlog=1024, ssl=context
    )
    bound = server.sockets[0].getsockname()[1]
    print(f"PORT {bound}", flush=True)
    if until_stdin_closes:
        # The parent holds our stdin open: when it closes it (or dies) we stop, so no
        # server outlives a benchmark run.
        await asyncio.to_thread(sys.stdin.buffer.read)
    else:
        await asyncio.Event().wait()
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cpu", type=int, default=None, help="pin the server to this core")
    parser.add_argument(
        "--until-stdin-closes", action="store_true", help="exit when stdin reaches EOF"
    )
    parser.add_argument(
        "--tls", nargs=2, metavar=("CERT", "KEY"), default=None,
        help="serve HTTPS with this certificate chain and key (PEM files)",
    )
    args = parser.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    asyncio.run(
        serve(
            args.host, args.port, until_stdin_closes=args.until_stdin_closes,
            tls=None if args.tls is None else (args.tls[0], args.tls[1]),
        )
    )


if __name__ == "__main__":
    main()
