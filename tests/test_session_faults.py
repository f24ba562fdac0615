"""The session under faults: cancellation at every point, deadlines, streams that
flow, stall or break, bodies cut short, and credentials that never leak through any of it.

Every test talks HTTP to a real server on loopback: the fake API with injected faults,
or a small ``aiohttp.web`` app where a test needs to know exactly where the server is.
Sessions that must prove a connection was released use their own
``TCPConnector(limit=1)``: a leaked connection would make the next call wait forever,
so each follow-up call runs under ``anyio.fail_after``. The connector's ``_acquired``
set is read only as an observation, never changed.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import anyio.abc
import pytest
from aiohttp import web

from cfwf_async import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    NotFoundError,
    StepStream,
    StreamError,
    WorkflowsError,
    WorkflowsSession,
)
from cfwf_async.testing import API_PREFIX, FakeWorkflowsAPI, Fault, StreamBody, make_instance

WF = "faults"
PREFIX = API_PREFIX + "/accounts/acct/workflows/wf/instances"
SessionFactory = Callable[..., WorkflowsSession]
ServeApp = Callable[[web.Application], AbstractAsyncContextManager[str]]
LimitOne = Callable[..., AbstractAsyncContextManager[tuple[WorkflowsSession, aiohttp.TCPConnector]]]


def acquired(connector: aiohttp.BaseConnector) -> int:
    """Connections the connector has handed out and not got back (an observation)."""
    return len(connector._acquired)  # type: ignore[attr-defined]


@pytest.fixture
def limit_one(make_session: SessionFactory) -> LimitOne:
    """``async with limit_one(url, **session_kwargs) as (session, connector)``.

    A session whose HTTP client holds one connection at most, so a leaked connection
    shows as a next call that never starts.
    """

    @asynccontextmanager
    async def open_session(
        url: str, *, trace_configs: list[aiohttp.TraceConfig] | None = None, **kwargs: Any
    ) -> AsyncIterator[tuple[WorkflowsSession, aiohttp.TCPConnector]]:
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(
            connector=connector, trace_configs=trace_configs
        ) as http, make_session(
            url, api_token="secret-token", account_id="acct", http_session=http, **kwargs
        ) as session:
            yield session, connector

    return open_session


# ---------------------------------------------------------------------------
# 3. Cancellation at every point releases the connection


class Scripted:
    """An app whose first request misbehaves at a chosen point; later ones answer."""

    def __init__(self, first: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        self.first = first
        self.count = 0
        self.reached = anyio.Event()
        self.release = anyio.Event()

    async def handler(self, request: web.Request) -> web.StreamResponse:
        self.count += 1
        if self.count == 1:
            try:
                return await self.first(request)
            finally:
                self.release.set()
        if request.path.endswith("/step"):
            return web.Response(body=b"0123456789", content_type="application/octet-stream")
        body = (
            b'{"success":true,"errors":[],"messages":[],"result":'
            b'{"status":"complete","steps":[],"params":{"ok":1}}}'
        )
        return web.Response(body=body, content_type="application/json")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(PREFIX + "/{id}", self.handler)
        app.router.add_get(PREFIX + "/{id}/step", self.handler)
        return app


@asynccontextmanager
async def serve_on(sock: socket.socket, app: web.Application) -> AsyncIterator[str]:
    """Run ``app`` on an already listening socket (``serve_app`` binds its own)."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}{API_PREFIX}"
    finally:
        await runner.cleanup()


async def cancel_when(reached: anyio.Event, call: Callable[[], Awaitable[Any]]) -> None:
    """Run ``call``; cancel it as soon as ``reached`` is set; it must not finish first."""
    finished = False
    async with anyio.create_task_group() as tg:

        async def run() -> None:
            nonlocal finished
            await call()
            finished = True

        tg.start_soon(run)
        with anyio.fail_after(5):
            await reached.wait()
        tg.cancel_scope.cancel()
    assert not finished


async def usable_afterwards(session: WorkflowsSession, connector: aiohttp.TCPConnector) -> None:
    assert acquired(connector) == 0
    with anyio.fail_after(5):
        inst = await session.get_instance("wf", "after")
    assert inst.params == {"ok": 1}
    assert acquired(connector) == 0


async def _unused(request: web.Request) -> web.StreamResponse:
    raise AssertionError("not reached")


