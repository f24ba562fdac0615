"""StepStream over loopback: chunks, caps, files, release on every exit path, truncation."""

from __future__ import annotations

import gc
import gzip
import logging
import os
import tracemalloc
import warnings
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import anyio.lowlevel
import pytest
from aiohttp import web

from cfwf_async import (
    APIResponseValidationError,
    APITimeoutError,
    OutputTooLargeError,
    StepOutput,
    StepStream,
    StreamError,
    WorkflowsError,
    WorkflowsSession,
)
from cfwf_async.testing import FakeWorkflowsAPI, StreamBody, make_instance

ServeApp = Callable[[web.Application], AbstractAsyncContextManager[str]]

MiB = 1024 * 1024
ROUTE = "/v4/accounts/a/workflows/w/instances/i/step"


async def stream_of(session: WorkflowsSession, name: str = "blob-1") -> StepStream:
    out = await session.get_step_output("wf", "run-1", name=name)
    assert isinstance(out, StepStream)
    return out


def pattern(size: int) -> bytes:
    # Not one repeated byte, so a reordered or skipped chunk would show.
    return bytes(i * 7 % 251 for i in range(size))


# ---------------------------------------------------------------------------
# Reading


@pytest.mark.anyio
async def test_stream_chunks_match_the_body(
    fake_api: FakeWorkflowsAPI, make_session: Callable[..., WorkflowsSession]
) -> None:
    data = pattern(300_000)
    fake_api.add_step_output("wf", "run-1", "blob-1", data)
    # Without the coalescer's hand-over between headers and the first read, the body
    # is still arriving when it is read, so it comes in several chunks.
    out = await stream_of(make_session(coalesce=False))
    assert out.content_type == "application/octet-stream"
    assert out.content_length == len(data)
    assert out.cf_ray is not None
    assert out.cf_ray.endswith("-FAKE")
    assert not out.closed
    chunks = [chunk async for chunk in out]
    assert len(chunks) > 1
    assert all(isinstance(c, bytes) and c for c in chunks)
    assert b"".join(chunks) == data
    assert out.bytes_read == len(data)
    assert out.closed  # exhausted: released without an explicit close
    assert [c async for c in out] == []  # iterating again just ends
    assert fake_api.requests[0].query == {"name": "blob-1", "type": "step"}


@pytest.mark.anyio
async def test_stream_reads_128_kib_at_a_time_then_restores_the_connection(
    fake_api: FakeWorkflowsAPI, session: WorkflowsSession
) -> None:
    # asyncio's default 256 KiB recv() can make every read fault on fresh pages; a
    # stream asks for 128 KiB while it reads, and the pooled connection goes back with
    # the default so JSON calls on it are untouched.
    fake_api.add_step_output("wf", "run-1", "blob-1", StreamBody.repeat(4 * MiB, chunk_size=MiB))
    out = await stream_of(session)
    connection = out._response.connection
    assert connection is not None
    assert connection.transport is not None
    transport = connection.transport
    default = type(transport).max_size  # type: ignore[attr-defined]
    assert default == 256 * 1024
    seen = set()
    async with out:
        async for chunk in out:
            seen.add(transport.max_size)  # type: ignore[attr-defined]
            assert len(chunk) <= 2 * 256 * 1024
    assert seen == {128 * 1024}
    assert out.closed
    assert out.bytes_read == 4 * MiB
    assert "max_size" not in vars(transport)
    assert transport.max_size == default  # type: ignore[attr-defined]


@pytest.mark.anyio
async def test_json_output_is_not_a_stream(
    fake_api: FakeWorkflowsAPI, session: WorkflowsSession
) -> None:
    fake_api.add_step_output("wf", "run-1", "json-1", {"k": [1, 2]})
    out = await session.get_step_output("wf", "run-1", name="json-1")
    assert isinstance(out, StepOutput)
    assert out.output == {"k": [1, 2]}


@pytest.mark.anyio
async def test_large_stream_reads_with_flat_memory(
    fake_api: FakeWorkflowsAPI, session: WorkflowsSession
) -> None:
    size = 64 * MiB
    fake_api.add_step_output("wf", "run-1", "big-1", StreamBody.repeat(size, chunk_size=MiB))
    total = 0
    chunks = 0
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        out = await stream_of(session, "big-1")
        async with out:
            async for chunk in out:
                total += len(chunk)
                chunks += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == size
    assert out.bytes_read == size
    assert out.closed
    assert chunks > 16
    # The peak covers client and fake server together; the body is 64 MiB.
    assert peak < 8 * MiB, f"peak {peak / MiB:.1f} MiB while streaming 64 MiB"


