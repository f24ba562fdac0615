"""The exception tree, and every error answer mapped end to end over loopback."""

from __future__ import annotations

import asyncio
import socket
import struct
import sys
import textwrap
import types
import zlib
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio
import pytest
from aiohttp import web

import cfwf_async
from cfwf_async import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    InternalServerError,
    NotFoundError,
    OutputTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    StepOutput,
    StreamError,
    WorkflowsError,
    WorkflowsSession,
)
from cfwf_async.models import ErrorItem
from cfwf_async.testing import FakeWorkflowsAPI, Fault, make_instance

# ---------------------------------------------------------------------------
# The tree


@pytest.mark.parametrize(
    ("cls", "parent"),
    [
        (APIConnectionError, WorkflowsError),
        (APITimeoutError, APIConnectionError),
        (APIResponseValidationError, WorkflowsError),
        (StreamError, WorkflowsError),
        (OutputTooLargeError, WorkflowsError),
        (APIStatusError, WorkflowsError),
        (BadRequestError, APIStatusError),
        (AuthenticationError, APIStatusError),
        (PermissionDeniedError, APIStatusError),
        (NotFoundError, APIStatusError),
        (ConflictError, APIStatusError),
        (RateLimitError, APIStatusError),
        (InternalServerError, APIStatusError),
        (WorkflowsError, Exception),
    ],
)
def test_tree(cls: type[Exception], parent: type[Exception]) -> None:
    assert issubclass(cls, parent)
    assert cls.__doc__
    assert getattr(cfwf_async, cls.__name__) is cls
    assert cls.__name__ in cfwf_async.__all__


def test_status_errors_are_not_transport_errors() -> None:
    assert not issubclass(APIStatusError, APIConnectionError)
    assert not issubclass(APIResponseValidationError, APIStatusError)
    assert not issubclass(StreamError, APIConnectionError)


def test_str_and_attributes() -> None:
    exc = NotFoundError(
        "GET /x returned 404: instance.not_found (code 10001)",
        status_code=404,
        errors=[ErrorItem(code=10001, message="instance.not_found")],
        cf_ray="8f00aa-LHR",
    )
    assert str(exc) == "GET /x returned 404: instance.not_found (code 10001) (cf-ray 8f00aa-LHR)"
    assert exc.message.startswith("GET /x")
    assert exc.errors == (ErrorItem(code=10001, message="instance.not_found"),)
    assert isinstance(exc.errors, tuple)
    plain = WorkflowsError("boom")
    assert str(plain) == "boom"
    assert plain.cf_ray is None
    rl = RateLimitError("slow down", retry_after=12.5)
    assert (rl.status_code, rl.retry_after, rl.errors) == (429, 12.5, ())
    se = StreamError("short", received=3, expected=10, cf_ray="r")
    assert (se.received, se.expected, se.cf_ray) == (3, 10, "r")
    big = OutputTooLargeError("big", size=None, limit=5)
    assert (big.size, big.limit) == (None, 5)
    bad = APIResponseValidationError("bad", status_code=200)
    assert bad.status_code == 200


# ---------------------------------------------------------------------------
# Every mapping, end to end


@pytest.fixture
def api(fake_api: FakeWorkflowsAPI) -> FakeWorkflowsAPI:
    fake_api.add_instance("wf", "i1", make_instance())
    return fake_api


@pytest.fixture
async def no_retry(api: FakeWorkflowsAPI, base_url: str) -> Any:
    async with WorkflowsSession(api_token=api.api_token, account_id=api.account_id,
                                base_url=base_url, rate_limit=None, max_retries=0) as s:
        yield s


MAPPING = [
    (400, BadRequestError),
    (401, AuthenticationError),
    (403, PermissionDeniedError),
    (404, NotFoundError),
    (409, ConflictError),
    (429, RateLimitError),
    (500, InternalServerError),
    (502, InternalServerError),
    (503, InternalServerError),
    (504, InternalServerError),
    (522, InternalServerError),
    (418, APIStatusError),
    (405, APIStatusError),
    (301, APIStatusError),
    (307, APIStatusError),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("status", "cls"), MAPPING)