@pytest.mark.anyio
async def test_cancel_while_connecting(limit_one: LimitOne) -> None:
    # A listening socket with a full accept queue: the kernel drops further SYNs, so a
    # connect stays pending until the site below starts accepting.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    for _ in range(2):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(listener.getsockname())
        fillers.append(filler)
    port = listener.getsockname()[1]
    connecting = anyio.Event()

    async def on_start(*_: Any) -> None:
        connecting.set()

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_start.append(on_start)
    scripted = Scripted(_unused)
    scripted.count = 1  # every request answers normally once the site is up
    try:
        async with limit_one(
            f"http://127.0.0.1:{port}{API_PREFIX}", trace_configs=[trace], timeout=30
        ) as (session, connector):
            await cancel_when(connecting, lambda: session.get_instance("wf", "i"))
            for filler in fillers:
                filler.close()
            async with serve_on(listener, scripted.app()):
                await usable_afterwards(session, connector)
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


@pytest.mark.anyio
async def test_cancel_while_waiting_for_headers(serve_app: ServeApp, limit_one: LimitOne) -> None:
    async def first(request: web.Request) -> web.StreamResponse:
        scripted.reached.set()
        await scripted.release.wait()
        return web.Response()

    scripted = Scripted(first)
    async with serve_app(scripted.app()) as root, limit_one(root + API_PREFIX) as (
        session,
        connector,
    ):
        await cancel_when(scripted.reached, lambda: session.get_instance("wf", "i"))
        scripted.release.set()
        await usable_afterwards(session, connector)