@pytest.mark.anyio
async def test_read_whole(fake_api: FakeWorkflowsAPI, session: WorkflowsSession) -> None:
    data = pattern(200_000)
    fake_api.add_step_output("wf", "run-1", "blob-1", data)
    out = await stream_of(session)
    assert await out.read() == data
    assert out.closed
    out2 = await stream_of(session)
    assert await out2.read(max_bytes=len(data)) == data  # a cap equal to the size is fine


@pytest.mark.anyio
async def test_read_cap_with_content_length_fails_before_reading(
    fake_api: FakeWorkflowsAPI, session: WorkflowsSession
) -> None:
    fake_api.add_step_output("wf", "run-1", "blob-1", StreamBody.repeat(4 * MiB))
    out = await stream_of(session)
    with pytest.raises(OutputTooLargeError) as info:
        await out.read(max_bytes=MiB)
    assert info.value.size == 4 * MiB
    assert info.value.limit == MiB
    assert info.value.cf_ray == out.cf_ray
    assert out.bytes_read == 0
    assert out.closed
    assert isinstance(info.value, WorkflowsError)


@pytest.mark.anyio
async def test_read_cap_on_a_chunked_body(
    fake_api: FakeWorkflowsAPI, session: WorkflowsSession
) -> None:
    block = b"z" * 65536

    async def endless() -> AsyncIterator[bytes]:
        for _ in range(64):  # 4 MiB, no Content-Length
            yield block

    fake_api.add_step_output("wf", "run-1", "chunked-1", StreamBody(endless, None))
    out = await stream_of(session, "chunked-1")
    assert out.content_length is None
    with pytest.raises(OutputTooLargeError) as info:
        await out.read(max_bytes=200_000)
    assert info.value.size is None
    assert info.value.limit == 200_000
    assert out.closed
    # It stopped near the cap instead of buffering the whole body.
    assert out.bytes_read < 2 * MiB


@pytest.mark.anyio
async def test_chunked_body_reads_whole(
    fake_api: FakeWorkflowsAPI, session: WorkflowsSession
) -> None:
    async def parts() -> AsyncIterator[bytes]:
        for i in range(5):
            yield bytes([i]) * 1000

    fake_api.add_step_output("wf", "run-1", "chunked-1", StreamBody(parts, None))
    out = await stream_of(session, "chunked-1")
    assert await out.read(max_bytes=10_000) == b"".join(bytes([i]) * 1000 for i in range(5))


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("bad", "exc"), [(-1, ValueError), (True, TypeError), (1.5, TypeError), ("10", TypeError)]
)
async def test_read_cap_must_be_an_int(
    fake_api: FakeWorkflowsAPI, session: WorkflowsSession, bad: Any, exc: type[Exception]
) -> None:
    fake_api.add_step_output("wf", "run-1", "blob-1", b"abc")
    out = await stream_of(session)
    async with out:
        with pytest.raises(exc, match="max_bytes"):
            await out.read(max_bytes=bad)
    assert out.closed


# ---------------------------------------------------------------------------
# Saving


@pytest.mark.anyio
async def test_save_is_byte_identical(
    fake_api: FakeWorkflowsAPI, session: WorkflowsSession, tmp_path: Path
) -> None:
    data = pattern(3 * MiB + 17)
    fake_api.add_step_output("wf", "run-1", "blob-1", data)
    target = tmp_path / "out.bin"
    seen: list[tuple[int, int | None]] = []
    out = await stream_of(session)
    written = await out.save(target, progress=lambda n, total: seen.append((n, total)))
    assert written == len(data)
    assert target.read_bytes() == data
    assert not (tmp_path / "out.bin.part").exists()
    assert out.closed
    assert seen
    assert seen[-1] == (len(data), len(data))
    assert [n for n, _ in seen] == sorted(n for n, _ in seen)


@pytest.mark.anyio
async def test_save_replaces_an_existing_file(
    fake_api: FakeWorkflowsAPI, session: WorkflowsSession, tmp_path: Path
) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old contents that are longer than the new ones")
    fake_api.add_step_output("wf", "run-1", "blob-1", b"new")
    await (await stream_of(session)).save(str(target))
    assert target.read_bytes() == b"new"