async def test_envelope_errors_map_by_status(
    api: FakeWorkflowsAPI, no_retry: WorkflowsSession, status: int, cls: type[APIStatusError]
) -> None:
    api.inject(Fault.http(
        status, errors=[(7000 + status, f"Cloudflare says {status}"), (1, "and more")]
    ))
    with pytest.raises(APIStatusError) as info:
        await no_retry.get_instance("wf", "i1")
    exc = info.value
    assert type(exc) is cls
    assert exc.status_code == status
    assert [(e.code, e.message) for e in exc.errors] == [
        (7000 + status, f"Cloudflare says {status}"), (1, "and more")
    ]
    assert exc.cf_ray is not None
    assert exc.cf_ray.endswith("-FAKE")
    text = str(exc)
    assert f"Cloudflare says {status}" in text
    assert "and more" in text
    assert str(status) in text
    assert exc.cf_ray in text
    assert "/instances/i1" in text
    assert len(api.requests) == 1


@pytest.mark.anyio
@pytest.mark.parametrize("status", [500, 502, 503, 520, 404, 401])
@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"<html><head><title>502 Bad Gateway</title></head><body>cloudflare</body></html>",
         "text/html"),
        (b"", "text/plain"),
        (b"upstream connect error", "text/plain"),
        (b"{\"truncated\": ", "application/json"),
    ],
)
async def test_html_and_empty_error_bodies_map_by_status(
    api: FakeWorkflowsAPI, no_retry: WorkflowsSession, status: int, body: bytes,
    content_type: str,
) -> None:
    api.inject(Fault.http(
        status, body=body, content_type=content_type, headers={"cf-ray": "edge-1"}
    ))
    with pytest.raises(APIStatusError) as info:
        await no_retry.get_step_output("wf", "i1", name="s")
    exc = info.value
    assert exc.status_code == status
    assert exc.errors == ()
    assert exc.cf_ray == "edge-1"
    expected = InternalServerError if status >= 500 else (
        NotFoundError if status == 404 else AuthenticationError
    )
    assert type(exc) is expected


@pytest.mark.anyio
async def test_rate_limit_retry_after(api: FakeWorkflowsAPI, no_retry: WorkflowsSession) -> None:
    api.inject(Fault.http(429, headers={"Retry-After": "17"}))
    with pytest.raises(RateLimitError) as info:
        await no_retry.get_instance("wf", "i1")
    assert info.value.retry_after == 17
    assert "17" in str(info.value)


@pytest.mark.anyio
async def test_a_503_carries_its_retry_after(
    api: FakeWorkflowsAPI, no_retry: WorkflowsSession
) -> None:
    api.inject(Fault.http(503, headers={"Retry-After": "5"}))
    with pytest.raises(InternalServerError) as info:
        await no_retry.get_instance("wf", "i1")
    assert info.value.retry_after == 5


@pytest.mark.anyio
async def test_rate_limit_without_retry_after(
    api: FakeWorkflowsAPI, no_retry: WorkflowsSession
) -> None:
    api.inject(Fault.http(429, headers={"Retry-After": "whenever"}))
    with pytest.raises(RateLimitError) as info:
        await no_retry.get_instance("wf", "i1")
    assert info.value.retry_after is None


@pytest.mark.anyio
async def test_real_not_found_and_auth_answers(api: FakeWorkflowsAPI, base_url: str) -> None:
    async with WorkflowsSession(api_token="wrong", account_id=api.account_id,
                                base_url=base_url, rate_limit=None) as s:
        with pytest.raises(AuthenticationError) as auth:
            await s.get_instance("wf", "i1")
    assert auth.value.errors[0].code == 10000
    assert "Authentication error" in str(auth.value)
    async with WorkflowsSession(api_token=api.api_token, account_id=api.account_id,
                                base_url=base_url, rate_limit=None) as s:
        with pytest.raises(NotFoundError) as missing:
            await s.get_step_output("wf", "i1", name="nope")
    assert missing.value.errors[0].message == "step.not_found"