@pytest.mark.anyio
async def test_cancel_mid_body(serve_app: ServeApp, limit_one: LimitOne) -> None:
    async def first(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_type = "application/json"
        resp.content_length = 500
        await resp.prepare(request)
        await resp.write(b'{"success": true, "result": {"sta')
        scripted.reached.set()
        await scripted.release.wait()
        return resp

    scripted = Scripted(first)
    async with serve_app(scripted.app()) as root, limit_one(root + API_PREFIX) as (
        session,
        connector,
    ):
        await cancel_when(scripted.reached, lambda: session.get_instance("wf", "i"))
        scripted.release.set()
        await usable_afterwards(session, connector)


@pytest.mark.anyio
async def test_cancel_mid_stream(serve_app: ServeApp, limit_one: LimitOne) -> None:
    async def first(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_type = "application/octet-stream"
        resp.content_length = 1 << 20
        await resp.prepare(request)
        await resp.write(b"x" * 1000)
        await scripted.release.wait()
        return resp

    scripted = Scripted(first)
    got_first_chunk = anyio.Event()
    streams: list[StepStream] = []

    async def read_stream(session: WorkflowsSession) -> None:
        out = await session.get_step_output("wf", "i", name="big")
        assert isinstance(out, StepStream)
        streams.append(out)
        async with out:
            async for _ in out:
                got_first_chunk.set()

    async with serve_app(scripted.app()) as root, limit_one(root + API_PREFIX) as (
        session,
        connector,
    ):
        await cancel_when(got_first_chunk, lambda: read_stream(session))
        assert streams[0].closed
        scripted.release.set()
        await usable_afterwards(session, connector)
        with anyio.fail_after(5):
            out = await session.get_step_output("wf", "i", name="big")
            assert isinstance(out, StepStream)
            assert await out.read() == b"0123456789"


@pytest.mark.anyio
async def test_cancel_while_backing_off(serve_app: ServeApp, limit_one: LimitOne) -> None:
    async def first(request: web.Request) -> web.StreamResponse:
        return web.Response(status=503, text="<html>busy</html>", content_type="text/html")

    scripted = Scripted(first)
    backing_off = anyio.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "retrying in" in record.getMessage():
                backing_off.set()

    watch = Watch(logging.DEBUG)
    log = logging.getLogger("cfwf_async")
    old_level = log.level
    log.addHandler(watch)
    log.setLevel(logging.DEBUG)
    try:
        async with serve_app(scripted.app()) as root, limit_one(
            root + API_PREFIX, max_retries=3
        ) as (session, connector):
            # Retry-less 503s back off for up to base_delay (0.5 s): cancel inside it.
            await cancel_when(backing_off, lambda: session.get_instance("wf", "i"))
            assert scripted.count == 1
            await usable_afterwards(session, connector)
    finally:
        log.removeHandler(watch)
        log.setLevel(old_level)


@pytest.mark.anyio
async def test_overall_deadline_across_retries_with_fail_after(
    fake_api: FakeWorkflowsAPI, make_session: SessionFactory
) -> None:
    api = fake_api
    api.fault_rate(1.0, [Fault.http(503)])
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as http, make_session(
        http_session=http, max_retries=10, retry_budget=None
    ) as session:
        started = time.monotonic()
        with pytest.raises(TimeoutError), anyio.fail_after(0.6):
            await session.get_instance(WF, "i")
        elapsed = time.monotonic() - started
        assert acquired(connector) == 0
        api.clear_faults()
        api.add_instance(WF, "i", make_instance())
        with anyio.fail_after(5):
            assert (await session.get_instance(WF, "i")).status == "complete"
    # The deadline held across several attempts, and did not stretch to their sum.
    assert 0.55 < elapsed < 3.0
    assert len(api.requests) >= 2


# ---------------------------------------------------------------------------
# 4. Streams and timeouts


@pytest.mark.anyio
async def test_a_flowing_stream_outlasts_the_timeout(
    fake_api: FakeWorkflowsAPI, make_session: SessionFactory
) -> None:
    size, piece = 64 * 1024, 2048
    api = fake_api
    api.add_step_output(WF, "i", "big", StreamBody.repeat(size, chunk_size=8192))
    api.inject(Fault.trickle(chunk_size=piece, interval=0.04))  # 32 gaps of 40 ms
    async with make_session(timeout=0.3) as session:
        started = time.monotonic()
        out = await session.get_step_output(WF, "i", name="big")
        assert isinstance(out, StepStream)
        data = await out.read()
        elapsed = time.monotonic() - started
    assert len(data) == size
    assert elapsed > 0.3 * 2  # far longer than the timeout in total, and it finished


@pytest.mark.anyio
async def test_a_stalled_stream_times_out_and_is_never_retried(
    tmp_path: Path, fake_api: FakeWorkflowsAPI, make_session: SessionFactory
) -> None:
    api = fake_api
    api.add_step_output(WF, "i", "big", StreamBody.repeat(200_000, chunk_size=10_000))
    api.inject(Fault.stall(keep=0.5))
    async with make_session(timeout=0.3, max_retries=5) as session:
        out = await session.get_step_output(WF, "i", name="big")
        assert isinstance(out, StepStream)
        with pytest.raises(APITimeoutError):
            await out.save(tmp_path / "out.bin")
        assert not (tmp_path / "out.bin").exists()
        assert out.closed
        assert out.bytes_read == 100_000
    assert len(api.requests) == 1


@pytest.mark.anyio
async def test_faults_before_the_first_byte_are_retried_after_never(
    fake_api: FakeWorkflowsAPI, make_session: SessionFactory
) -> None:
    api = fake_api
    body = bytes(range(256)) * 400
    api.add_step_output(WF, "i", "big", body)
    api.inject(Fault.http(503))
    api.inject(Fault.edge_page(502))
    api.inject(Fault.rate_limit(0))
    async with make_session(max_retries=5) as session:
        out = await session.get_step_output(WF, "i", name="big")
        assert isinstance(out, StepStream)
        assert await out.read() == body
        assert len(api.requests) == 4
        api.inject(Fault.truncate(keep=0.25))
        out = await session.get_step_output(WF, "i", name="big")
        assert isinstance(out, StepStream)
        with pytest.raises(StreamError) as info:
            await out.read()
    assert len(api.requests) == 5  # the cut stream was not fetched again
    assert info.value.expected == len(body)
    assert 0 < info.value.received <= len(body) // 4


@pytest.mark.anyio
async def test_json_timeout_bounds_the_whole_answer(
    fake_api: FakeWorkflowsAPI, make_session: SessionFactory
) -> None:
    api = fake_api
    api.add_instance(WF, "i", make_instance(steps=20))
    api.inject(Fault.trickle(chunk_size=64, interval=0.05))
    async with make_session(timeout=0.3, max_retries=1) as session:
        inst = await session.get_instance(WF, "i")  # the slow attempt timed out; retried
    assert inst.status == "complete"
    assert [r.fault for r in api.requests] == ["trickle", None]


# ---------------------------------------------------------------------------
# 5. Integrity of bodies


@pytest.mark.anyio
@pytest.mark.parametrize("sized", [True, False])
async def test_broken_streams_raise_stream_error(
    sized: bool, fake_api: FakeWorkflowsAPI, make_session: SessionFactory
) -> None:
    size = 300_000
    api = fake_api
    source = StreamBody.repeat(size, chunk_size=50_000)
    api.add_step_output(WF, "i", "s", source if sized else StreamBody(source.chunks, None))
    async with make_session(max_retries=3) as session:
        for fault in (Fault.truncate(0.5), Fault.bad_chunking(0.5)):
            api.inject(fault)
            out = await session.get_step_output(WF, "i", name="s")
            assert isinstance(out, StepStream)
            with anyio.fail_after(10), pytest.raises(StreamError) as info:
                await out.read()
            assert out.closed
            assert info.value.received < size
            assert info.value.cf_ray
        # The session still serves whole streams afterwards.
        out = await session.get_step_output(WF, "i", name="s")
        assert isinstance(out, StepStream)
        assert len(await out.read()) == size


@pytest.mark.anyio
@pytest.mark.parametrize("close", [True, False])
async def test_body_longer_than_content_length_never_leaks_extra_bytes(
    close: bool, make_session: SessionFactory
) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 10\r\n"
    head += b"Connection: close\r\n\r\n" if close else b"\r\n"

    async def handler(client: anyio.abc.SocketStream) -> None:
        async with client:
            await client.receive()
            await client.send(head + b"0123456789EXTRA-BYTES")

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handler)
        async with make_session(
            f"http://127.0.0.1:{port}/v4", api_token="t", account_id="a", max_retries=0
        ) as session:
            # aiohttp either refuses the answer outright or stops at Content-Length;
            # the extra bytes never reach the caller.
            try:
                out = await session.get_step_output("w", "i", name="s")
            except APIConnectionError:
                pass
            else:
                assert isinstance(out, StepStream)
                assert await out.read() == b"0123456789"
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_json_body_cut_short(
    fake_api: FakeWorkflowsAPI, make_session: SessionFactory
) -> None:
    api = fake_api
    api.add_instance(WF, "i", make_instance())
    async with make_session(max_retries=3) as session:
        # 2xx: the body does not decode, and that is not retried.
        api.inject(Fault.truncate(0.5))
        with pytest.raises(APIResponseValidationError) as bad:
            await session.get_instance(WF, "i")
        assert bad.value.status_code == 200
        assert len(api.requests) == 1
        # A retryable status cut short: mapped by status, and retried.
        api.inject(Fault.truncate(0.5, status=503), times=2)
        assert (await session.get_instance(WF, "i")).status == "complete"
        assert [r.fault for r in api.requests[1:]] == ["truncate 503", "truncate 503", None]
        # A final status cut short: mapped by status, not retried.
        api.inject(Fault.truncate(0.3, status=404))
        with pytest.raises(NotFoundError) as missing:
            await session.get_instance(WF, "i")
        assert "broke off" in str(missing.value)
        assert len(api.requests) == 5


# ---------------------------------------------------------------------------
# 7. Credentials and logs


SECRETS = ("tok-SECRET-5f1e", "key-SECRET-93ab", "mail-SECRET@example.com")


def no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


@pytest.mark.anyio
@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("auth", ["token", "global key"])
async def test_redirects_never_carry_credentials_elsewhere(status: int, auth: str) -> None:
    creds: dict[str, Any] = (
        {"api_token": SECRETS[0]}
        if auth == "token"
        else {"api_email": SECRETS[2], "api_key": SECRETS[1]}
    )
    home = FakeWorkflowsAPI(api_token=SECRETS[0], api_email=SECRETS[2], api_key=SECRETS[1])
    other = FakeWorkflowsAPI(api_token=SECRETS[0], api_email=SECRETS[2], api_key=SECRETS[1])
    other.add_instance(WF, "i", make_instance())
    async with home, other:
        target = f"{other.base_url}/accounts/{other.account_id}/workflows/{WF}/instances/i"
        home.inject(Fault.http(status, body=b"", headers={"Location": target}))
        async with aiohttp.ClientSession() as http, home.session(
            http_session=http, **creds
        ) as session:
            with pytest.raises(APIStatusError) as info:
                await session.get_instance(WF, "i")
    assert info.value.status_code == status
    assert len(home.requests) == 1
    assert other.requests == []  # the other port never saw a request, let alone a header


def test_plain_http_is_refused_unless_loopback_or_opted_in() -> None:
    with pytest.raises(ValueError, match="allow_insecure_http") as info:
        WorkflowsSession(api_token=SECRETS[0], base_url="http://api.example.com/client/v4")
    no_secret(str(info.value))
    for url in ("http://127.0.0.1:8080/v4", "http://localhost/v4", "http://[::1]:9/v4"):
        assert WorkflowsSession(api_token="t", base_url=url).base_url == url
    opted = WorkflowsSession(
        api_token="t", base_url="http://api.example.com/v4", allow_insecure_http=True
    )
    assert opted.base_url == "http://api.example.com/v4"


def _self_signed(tmp: Path) -> tuple[Path, Path] | None:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    try:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
             "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True, timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return cert, key


@pytest.mark.anyio
async def test_tls_is_verified_by_default(tmp_path: Path, make_session: SessionFactory) -> None:
    import ssl

    pair = _self_signed(tmp_path)
    if pair is None:
        pytest.skip("openssl is not available to make a self-signed certificate")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*pair)
    api = FakeWorkflowsAPI(api_token=SECRETS[0])
    api.add_instance(WF, "i", make_instance())
    runner = web.AppRunner(api.make_app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with make_session(
            f"https://127.0.0.1:{port}{API_PREFIX}", api_token=SECRETS[0],
            account_id=api.account_id, max_retries=0,
        ) as session:
            with pytest.raises(APIConnectionError) as info:
                await session.get_instance(WF, "i")
    finally:
        await runner.cleanup()
    assert "certificate" in str(info.value).lower()
    assert api.requests == []  # the handshake failed before any header was sent
    no_secret(repr(info.value) + str(info.value))


def _chain(exc: BaseException | None) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


@pytest.mark.anyio
@pytest.mark.parametrize("auth", ["token", "global key"])
async def test_debug_log_has_a_line_per_attempt_and_no_secret(
    auth: str, caplog: pytest.LogCaptureFixture
) -> None:
    creds: dict[str, Any] = (
        {"api_token": SECRETS[0]}
        if auth == "token"
        else {"api_email": SECRETS[2], "api_key": SECRETS[1]}
    )
    api = FakeWorkflowsAPI(api_token=SECRETS[0], api_email=SECRETS[2], api_key=SECRETS[1])
    api.add_instance(WF, "i", make_instance())
    api.add_step_output(WF, "i", "s", StreamBody.repeat(100_000, chunk_size=10_000))
    # No resets here: aiohttp resends a GET once after a reset on its own, which would
    # make the server see more requests than the SDK made attempts.
    mix = [Fault.http(503), Fault.edge_page(520), Fault.rate_limit(0), Fault.delay(1.0),
           Fault.http(401), Fault.malformed(), Fault.truncate(0.5), Fault.bad_chunking()]
    errors: list[BaseException] = []
    caplog.set_level(logging.DEBUG)
    async with api, api.session(timeout=0.3, max_retries=2, **creds) as session:
        no_secret(repr(session))
        for fault in mix:
            api.inject(fault)
            try:
                await session.get_instance(WF, "i")
            except WorkflowsError as exc:
                errors.append(exc)
        for fault in (Fault.truncate(0.5), Fault.stall(0.5)):
            api.inject(fault)
            out = await session.get_step_output(WF, "i", name="s")
            assert isinstance(out, StepStream)
            no_secret(repr(out))
            try:
                await out.read()
            except WorkflowsError as exc:
                errors.append(exc)

    assert len(errors) >= 4
    for exc in errors:
        for link in _chain(exc):
            no_secret(str(link))
            no_secret(repr(link))
    records = [r for r in caplog.records if r.name.startswith("cfwf_async")]
    for record in records:
        no_secret(record.getMessage())
        no_secret(caplog.text)
    attempts = [r.getMessage() for r in records if " attempt " in r.getMessage()]
    # One line per attempt: exactly as many as the server saw requests.
    assert len(attempts) == len(api.requests)
    answered = [a for a in attempts if "no answer" not in a]
    assert all(a.startswith("GET /accounts/") and " in " in a and " ms" in a for a in attempts)
    assert any(" -> 503 attempt 1 " in a and "cf-ray " in a and "-FAKE" in a for a in answered)
    assert any("no answer (" in a for a in attempts)  # the timed-out attempt, no status