# ---------------------------------------------------------------------------
# Truncated and stalled bodies (hand-written servers)


def truncating_app(announced: int, sent: int) -> web.Application:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"cf-ray": "trunc-1"})
        resp.content_type = "application/octet-stream"
        resp.content_length = announced
        await resp.prepare(request)
        await resp.write(b"t" * sent)
        assert request.transport is not None
        request.transport.close()  # the body ends before its Content-Length
        return resp

    app = web.Application()
    app.router.add_get(ROUTE, handler)
    return app


def plain_session(root: str, **kw: Any) -> WorkflowsSession:
    kw.setdefault("rate_limit", None)
    kw.setdefault("max_retries", 0)
    return WorkflowsSession(api_token="t", account_id="a", base_url=root + "/v4", **kw)


async def plain_stream(session: WorkflowsSession) -> StepStream:
    out = await session.get_step_output("w", "i", name="s")
    assert isinstance(out, StepStream)
    return out


async def drain(out: StepStream, sizes: list[int]) -> None:
    async for chunk in out:
        sizes.append(len(chunk))


def stalling_app(release: anyio.Event) -> web.Application:
    """Sends one chunk of a larger body, then waits until the test lets it go."""

    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_type = "application/octet-stream"
        resp.content_length = 10_000
        await resp.prepare(request)
        await resp.write(b"s" * 100)
        await release.wait()
        return resp

    async def instance(request: web.Request) -> web.Response:
        return web.json_response({"success": True, "result": {"status": "running"}})

    app = web.Application()
    app.router.add_get(ROUTE, stream)
    app.router.add_get(ROUTE.removesuffix("/step"), instance)
    return app


@pytest.mark.anyio
async def test_truncated_stream_iteration_raises(serve_app: ServeApp) -> None:
    async with serve_app(truncating_app(100_000, 40_000)) as root, plain_session(root) as s:
        out = await plain_stream(s)
        assert out.content_length == 100_000
        got: list[int] = []
        with anyio.fail_after(10), pytest.raises(StreamError) as info:
            await drain(out, got)
    assert sum(got) <= 40_000
    assert info.value.expected == 100_000
    assert info.value.received == sum(got)
    assert info.value.received < info.value.expected
    assert info.value.cf_ray == "trunc-1"
    assert out.closed


@pytest.mark.anyio
async def test_truncated_stream_read_never_returns_short(serve_app: ServeApp) -> None:
    async with serve_app(truncating_app(5000, 10)) as root, plain_session(root) as s:
        out = await plain_stream(s)
        with anyio.fail_after(10), pytest.raises(StreamError):
            await out.read()
    assert out.closed