@pytest.mark.anyio
@pytest.mark.parametrize(
    "body",
    [
        b"definitely not json",
        b"<html>maintenance</html>",
        b'{"success": true, "result": {"status": ["not", "a", "string"]}}',
        b'{"success": true, "result": {"status": "running", "start": "noon"}}',
        b'{"success": true, "result": null}',
    ],
)
async def test_undecodable_2xx_instance(
    api: FakeWorkflowsAPI, no_retry: WorkflowsSession, body: bytes
) -> None:
    api.add_instance("wf", "broken", body)
    with pytest.raises(APIResponseValidationError) as info:
        await no_retry.get_instance("wf", "broken")
    assert info.value.status_code == 200
    assert info.value.cf_ray is not None
    assert info.value.cf_ray.endswith("-FAKE")
    assert not isinstance(info.value, APIStatusError)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "body", [b"", b"oops", b'{"success": true, "result": {"output": 1}}']
)
async def test_undecodable_2xx_step_output(
    api: FakeWorkflowsAPI, no_retry: WorkflowsSession, body: bytes
) -> None:
    api.inject(Fault.http(200, body=body))
    with pytest.raises(APIResponseValidationError) as info:
        await no_retry.get_step_output("wf", "i1", name="s")
    assert info.value.status_code == 200


@pytest.mark.anyio
async def test_success_false_on_2xx(api: FakeWorkflowsAPI, no_retry: WorkflowsSession) -> None:
    api.add_instance(
        "wf", "odd",
        b'{"success": false, "errors": [{"code": 9, "message": "half-broken"}], "result": null}',
    )
    with pytest.raises(APIResponseValidationError) as info:
        await no_retry.get_instance("wf", "odd")
    assert "half-broken" in str(info.value)
    assert info.value.status_code == 200


@pytest.mark.anyio
async def test_validation_errors_are_not_retried(api: FakeWorkflowsAPI, base_url: str) -> None:
    api.add_instance("wf", "broken", b"not json")
    async with WorkflowsSession(api_token=api.api_token, account_id=api.account_id,
                                base_url=base_url, rate_limit=None, max_retries=2) as s:
        with pytest.raises(APIResponseValidationError):
            await s.get_instance("wf", "broken")
    assert len(api.requests) == 1


# ---------------------------------------------------------------------------
# Hardening: no credential in any exception graph, bounded JSON answers, timeouts



ServeApp = Callable[[web.Application], AbstractAsyncContextManager[str]]
TOKEN, KEY, EMAIL = "tok-SECRET-77aa", "key-SECRET-19bc", "mail-SECRET@example.com"
_LEAVES = (int, float, bool, type(None), type, types.ModuleType, types.FunctionType,
           types.MethodType, types.BuiltinFunctionType, types.TracebackType, types.FrameType,
           types.CodeType)


def assert_no_secret(exc: BaseException, *secrets: str) -> None:
    """Walk ``exc``'s attributes, args, cause and context (not tracebacks): no secret."""
    seen: set[int] = set()

    def walk(obj: object, where: str, depth: int) -> None:
        if depth > 12 or id(obj) in seen or isinstance(obj, _LEAVES):
            return
        seen.add(id(obj))
        if isinstance(obj, (str, bytes, bytearray)):
            text = obj if isinstance(obj, str) else bytes(obj).decode("latin-1")
            for secret in secrets:
                assert secret not in text, f"a credential is reachable at {where}"
            return
        if isinstance(obj, BaseException):
            walk(str(obj), where + ".__str__()", depth + 1)
            walk(obj.args, where + ".args", depth + 1)
            walk(obj.__cause__, where + ".__cause__", depth + 1)
            walk(obj.__context__, where + ".__context__", depth + 1)
        if isinstance(obj, Mapping) or callable(getattr(obj, "items", None)):
            for k, v in list(obj.items()):  # type: ignore[attr-defined]
                walk(k, f"{where}[key]", depth + 1)
                walk(v, f"{where}[{k!r}]", depth + 1)
        elif isinstance(obj, (list, tuple, set, frozenset)):
            for i, v in enumerate(obj):
                walk(v, f"{where}[{i}]", depth + 1)
        for name, value in _fields(obj):
            walk(value, f"{where}.{name}", depth + 1)

    walk(exc, type(exc).__name__, 0)


