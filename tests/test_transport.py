"""What cfwf_async._transport relies on in aiohttp and asyncio, pinned loudly.

Each test names the dependency it checks: when a new aiohttp or Python changes one of
them, the failure says which workaround in _transport.py needs a second look. The rest
tests _transport's own pieces (the body decoder, the error mapping) directly.
"""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import aiohttp
import anyio
import pytest
from aiohttp import web

from cfwf_async import _transport as transport
from cfwf_async import errors

ServeApp = Callable[[web.Application], AbstractAsyncContextManager[str]]


def _stalling_app(release: anyio.Event, *, header: str | None = None) -> web.Application:
    """One chunk of a larger body, then nothing until the test lets it go."""

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_type = "application/octet-stream"
        resp.content_length = 10_000
        if header is not None:
            resp.headers["X-Big"] = header
        await resp.prepare(request)
        await resp.write(b"s" * 100)
        await release.wait()
        return resp

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    return app


@asynccontextmanager
async def _open_body(serve_app: ServeApp) -> AsyncIterator[aiohttp.ClientResponse]:
    release = anyio.Event()
    async with serve_app(_stalling_app(release)) as root, aiohttp.ClientSession() as http:
        resp = await http.get(root + "/x")
        try:
            assert await resp.content.readany() == b"s" * 100
            yield resp
        finally:
            release.set()
            resp.close()


# ---------------------------------------------------------------------------
# asyncio and aiohttp internals


@pytest.mark.anyio
async def test_asyncio_socket_transport_has_a_class_max_size_an_instance_shadows(
    serve_app: ServeApp,
) -> None:
    async with _open_body(serve_app) as resp:
        connection = resp.connection
        tr = None if connection is None else connection.transport
        assert tr is not None, (
            "aiohttp: ClientResponse.connection.transport is no longer reachable during a "
            "body read; _transport.shrink_reads cannot find the socket transport"
        )
        default = getattr(type(tr), "max_size", None)
        assert isinstance(default, int), f"asyncio: {type(tr).__name__}.max_size is gone"
        assert default > transport.READ_SIZE, (
            f"asyncio: {type(tr).__name__}.max_size is {default!r}, no longer an int class "
            f"attribute above {transport.READ_SIZE}; _transport.shrink_reads is now a no-op"
        )
        shrunk = transport.shrink_reads(resp)
        assert shrunk is tr
        assert tr.max_size == transport.READ_SIZE, (  # type: ignore[attr-defined]
            "asyncio: an instance attribute no longer shadows the transport's max_size"
        )
        transport.restore_reads(tr)
        assert tr.max_size == default, (  # type: ignore[attr-defined]
            "asyncio: removing the instance attribute did not restore the class max_size"
        )


@pytest.mark.anyio
async def test_stream_reader_set_exception_fails_a_pending_readany(serve_app: ServeApp) -> None:
    async with _open_body(serve_app) as resp:
        content = resp.content
        assert callable(getattr(content, "set_exception", None)), (
            "aiohttp: StreamReader.set_exception is gone; _transport.Watchdog needs it"
        )
        pending = asyncio.ensure_future(content.readany())
        await asyncio.sleep(0)
        assert not pending.done()
        content.set_exception(aiohttp.ClientPayloadError("watchdog"))
        with anyio.fail_after(5), pytest.raises(aiohttp.ClientPayloadError):
            await pending
        assert content.exception() is not None, (
            "aiohttp: StreamReader.exception() no longer reports a set exception; "
            "_transport.Watchdog checks it before failing a stream"
        )


@pytest.mark.anyio
async def test_auto_decompress_false_per_request_hands_over_raw_bytes(
    serve_app: ServeApp,
) -> None:
    packed = gzip.compress(b"x" * 1000)

    async def handler(request: web.Request) -> web.Response:
        return web.Response(
            body=packed, headers={"Content-Encoding": "gzip"}, content_type="application/json"
        )

    app = web.Application()
    app.router.add_get("/", handler)
    async with serve_app(app) as root, aiohttp.ClientSession() as http, http.get(
        root + "/", auto_decompress=False
    ) as resp:
        body = await resp.read()
    assert body == packed, (
        "aiohttp: ClientSession.get(auto_decompress=False) no longer hands over the raw "
        "body; _transport.BodyDecoder would decode twice"
    )


@pytest.mark.anyio
async def test_a_too_long_header_is_a_response_error_carrying_the_request_headers(
    serve_app: ServeApp,
) -> None:
    """Why _transport.translate never chains a ClientResponseError: it holds the token."""
    release = anyio.Event()
    release.set()
    app = _stalling_app(release, header="h" * 9000)
    async with serve_app(app) as root, aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientResponseError) as caught:
            await http.get(root + "/", headers={"Authorization": "Bearer tok-XYZ"})
    info = caught.value.request_info
    assert info.headers.get("Authorization") == "Bearer tok-XYZ", (
        "aiohttp: ClientResponseError.request_info.headers no longer holds the request's "
        "headers (good news: _transport's no-chaining rule is then belt and braces)"
    )