@pytest.mark.anyio
async def test_truncated_stream_save_leaves_no_file(serve_app: ServeApp, tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    async with serve_app(truncating_app(300_000, 100_000)) as root, plain_session(root) as s:
        out = await plain_stream(s)
        with anyio.fail_after(10), pytest.raises(StreamError):
            await out.save(target)
    assert not target.exists()
    assert not (tmp_path / "out.bin.part").exists()
    assert os.listdir(tmp_path) == []


@pytest.mark.anyio
async def test_cancelled_save_leaves_no_file(serve_app: ServeApp, tmp_path: Path) -> None:
    release = anyio.Event()
    target = tmp_path / "out.bin"
    async with serve_app(stalling_app(release)) as root:
        try:
            async with plain_session(root) as s:
                out = await plain_stream(s)
                with anyio.CancelScope() as scope:
                    # Cancel once the first chunk is on disk; the save is then waiting.
                    await out.save(target, progress=lambda _n, _total: scope.cancel())
                assert scope.cancelled_caught
                assert out.closed
        finally:
            release.set()
    assert os.listdir(tmp_path) == []


def gzip_app(data: bytes, *, cut: int | None = None) -> web.Application:
    """Serves ``data`` gzip-compressed; with ``cut``, drops the connection after that many
    encoded bytes."""
    body = gzip.compress(data)

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Encoding": "gzip"})
        resp.content_type = "application/octet-stream"
        resp.content_length = len(body)
        await resp.prepare(request)
        await resp.write(body if cut is None else body[:cut])
        if cut is not None:
            assert request.transport is not None
            request.transport.close()
        return resp

    app = web.Application()
    app.router.add_get(ROUTE, handler)
    return app


@pytest.mark.anyio
async def test_compressed_stream_is_not_a_length_mismatch(serve_app: ServeApp) -> None:
    data = pattern(1_000_000)
    async with serve_app(gzip_app(data)) as root, plain_session(root) as s:
        out = await plain_stream(s)
        # The announced length counts encoded bytes, so it is not reported as the size.
        assert out.content_length is None
        assert await out.read() == data


@pytest.mark.anyio
async def test_truncated_compressed_stream_raises(serve_app: ServeApp) -> None:
    data = bytes(range(256)) * 4000 + pattern(200_000)
    async with serve_app(gzip_app(data, cut=2000)) as root, plain_session(root) as s:
        out = await plain_stream(s)
        with anyio.fail_after(10), pytest.raises(StreamError):
            await out.read()
    assert out.closed


@pytest.mark.anyio
async def test_stalled_stream_times_out(serve_app: ServeApp) -> None:
    release = anyio.Event()
    async with serve_app(stalling_app(release)) as root:
        try:
            async with plain_session(root, timeout=0.3) as s:
                out = await plain_stream(s)
                with anyio.fail_after(10), pytest.raises(APITimeoutError):
                    async for _ in out:
                        pass
                assert out.closed
                assert out.bytes_read == 100
        finally:
            release.set()


# ---------------------------------------------------------------------------
# Release on every exit path


@pytest.mark.anyio
async def test_leaving_early_releases_the_only_connection(
    fake_api: FakeWorkflowsAPI, base_url: str
) -> None:
    fake_api.add_step_output("wf", "run-1", "big-1", StreamBody.repeat(32 * MiB))
    fake_api.add_instance("wf", "run-1", make_instance())
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http:
        async with WorkflowsSession(api_token=fake_api.api_token, account_id=fake_api.account_id,
                                    base_url=base_url, rate_limit=None,
                                    http_session=http) as s:
            for _ in range(3):
                out = await stream_of(s, "big-1")
                async with out:
                    async for _chunk in out:
                        break
                assert out.closed
                assert 0 < out.bytes_read < 32 * MiB
                # With one connection in the pool, this only succeeds if it came back.
                with anyio.fail_after(5):
                    inst = await s.get_instance("wf", "run-1")
                assert inst.status == "complete"
        assert not http.closed
    assert len(fake_api.requests) == 6


@pytest.mark.anyio
async def test_exception_inside_the_block_releases(
    fake_api: FakeWorkflowsAPI, base_url: str
) -> None:
    fake_api.add_step_output("wf", "run-1", "big-1", StreamBody.repeat(8 * MiB))
    fake_api.add_instance("wf", "run-1", make_instance())

    async def fail_midway(out: StepStream) -> None:
        async with out:
            await out.__anext__()
            raise KeyError("caller bug")

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http, \
            WorkflowsSession(api_token=fake_api.api_token, account_id=fake_api.account_id,
                             base_url=base_url, rate_limit=None, http_session=http) as s:
        out = await stream_of(s, "big-1")
        with pytest.raises(KeyError):
            await fail_midway(out)
        assert out.closed
        with anyio.fail_after(5):
            await s.get_instance("wf", "run-1")
        # Reading a stream closed before its end is an error, not a short read.
        with pytest.raises(StreamError):
            await out.__anext__()


@pytest.mark.anyio
async def test_cancellation_releases(serve_app: ServeApp) -> None:
    release = anyio.Event()
    async with serve_app(stalling_app(release)) as root:
        try:
            async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=1)
            ) as http, plain_session(root, http_session=http) as s:
                out = await plain_stream(s)
                causes: list[BaseException | None] = []
                with anyio.CancelScope() as scope:
                    try:
                        async for _chunk in out:
                            scope.cancel()  # the wait for the next chunk is cancelled
                    except BaseException as exc:
                        causes.append(exc.__cause__)
                        raise
                assert scope.cancelled_caught
                # The cancellation passes through as itself, not chained onto itself.
                assert len(causes) == 1
                assert causes[0] is None
                assert out.closed
                assert out.bytes_read == 100
                with anyio.fail_after(5):
                    inst = await s.get_instance("w", "i")
                assert inst.status == "running"
        finally:
            release.set()