def _fields(obj: object) -> list[tuple[str, object]]:
    out = list(getattr(obj, "__dict__", {}).items())
    for cls in type(obj).__mro__:
        slots = cls.__dict__.get("__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if hasattr(obj, name):
                out.append((name, getattr(obj, name)))
    return out


def _hostile_app(requests: list[str]) -> web.Application:
    """Each workflow name is a way to fail."""

    async def handler(request: web.Request) -> web.StreamResponse:
        mode = request.match_info["wf"]
        requests.append(mode)
        if mode == "slow":
            await asyncio.sleep(30)
        if mode == "bighdr":
            return web.Response(headers={"X-Big": "h" * 9000})
        if mode in ("s401", "s500"):
            return web.json_response({"success": False}, status=int(mode[1:]))
        resp = web.StreamResponse(status=200)
        resp.content_type = "application/octet-stream" if mode == "stream" else "application/json"
        resp.content_length = 10_000
        await resp.prepare(request)
        await resp.write(b"{" + b" " * 99)
        return resp  # ends the body 9,900 bytes short

    app = web.Application()
    app.router.add_get("/v4/accounts/a/workflows/{wf}/instances/i", handler)
    app.router.add_get("/v4/accounts/a/workflows/{wf}/instances/i/step", handler)
    return app


@pytest.mark.anyio
@pytest.mark.parametrize("auth", ["token", "global key"])
@pytest.mark.parametrize("mode", ["refused", "slow", "bighdr", "s401", "s500", "trunc", "stream"])
async def test_no_credential_reachable_from_any_raised_error(
    serve_app: ServeApp, auth: str, mode: str
) -> None:
    creds: dict[str, Any] = (
        {"api_token": TOKEN} if auth == "token" else {"api_email": EMAIL, "api_key": KEY}
    )
    requests: list[str] = []
    async with serve_app(_hostile_app(requests)) as root:
        if mode == "refused":
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                root = f"http://127.0.0.1:{probe.getsockname()[1]}"
        async with WorkflowsSession(
            **creds, account_id="a", base_url=root + "/v4", rate_limit=None, max_retries=0,
            timeout=0.5,
        ) as s:
            with pytest.raises(WorkflowsError) as caught, anyio.fail_after(20):
                await _fetch(s, mode)
    assert_no_secret(caught.value, TOKEN, KEY, EMAIL)
    if mode == "bighdr":
        assert isinstance(caught.value, APIConnectionError)


async def _fetch(s: WorkflowsSession, mode: str, call: str = "") -> object:
    """get_step_output (read through) for the stream modes, else get_instance."""
    if mode == "stream" or call == "get_step_output":
        out = await s.get_step_output(mode if mode == "stream" else "w", "i", name="x")
        return out if isinstance(out, StepOutput) else await out.read()
    return await s.get_instance(mode or "w", "i")


def _gzip_bomb(size: int) -> bytes:
    """``size`` spaces inside a JSON string, gzipped, built without compressing them all.

    After a full flush a deflate stream forgets its history, so every further MiB of
    spaces compresses to the same bytes: compress one, repeat it, and write the gzip
    trailer (CRC-32 and length of the whole text) ourselves.
    """
    head = b'{"success":true,"result":{"status":"running","x":"'
    tail = b'"}}'
    block = b" " * (1 << 20)
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = packer.compress(head + block) + packer.flush(zlib.Z_FULL_FLUSH)
    repeat = packer.compress(block) + packer.flush(zlib.Z_FULL_FLUSH)
    end = packer.compress(tail) + packer.flush()
    blocks = size >> 20
    crc = zlib.crc32(head)
    for _ in range(blocks):
        crc = zlib.crc32(block, crc)
    crc = zlib.crc32(tail, crc)
    length = len(head) + blocks * len(block) + len(tail)
    gzip_header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    trailer = struct.pack("<II", crc, length & 0xFFFFFFFF)
    return gzip_header + first + repeat * (blocks - 1) + end + trailer


_RSS_PROBE = textwrap.dedent(
    """
    import sys, anyio
    from cfwf_async import OutputTooLargeError, WorkflowsSession

    def hwm_kib():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])

    async def main():
        async with WorkflowsSession(api_token="t", account_id="a", base_url=sys.argv[1],
                                    rate_limit=None, max_retries=2) as s:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            before = hwm_kib()
            try:
                await s.get_instance("w", "i")
            except OutputTooLargeError as exc:
                print("raised", exc.limit)
            print("growth_mib", (hwm_kib() - before) // 1024)

    anyio.run(main)
    """
)


@pytest.mark.anyio
async def test_a_gzip_bomb_raises_output_too_large_within_bounded_memory(
    serve_app: ServeApp,
) -> None:
    bomb = await anyio.to_thread.run_sync(_gzip_bomb, 1 << 30)
    assert len(bomb) < 2 << 20
    served: list[int] = []

    async def handler(request: web.Request) -> web.Response:
        served.append(1)
        return web.Response(
            body=bomb, content_type="application/json", headers={"Content-Encoding": "gzip"}
        )

    app = web.Application()
    app.router.add_get("/v4/accounts/a/workflows/w/instances/i", handler)
    async with serve_app(app) as root:
        done = await anyio.run_process(
            [sys.executable, "-c", _RSS_PROBE, root + "/v4"], check=False
        )
    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert f"raised {64 << 20}" in out
    growth = int(out.split("growth_mib")[1])
    assert growth < 200, f"peak RSS grew {growth} MiB reading a 1 GiB gzip bomb"
    assert served == [1], "OutputTooLargeError must not be retried"


def _endless_app(status: int, requests: list[int]) -> web.Application:
    async def handler(request: web.Request) -> web.StreamResponse:
        requests.append(1)
        resp = web.StreamResponse(status=status)
        resp.content_type = "application/json"
        await resp.prepare(request)  # chunked: no Content-Length
        await resp.write(b'{"success":true,"result":{"x":"')
        while True:
            await resp.write(b" " * 65536)

    app = web.Application()
    app.router.add_get("/v4/accounts/a/workflows/w/instances/i", handler)
    app.router.add_get("/v4/accounts/a/workflows/w/instances/i/step", handler)
    return app


@pytest.mark.anyio
@pytest.mark.parametrize("status", [200, 500])
@pytest.mark.parametrize("call", ["get_instance", "get_step_output"])
async def test_an_endless_json_body_raises_once_past_max_response_bytes(
    serve_app: ServeApp, status: int, call: str
) -> None:
    requests: list[int] = []
    async with serve_app(_endless_app(status, requests)) as root, WorkflowsSession(
        api_token="t", account_id="a", base_url=root + "/v4", rate_limit=None,
        max_response_bytes=1 << 20, timeout=30,
    ) as s:
        with anyio.fail_after(20), pytest.raises(OutputTooLargeError) as caught:
            await _fetch(s, "", call)
    assert caught.value.limit == 1 << 20
    assert "max_response_bytes" in str(caught.value)
    assert requests == [1]  # not retried


@pytest.mark.anyio
async def test_content_length_over_max_response_bytes_fails_before_reading(
    fake_api: FakeWorkflowsAPI, base_url: str
) -> None:
    fake_api.add_instance("w", "i", make_instance("running", steps=50))
    async with WorkflowsSession(
        api_token=fake_api.api_token, account_id=fake_api.account_id, base_url=base_url,
        rate_limit=None, max_response_bytes=100,
    ) as s:
        with pytest.raises(OutputTooLargeError) as caught:
            await s.get_instance("w", "i")
    assert caught.value.size is not None
    assert caught.value.size > 100
    assert len(fake_api.requests) == 1


@pytest.mark.anyio
async def test_timeout_bounds_a_trickling_json_step_output_answer(serve_app: ServeApp) -> None:
    requests: list[int] = []
    body = b'{"success":true,"result":{"status":"complete","output":"' + b"a" * 40 + b'"}}'

    async def trickle(request: web.Request) -> web.StreamResponse:
        requests.append(1)
        resp = web.StreamResponse()
        resp.content_type = "application/json"
        resp.content_length = len(body)
        await resp.prepare(request)
        for i in range(0, len(body), 4):  # 4 bytes every 0.3 s: ~9 s in all
            await resp.write(body[i : i + 4])
            await asyncio.sleep(0.3)
        return resp

    app = web.Application()
    app.router.add_get("/v4/accounts/a/workflows/w/instances/i/step", trickle)
    async with serve_app(app) as root, WorkflowsSession(
        api_token="t", account_id="a", base_url=root + "/v4", rate_limit=None, timeout=1,
        max_retries=1, retry_budget=None,
    ) as s:
        with anyio.fail_after(15), pytest.raises(APITimeoutError):
            await s.get_step_output("w", "i", name="x")
    assert requests == [1, 1]  # each attempt timed out; one retry