@pytest.mark.anyio
async def test_aiohttp_resends_idempotent_requests_unless_retry_connection_is_off() -> None:
    # ResendGuard switches aiohttp's private resend of PUT/DELETE off while a write is
    # in flight. If a release renames or drops the flag, writes could be applied twice
    # unnoticed (a DELETE's resend answering 404): this must fail loudly first.
    async with aiohttp.ClientSession() as http:
        assert getattr(http, "_retry_connection", None) is True, (
            "aiohttp.ClientSession no longer has _retry_connection=True: ResendGuard in "
            "cfwf_async/_transport.py needs another way to stop resends of writes"
        )
        guard = transport.ResendGuard()
        guard.enter(http)
        guard.enter(http)
        guard.leave(http)
        assert http._retry_connection is False  # a second write still in flight
        guard.leave(http)
        assert http._retry_connection is True


def test_the_exception_types_translate_maps_keep_their_hierarchy() -> None:
    assert issubclass(aiohttp.ClientPayloadError, aiohttp.ClientError)
    assert issubclass(aiohttp.ClientResponseError, aiohttp.ClientError)
    assert issubclass(aiohttp.ServerTimeoutError, aiohttp.ClientError)
    assert issubclass(aiohttp.ClientConnectorError, OSError), (
        "aiohttp: ClientConnectorError is no longer an OSError"
    )
    assert asyncio.TimeoutError is TimeoutError, "asyncio.TimeoutError is no longer TimeoutError"
    assert "request_info" in aiohttp.ClientResponseError.__init__.__code__.co_varnames


# ---------------------------------------------------------------------------
# translate


def _map(**kw: object) -> transport.ErrorMap:
    return transport.ErrorMap("GET /x", timeout=3.0, **kw)  # type: ignore[arg-type]


def test_translate_maps_each_kind_and_leaves_others_alone() -> None:
    assert isinstance(transport.translate(TimeoutError(), _map()), errors.APITimeoutError)
    assert isinstance(
        transport.translate(aiohttp.ServerTimeoutError(), _map()), errors.APITimeoutError
    )
    assert type(transport.translate(ConnectionResetError(), _map())) is errors.APIConnectionError
    broken = transport.translate(
        aiohttp.ClientPayloadError("cut"),
        _map(broken=lambda r: errors.StreamError(r, received=1, expected=None)),
    )
    assert isinstance(broken, errors.StreamError)
    assert transport.translate(asyncio.CancelledError(), _map()) is None
    assert transport.translate(KeyError("x"), _map()) is None
    assert transport.translate(errors.WorkflowsError("own"), _map()) is None
    closed = transport.translate(ConnectionResetError(), _map(closed=lambda: True))
    assert closed is not None
    assert "closed" in str(closed)


def test_translate_never_chains_an_exception_that_holds_the_request() -> None:
    info = aiohttp.RequestInfo(
        aiohttp.client_reqrep.URL("http://h/"),  # type: ignore[attr-defined]
        "GET",
        {"Authorization": "Bearer tok"},  # type: ignore[arg-type]
    )
    exc = aiohttp.ClientResponseError(info, (), status=400, message="bad")
    failure = transport.translate(exc, _map())
    assert failure is not None
    assert failure.__cause__ is None
    plain = ConnectionResetError()
    assert transport.translate(plain, _map()).__cause__ is plain  # type: ignore[union-attr]


# ---------------------------------------------------------------------------
# BodyDecoder


def _decode_all(decoder: transport.BodyDecoder, data: bytes, step: int = 1000) -> bytes:
    out = bytearray()
    for i in range(0, len(data), step):
        decoder.feed(data[i : i + step])
        while piece := decoder.take(4096):
            assert len(piece) <= 4096
            out += piece
    decoder.finish()
    return bytes(out)


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "raw-deflate"])
def test_decoder_round_trip_and_truncation(encoding: str) -> None:
    payload = bytes(i * 7 % 251 for i in range(300_000))
    wbits = {"gzip": 31, "deflate": 15, "raw-deflate": -15}[encoding]
    packer = zlib.compressobj(6, zlib.DEFLATED, wbits)
    packed = packer.compress(payload) + packer.flush()
    name = "deflate" if "deflate" in encoding else "gzip"
    assert _decode_all(transport.BodyDecoder(name), packed) == payload
    with pytest.raises(transport.BodyError, match="ended before"):
        _decode_all(transport.BodyDecoder(name), packed[: len(packed) // 2])


def test_decoder_concatenated_gzip_members_and_trailing_garbage() -> None:
    packed = gzip.compress(b"a" * 10) + gzip.compress(b"b" * 10)
    assert _decode_all(transport.BodyDecoder("gzip"), packed) == b"a" * 10 + b"b" * 10
    with pytest.raises(transport.BodyError, match="follow"):
        _decode_all(transport.BodyDecoder("gzip"), gzip.compress(b"a") + b"junk")


def test_decoder_refuses_unknown_encodings_and_corrupt_data() -> None:
    with pytest.raises(transport.BodyError, match="unsupported"):
        transport.BodyDecoder("br")
    decoder = transport.BodyDecoder("gzip")
    decoder.feed(b"\x1f\x8b\x08\x00" + b"\xff" * 50)
    with pytest.raises(transport.BodyError):
        decoder.take(100)


def test_decoder_output_is_bounded_by_take() -> None:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    bomb = packer.compress(b" " * (64 << 20)) + packer.flush()  # 64 MiB in ~64 KiB
    decoder = transport.BodyDecoder("gzip")
    decoder.feed(bomb)
    assert len(decoder.take(1000)) == 1000  # not 64 MiB at once