@pytest.mark.anyio
async def test_explicit_aclose_before_reading(
    fake_api: FakeWorkflowsAPI, base_url: str
) -> None:
    fake_api.add_step_output("wf", "run-1", "big-1", StreamBody.repeat(8 * MiB))
    fake_api.add_instance("wf", "run-1", make_instance())
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http, \
            WorkflowsSession(api_token=fake_api.api_token, account_id=fake_api.account_id,
                             base_url=base_url, rate_limit=None, http_session=http) as s:
        out = await stream_of(s, "big-1")
        await out.aclose()
        await out.aclose()
        assert out.closed
        assert "closed" in repr(out)
        with anyio.fail_after(5):
            await s.get_instance("wf", "run-1")


@pytest.mark.anyio
async def test_a_dropped_stream_gives_its_connection_back(
    fake_api: FakeWorkflowsAPI, base_url: str
) -> None:
    fake_api.add_step_output("wf", "run-1", "big-1", StreamBody.repeat(8 * MiB))
    fake_api.add_instance("wf", "run-1", make_instance())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http, \
                WorkflowsSession(api_token=fake_api.api_token, account_id=fake_api.account_id,
                                 base_url=base_url, rate_limit=None, http_session=http) as s:
            out = await stream_of(s, "big-1")
            await out.__anext__()
            del out  # never closed: the last-resort finaliser must free the connection
            gc.collect()
            with anyio.fail_after(5):
                inst = await s.get_instance("wf", "run-1")
            assert inst.status == "complete"
        gc.collect()
    assert [str(w.message) for w in caught if "nclosed" in str(w.message)] == []


@pytest.mark.anyio
async def test_no_unclosed_warnings_after_streams(
    fake_api: FakeWorkflowsAPI, base_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake_api.add_step_output("wf", "run-1", "blob-1", pattern(500_000))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with WorkflowsSession(api_token=fake_api.api_token, account_id=fake_api.account_id,
                                    base_url=base_url, rate_limit=None) as s:
            full = await stream_of(s)
            await full.read()
            early = await stream_of(s)
            async with early:
                await early.__anext__()
        del s, full, early
        gc.collect()
        await anyio.lowlevel.checkpoint()
        gc.collect()
    assert [str(w.message) for w in caught if "nclosed" in str(w.message)] == []
    assert not [r for r in caplog.records if "nclosed" in r.getMessage()]


# ---------------------------------------------------------------------------
# Compressed bodies cut short with intact HTTP framing; saving through _files


try:
    import brotli  # type: ignore[import-not-found]  # noqa: F401
    HAS_BROTLI = True
except ImportError:
    try:
        import brotlicffi  # type: ignore[import-not-found]  # noqa: F401
        HAS_BROTLI = True
    except ImportError:
        HAS_BROTLI = False


def _compress(encoding: str, data: bytes) -> bytes:
    if encoding == "br":
        import brotli  # type: ignore[import-not-found]

        return bytes(brotli.compress(data))
    packer = zlib.compressobj(6, zlib.DEFLATED, 31 if encoding == "gzip" else 15)
    return packer.compress(data) + packer.flush()


def _encoded_app(
    body: bytes, encoding: str, content_type: str, *, chunked: bool
) -> web.Application:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_type = content_type
        resp.headers["Content-Encoding"] = encoding
        if chunked:
            resp.enable_chunked_encoding()
        else:
            resp.content_length = len(body)  # matches what is sent: framing is intact
        await resp.prepare(request)
        for i in range(0, len(body), 64 * 1024):
            await resp.write(body[i : i + 64 * 1024])
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get(ROUTE, handler)
    app.router.add_get(ROUTE.removesuffix("/step"), handler)
    return app


_ENCODINGS = ["gzip", "deflate", pytest.param("br", marks=pytest.mark.skipif(
    not HAS_BROTLI, reason="neither brotli nor brotlicffi is installed"))]


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


async def _consume(out: StepStream, how: str, path: Path) -> None:
    if how == "iterate":
        async for _ in out:
            pass
    elif how == "read":
        await out.read()
    else:
        await out.save(path)


@pytest.mark.anyio
@pytest.mark.parametrize("encoding", _ENCODINGS)
@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("how", ["iterate", "read", "save"])
async def test_a_compressed_stream_cut_short_raises_stream_error(
    serve_app: ServeApp, tmp_path: Path, encoding: str, chunked: bool, how: str
) -> None:
    packed = _compress(encoding, pattern(4 * MiB))
    cut = packed[: len(packed) // 4]
    app = _encoded_app(cut, encoding, "application/octet-stream", chunked=chunked)
    async with serve_app(app) as root, plain_session(root) as s:
        out = await plain_stream(s)
        with anyio.fail_after(20), pytest.raises(StreamError):
            await _consume(out, how, tmp_path / "out.bin")
        assert out.closed
    assert _names(tmp_path) == []  # no file, no temporary file


@pytest.mark.anyio
@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_complete_compressed_stream_is_decoded(
    serve_app: ServeApp, encoding: str
) -> None:
    payload = pattern(3 * MiB)
    app = _encoded_app(_compress(encoding, payload), encoding, "application/octet-stream",
                       chunked=True)
    async with serve_app(app) as root, plain_session(root) as s:
        out = await plain_stream(s)
        sizes: list[int] = []
        body = bytearray()
        async for chunk in out:
            sizes.append(len(chunk))
            body += chunk
    assert bytes(body) == payload
    assert max(sizes) <= 128 * 1024  # decoded piece by piece, never all at once


@pytest.mark.anyio
@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
@pytest.mark.parametrize("call", ["get_instance", "get_step_output"])
async def test_a_compressed_json_answer_cut_short_is_a_validation_error(
    serve_app: ServeApp, encoding: str, call: str
) -> None:
    doc = b'{"success":true,"result":{"status":"running","output":"' + pattern(1 << 10) * 64
    packed = _compress(encoding, doc + b'"}}')
    app = _encoded_app(packed[:-20], encoding, "application/json", chunked=False)
    async with serve_app(app) as root, plain_session(root) as s:
        fetch = s.get_instance("w", "i") if call == "get_instance" else s.get_step_output(
            "w", "i", name="s"
        )
        with pytest.raises(APIResponseValidationError):
            await fetch


def _plant_links(folder: Path) -> tuple[Path, Path]:
    """A victim file, linked from the old temporary name and from the target itself."""
    victim = folder / "victim"
    victim.write_bytes(b"precious")
    (folder / "out.bin.part").symlink_to(victim)
    target = folder / "out.bin"
    target.symlink_to(victim)
    return victim, target


def _read(path: Path) -> bytes:
    return path.read_bytes()


def _is_link(path: Path) -> bool:
    return path.is_symlink()


@pytest.mark.anyio
async def test_save_never_writes_through_a_planted_link(
    fake_api: FakeWorkflowsAPI, session: WorkflowsSession, tmp_path: Path
) -> None:
    payload = pattern(300_000)
    fake_api.add_step_output("wf", "run-1", "blob-1", payload)
    victim, target = _plant_links(tmp_path)
    assert await (await stream_of(session)).save(target) == len(payload)
    assert _read(victim) == b"precious"
    assert not _is_link(target)
    assert _read(target) == payload
    assert _names(tmp_path) == ["out.bin", "out.bin.part", "victim"]


@pytest.mark.anyio
async def test_two_concurrent_saves_to_one_path_both_complete(
    fake_api: FakeWorkflowsAPI, session: WorkflowsSession, tmp_path: Path
) -> None:
    payload = pattern(2 * MiB)
    fake_api.add_step_output("wf", "run-1", "blob-1", payload)
    target = tmp_path / "out.bin"
    sizes: list[int] = []

    async def save() -> None:
        sizes.append(await (await stream_of(session)).save(target))

    async with anyio.create_task_group() as tg:
        tg.start_soon(save)
        tg.start_soon(save)
    assert sizes == [len(payload)] * 2
    assert _read(target) == payload
    assert _names(tmp_path) == ["out.bin"]


@pytest.mark.anyio
async def test_save_to_a_directory_is_refused_and_the_stream_released(
    fake_api: FakeWorkflowsAPI, session: WorkflowsSession, tmp_path: Path
) -> None:
    fake_api.add_step_output("wf", "run-1", "blob-1", b"abc")
    out = await stream_of(session)
    with pytest.raises(ValueError, match="path"):
        await out.save(tmp_path)
    assert out.closed
    assert _names(tmp_path) == []
