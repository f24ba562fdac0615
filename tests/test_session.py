"""WorkflowsSession over loopback: what goes on the wire, arguments, retries, 429 pauses.

Every test talks HTTP to a real aiohttp.web server (the fake API or a plain app).
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import json
import logging
import socket
import time
import warnings
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import anyio.lowlevel
import pytest
from aiohttp import web

from cfwf_async import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    Instance,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    RateLimit,
    RateLimitError,
    StepOutput,
    WorkflowsError,
    WorkflowsSession,
    __version__,
)
from cfwf_async.testing import FakeWorkflowsAPI, Fault, make_instance

ServeApp = Callable[[web.Application], AbstractAsyncContextManager[str]]

PREFIX = "/client/v4/accounts/test-account/workflows"


def plain_session(api: FakeWorkflowsAPI, base_url: str, **kw: Any) -> WorkflowsSession:
    """A session the test itself closes, or deliberately leaves unclosed (the conftest
    ``make_session`` fixture closes every session it made, which some tests here must
    not have done for them)."""
    kw.setdefault("rate_limit", None)
    kw.setdefault("api_token", api.api_token)
    kw.setdefault("account_id", api.account_id)
    return WorkflowsSession(base_url=base_url, **kw)


def fast_backoff(session: WorkflowsSession) -> WorkflowsSession:
    # Keep the jittered backoff tiny so retry tests are quick; Retry-After is unaffected.
    session._policy.base_delay = 0.01
    return session


@pytest.fixture
def api(fake_api: FakeWorkflowsAPI) -> FakeWorkflowsAPI:
    fake_api.add_instance("checkout", "order-981", make_instance("complete", steps=3))
    fake_api.add_step_output("checkout", "order-981", "fetch page-1", {"rows": 3})
    fake_api.add_step_output(
        "checkout", "order-981", "approval-1", "yes", type="waitForEvent", attempt=2
    )
    return fake_api


# ---------------------------------------------------------------------------
# What goes on the wire


@pytest.mark.anyio
async def test_get_instance_path_query_and_headers(
    api: FakeWorkflowsAPI, session: WorkflowsSession
) -> None:
    inst = await session.get_instance("checkout", "order-981", order="desc", simple=False)
    assert [s.name for s in inst.steps] == ["step 2-1", "step 1-1", "step 0-1"]
    (req,) = api.requests
    assert req.method == "GET"
    assert req.path == f"{PREFIX}/checkout/instances/order-981"
    assert req.raw_path == req.path
    assert req.query == {"order": "desc", "simple": "false"}
    assert req.match == {
        "account_id": "test-account", "workflow_name": "checkout", "instance_id": "order-981"
    }
    assert req.headers["Authorization"] == "Bearer test-token"
    assert req.headers["User-Agent"] == f"cfwf_async/{__version__}"
    assert req.headers["Accept"] == "application/json, application/octet-stream"
    assert "X-Auth-Key" not in req.headers
    assert "X-Auth-Email" not in req.headers


@pytest.mark.anyio
async def test_get_instance_sends_no_query_by_default(
    api: FakeWorkflowsAPI, session: WorkflowsSession
) -> None:
    inst = await session.get_instance("checkout", "order-981")
    assert [s.name for s in inst.steps] == ["step 0-1", "step 1-1", "step 2-1"]
    assert api.requests[0].query == {}


@pytest.mark.anyio
async def test_get_instance_simple_true(api: FakeWorkflowsAPI, session: WorkflowsSession) -> None:
    inst = await session.get_instance("checkout", "order-981", simple=True, order="asc")
    assert api.requests[0].query == {"simple": "true", "order": "asc"}
    assert inst.steps == []
    assert inst.step_count == 3


@pytest.mark.anyio
async def test_get_instance_json_is_the_apis_own_result(
    api: FakeWorkflowsAPI, session: WorkflowsSession
) -> None:
    result = dict(make_instance("running", steps=2), novel={"kept": [1, None]}, error=None)
    result["steps"].append({"type": "checkpoint", "name": "cp", "extra": None})
    api.add_instance("checkout", "order-982", result)
    raw, inst = await asyncio.gather(
        session.get_instance_json("checkout", "order-982", order="desc", simple=False),
        session.get_instance("checkout", "order-982", order="desc", simple=False),
    )
    # Both ran at once with one path and query, yet neither joined the other.
    newest_first = dict(result, steps=result["steps"][::-1])
    assert json.loads(raw) == json.loads(json.dumps(newest_first))
    assert isinstance(inst, Instance)
    assert len(api.requests) == 2
    assert api.requests[0].query == {"order": "desc", "simple": "false"}
    with pytest.raises(ValueError, match="order"):
        await session.get_instance_json("checkout", "order-982", order="up")
    assert len(api.requests) == 2


@pytest.mark.anyio
async def test_get_instance_json_checks_the_answer_like_get_instance(
    api: FakeWorkflowsAPI, session: WorkflowsSession
) -> None:
    api.inject(Fault.malformed(200, b'{"success": true, "result": {"status": 5}}'))
    with pytest.raises(APIResponseValidationError, match=r"\$\.result\.status"):
        await session.get_instance_json("checkout", "order-981")


@pytest.mark.anyio
async def test_get_step_output_query(api: FakeWorkflowsAPI, session: WorkflowsSession) -> None:
    out = await session.get_step_output(
        "checkout", "order-981", name="approval-1", type="waitForEvent", attempt=2
    )
    assert out == StepOutput(status="complete", error=None, output="yes")
    (req,) = api.requests
    assert req.path == f"{PREFIX}/checkout/instances/order-981/step"
    assert req.query == {"name": "approval-1", "type": "waitForEvent", "attempt": "2"}


@pytest.mark.anyio
async def test_get_step_output_defaults_and_encoded_name(
    api: FakeWorkflowsAPI, session: WorkflowsSession
) -> None:
    out = await session.get_step_output("checkout", "order-981", name="fetch page-1")
    assert isinstance(out, StepOutput)
    assert out.output == {"rows": 3}
    (req,) = api.requests
    assert req.query == {"name": "fetch page-1", "type": "step"}
    assert req.headers["Authorization"] == "Bearer test-token"


@pytest.mark.anyio
async def test_flat_step_output_body(api: FakeWorkflowsAPI, session: WorkflowsSession) -> None:
    api.inject(Fault.http(200, body=b'{"status": "waiting", "error": null, "output": null}'))
    out = await session.get_step_output("checkout", "order-981", name="approval-1")
    assert out == StepOutput(status="waiting", error=None, output=None)


@pytest.mark.anyio
async def test_global_key_headers() -> None:
    api = FakeWorkflowsAPI(api_token="unused", api_email="ops@example.com", api_key="gk-123")
    api.add_instance("wf", "i1", make_instance())
    async with api.serve() as url, WorkflowsSession(
        api_email="ops@example.com", api_key="gk-123", account_id=api.account_id,
        base_url=url, rate_limit=None,
    ) as s:
        await s.get_instance("wf", "i1")
    (req,) = api.requests
    assert req.headers["X-Auth-Email"] == "ops@example.com"
    assert req.headers["X-Auth-Key"] == "gk-123"
    assert "Authorization" not in req.headers
    assert req.headers["User-Agent"] == f"cfwf_async/{__version__}"


@pytest.mark.anyio
async def test_per_call_account_id(api: FakeWorkflowsAPI, session: WorkflowsSession) -> None:
    with pytest.raises(NotFoundError):
        await session.get_instance("checkout", "order-981", account_id="other-acc")
    assert api.requests[0].match["account_id"] == "other-acc"


# ---------------------------------------------------------------------------
# Credentials and configuration from the environment


@pytest.mark.anyio
async def test_env_token_account_and_base_url(
    api: FakeWorkflowsAPI, base_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLOUDFLARE_API_TOKEN", api.api_token)
    monkeypatch.setenv("CLOUDFLARE_ACCOUNT_ID", api.account_id)
    monkeypatch.setenv("CLOUDFLARE_BASE_URL", base_url)
    async with WorkflowsSession(rate_limit=None) as s:
        assert s.account_id == "test-account"
        assert s.base_url == base_url
        inst = await s.get_instance("checkout", "order-981")
    assert inst.status == "complete"
    assert api.requests[0].headers["Authorization"] == "Bearer test-token"


@pytest.mark.anyio
async def test_env_global_key(monkeypatch: pytest.MonkeyPatch) -> None:
    api = FakeWorkflowsAPI(api_token="unused", api_email="e@example.com", api_key="gk-9")
    api.add_instance("wf", "i1", make_instance())
    monkeypatch.setenv("CLOUDFLARE_EMAIL", "e@example.com")
    monkeypatch.setenv("CLOUDFLARE_API_KEY", "gk-9")
    monkeypatch.setenv("CLOUDFLARE_ACCOUNT_ID", api.account_id)
    async with api.serve() as url, WorkflowsSession(base_url=url, rate_limit=None) as s:
        await s.get_instance("wf", "i1")
    assert api.requests[0].headers["X-Auth-Key"] == "gk-9"
    assert api.requests[0].headers["X-Auth-Email"] == "e@example.com"


def test_explicit_arguments_beat_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUDFLARE_API_TOKEN", "env-token")
    monkeypatch.setenv("CLOUDFLARE_ACCOUNT_ID", "env-acc")
    monkeypatch.setenv("CLOUDFLARE_BASE_URL", "https://env.example.com/v4")
    s = WorkflowsSession(api_token="arg-token", account_id="arg-acc",
                         base_url="https://arg.example.com/v4")
    assert s._headers["Authorization"] == "Bearer arg-token"
    assert s.account_id == "arg-acc"
    assert s.base_url == "https://arg.example.com/v4"
    # A token in the environment is preferred over a global key in it.
    monkeypatch.setenv("CLOUDFLARE_API_KEY", "k")
    monkeypatch.setenv("CLOUDFLARE_EMAIL", "e")
    assert WorkflowsSession()._headers["Authorization"] == "Bearer env-token"


def test_default_base_url() -> None:
    s = WorkflowsSession(api_token="t")
    assert s.base_url == "https://api.cloudflare.com/client/v4"
    assert s.account_id is None


def test_a_token_with_a_newline_fails_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUDFLARE_API_TOKEN", "from-a-file\n")
    with pytest.raises(ValueError, match="CLOUDFLARE_API_TOKEN") as info:
        WorkflowsSession()
    assert "from-a-file" not in str(info.value)


def test_missing_credentials_fail_at_construction() -> None:
    with pytest.raises(ValueError, match="CLOUDFLARE_API_TOKEN"):
        WorkflowsSession(account_id="a")
    with pytest.raises(ValueError, match="api_email"):
        WorkflowsSession(api_key="only-key")
    with pytest.raises(ValueError, match="api_key"):
        WorkflowsSession(api_email="only@example.com")


@pytest.mark.parametrize(
    ("kwargs", "exc", "argname"),
    [
        ({"timeout": 0}, ValueError, "timeout"),
        ({"timeout": "5"}, TypeError, "timeout"),
        ({"max_retries": -1}, ValueError, "max_retries"),
        ({"max_retries": True}, TypeError, "max_retries"),
        ({"max_retries": 1.5}, TypeError, "max_retries"),
        ({"max_response_bytes": 0}, ValueError, "max_response_bytes"),
        ({"max_response_bytes": 2.0**20}, TypeError, "max_response_bytes"),
        ({"retry_after_cap": -1.0}, ValueError, "retry_after_cap"),
        ({"account_id": ""}, ValueError, "account_id"),
        ({"base_url": "http://api.example.com/v4"}, ValueError, "base_url"),
        ({"rate_limit": 5}, TypeError, "rate_limit"),
        ({"http_session": object()}, TypeError, "http_session"),
    ],
)
def test_bad_constructor_arguments(kwargs: dict[str, Any], exc: type[Exception],
                                   argname: str) -> None:
    with pytest.raises(exc, match=argname):
        WorkflowsSession(api_token="t", **kwargs)


# ---------------------------------------------------------------------------
# Bad arguments: refused before any request


BAD_CALLS: list[tuple[str, tuple[Any, ...], dict[str, Any], type[Exception], str]] = [
    ("get_instance", ("", "i"), {}, ValueError, "workflow_name"),
    ("get_instance", ("w" * 65, "i"), {}, ValueError, "workflow_name"),
    ("get_instance", (5, "i"), {}, TypeError, "workflow_name"),
    ("get_instance", (None, "i"), {}, TypeError, "workflow_name"),
    ("get_instance", ("wf", ""), {}, ValueError, "instance_id"),
    ("get_instance", ("wf", "i" * 1025), {}, ValueError, "instance_id"),
    ("get_instance", ("wf", 123), {}, TypeError, "instance_id"),
    ("get_instance", ("wf", "i"), {"order": "up"}, ValueError, "order"),
    ("get_instance", ("wf", "i"), {"order": "DESC"}, ValueError, "order"),
    ("get_instance", ("wf", "i"), {"simple": "true"}, TypeError, "simple"),
    ("get_instance", ("wf", "i"), {"simple": 1}, TypeError, "simple"),
    ("get_instance", ("wf", "i"), {"account_id": ""}, ValueError, "account_id"),
    ("get_instance", ("wf", "i"), {"account_id": 7}, TypeError, "account_id"),
    ("get_step_output", ("", "i"), {"name": "s"}, ValueError, "workflow_name"),
    ("get_step_output", ("w" * 65, "i"), {"name": "s"}, ValueError, "workflow_name"),
    ("get_step_output", ("wf", ""), {"name": "s"}, ValueError, "instance_id"),
    ("get_step_output", ("wf", "i" * 1025), {"name": "s"}, ValueError, "instance_id"),
    ("get_step_output", ("wf", "i"), {"name": ""}, ValueError, "name"),
    ("get_step_output", ("wf", "i"), {"name": None}, TypeError, "name"),
    ("get_step_output", ("wf", "i"), {"name": "s", "type": "sleep"}, ValueError, "type"),
    ("get_step_output", ("wf", "i"), {"name": "s", "type": ""}, ValueError, "type"),
    ("get_step_output", ("wf", "i"), {"name": "s", "attempt": 0}, ValueError, "attempt"),
    ("get_step_output", ("wf", "i"), {"name": "s", "attempt": -1}, ValueError, "attempt"),
    ("get_step_output", ("wf", "i"), {"name": "s", "attempt": True}, TypeError, "attempt"),
    ("get_step_output", ("wf", "i"), {"name": "s", "attempt": "1"}, TypeError, "attempt"),
    ("get_step_output", ("wf", "i"), {"name": "s", "attempt": 1.0}, TypeError, "attempt"),
    ("get_step_output", ("wf", "i"), {"name": "s", "account_id": ""}, ValueError, "account_id"),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("method", "args", "kwargs", "exc", "argname"), BAD_CALLS)
async def test_bad_arguments_send_nothing(
    api: FakeWorkflowsAPI,
    session: WorkflowsSession,
    method: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    exc: type[Exception],
    argname: str,
) -> None:
    with pytest.raises(exc) as info:
        await getattr(session, method)(*args, **kwargs)
    assert argname in str(info.value)
    assert api.requests == []


@pytest.mark.anyio
async def test_missing_account_names_the_env_var(api: FakeWorkflowsAPI, base_url: str) -> None:
    async with WorkflowsSession(api_token=api.api_token, base_url=base_url) as s:
        with pytest.raises(ValueError, match="CLOUDFLARE_ACCOUNT_ID"):
            await s.get_instance("checkout", "order-981")
        with pytest.raises(ValueError, match="CLOUDFLARE_ACCOUNT_ID"):
            await s.get_step_output("checkout", "order-981", name="fetch page-1")
        # A per-call account works without a default.
        inst = await s.get_instance("checkout", "order-981", account_id=api.account_id)
    assert inst.status == "complete"
    assert len(api.requests) == 1


# ---------------------------------------------------------------------------
# Paths cannot be escaped


# "." and ".." alone are refused at call time (see below); inside an id they are data.
ODD_IDS = ["a/b", "a?b=c", "a#frag", "100%", "%2F", "a b", "../x", "x/../../y",
           "../../../../etc/passwd", "a/./b", ";x=1", "é-ü", "..."]


@pytest.mark.anyio
@pytest.mark.parametrize("bad", [".", "..", "\ud800", "ok\udfffok"])
async def test_ids_the_wire_cannot_carry_are_refused_before_any_request(
    fake_api: FakeWorkflowsAPI, session: WorkflowsSession, bad: str
) -> None:
    with pytest.raises(ValueError, match="instance_id"):
        await session.get_instance("wf", bad)
    with pytest.raises(ValueError, match="instance_id"):
        await session.get_step_output("wf", bad, name="s")
    with pytest.raises(ValueError, match="instance_id"):
        await session.wait_for_instance("wf", bad)
    with pytest.raises(ValueError, match="workflow_name"):
        await session.get_instance(bad, "i")
    with pytest.raises(ValueError, match=r"instance_ids\[1\]"):
        session.get_instances("wf", ["fine", bad])
    assert fake_api.requests == []


@pytest.mark.anyio
@pytest.mark.parametrize("instance_id", ODD_IDS)
async def test_odd_ids_reach_the_instance_route(
    fake_api: FakeWorkflowsAPI, session: WorkflowsSession, instance_id: str
) -> None:
    fake_api.add_instance("wf", instance_id, make_instance(params={"id": instance_id}))
    fake_api.add_step_output("wf", instance_id, instance_id, "out")
    inst = await session.get_instance("wf", instance_id)
    assert inst.params == {"id": instance_id}
    out = await session.get_step_output("wf", instance_id, name=instance_id)
    assert isinstance(out, StepOutput)
    assert out.output == "out"
    for req in fake_api.requests:
        assert req.match["instance_id"] == instance_id
        assert req.match["workflow_name"] == "wf"
        assert req.match["account_id"] == "test-account"
        segments = req.raw_path.split("/")
        assert ".." not in segments
        assert "." not in segments
    assert fake_api.requests[1].query["name"] == instance_id


@pytest.mark.anyio
@pytest.mark.parametrize("workflow_name", ["..x", "../w", "a/b", "w?x", "w#y"])
async def test_odd_workflow_names_stay_one_segment(
    fake_api: FakeWorkflowsAPI, session: WorkflowsSession, workflow_name: str
) -> None:
    fake_api.add_instance(workflow_name, "i1", make_instance())
    await session.get_instance(workflow_name, "i1")
    assert fake_api.requests[0].match["workflow_name"] == workflow_name
    assert fake_api.requests[0].match["instance_id"] == "i1"


@pytest.mark.anyio
async def test_long_instance_ids(fake_api: FakeWorkflowsAPI, session: WorkflowsSession) -> None:
    cron_id = ("cron-" + "0-5-x-x-x-" * 15)[:149]
    assert len(cron_id) == 149
    fake_api.add_instance("wf", cron_id, make_instance())
    inst = await session.get_instance("wf", cron_id)
    assert inst.status == "complete"
    assert fake_api.requests[0].match["instance_id"] == cron_id
    longest = "i" * 1024
    fake_api.add_instance("wf", longest, make_instance())
    await session.get_instance("wf", longest)
    assert fake_api.requests[1].match["instance_id"] == longest
    with pytest.raises(ValueError, match="instance_id"):
        await session.get_instance("wf", "i" * 1025)
    assert len(fake_api.requests) == 2


# ---------------------------------------------------------------------------
# 429 and Retry-After


@pytest.mark.anyio
@pytest.mark.parametrize("limiter", [None, "default"])
async def test_long_retry_after_raises_at_once_and_blocks_the_session(
    api: FakeWorkflowsAPI, base_url: str, limiter: str | None
) -> None:
    kw: dict[str, Any] = {"rate_limit": RateLimit(1200, 300.0) if limiter else None}
    api.inject(Fault.http(
        429,
        errors=[(971, "Please wait and consider throttling your request speed")],
        headers={"Retry-After": "300"},
    ))
    async with plain_session(api, base_url, **kw) as s:
        started = time.monotonic()
        with anyio.fail_after(5), pytest.raises(RateLimitError) as info:
            await s.get_instance("checkout", "order-981")
        assert time.monotonic() - started < 5  # hang guard, not a performance check
        assert info.value.retry_after == 300
        assert info.value.status_code == 429
        assert "throttling" in str(info.value)
        assert len(api.requests) == 1

        # While the pause lasts, the session fails fast without sending anything.
        with anyio.fail_after(5), pytest.raises(RateLimitError) as again:
            await s.get_step_output("checkout", "order-981", name="fetch page-1")
        assert again.value.retry_after is not None
        assert 290 < again.value.retry_after <= 300
        with anyio.fail_after(5), pytest.raises(RateLimitError):
            await s.get_instance("checkout", "order-981")
        assert len(api.requests) == 1


@pytest.mark.anyio
async def test_retry_after_cap_is_configurable(api: FakeWorkflowsAPI, base_url: str) -> None:
    api.inject(Fault.http(429, headers={"Retry-After": "2"}))
    async with plain_session(api, base_url, retry_after_cap=1.0) as s:
        with anyio.fail_after(5), pytest.raises(RateLimitError) as info:
            await s.get_instance("checkout", "order-981")
    assert info.value.retry_after == 2
    assert len(api.requests) == 1


@pytest.mark.anyio
@pytest.mark.parametrize("limiter", [None, "default"])
async def test_short_retry_after_is_honoured(
    api: FakeWorkflowsAPI, base_url: str, limiter: str | None
) -> None:
    kw: dict[str, Any] = {"rate_limit": RateLimit(1200, 300.0) if limiter else None}
    api.inject(Fault.http(429, headers={"Retry-After": "0.3"}))
    async with plain_session(api, base_url, max_retries=1, **kw) as s:
        started = time.monotonic()
        inst = await s.get_instance("checkout", "order-981")
        waited = time.monotonic() - started
    assert inst.status == "complete"
    assert len(api.requests) == 2
    assert waited >= 0.25  # the pause held (behaviour, with a tolerance)


@pytest.mark.anyio
async def test_retry_after_zero_retries_at_once(api: FakeWorkflowsAPI, base_url: str) -> None:
    api.inject(Fault.http(429, headers={"Retry-After": "0"}))
    async with plain_session(api, base_url, max_retries=1) as s:
        inst = await s.get_instance("checkout", "order-981")
    assert inst.status == "complete"
    assert len(api.requests) == 2


@pytest.mark.anyio
async def test_429_without_retry_after_and_no_retries(
    api: FakeWorkflowsAPI, base_url: str
) -> None:
    api.inject(Fault.http(429))
    async with plain_session(api, base_url, max_retries=0) as s:
        with pytest.raises(RateLimitError) as info:
            await s.get_instance("checkout", "order-981")
        assert info.value.retry_after is None
        # No pause was recorded: the next call goes out.
        assert (await s.get_instance("checkout", "order-981")).status == "complete"
    assert len(api.requests) == 2


# ---------------------------------------------------------------------------
# Retries


@pytest.mark.anyio
async def test_503_twice_then_success(api: FakeWorkflowsAPI, base_url: str) -> None:
    api.inject(Fault.http(503), times=2)
    async with plain_session(api, base_url, max_retries=2) as s:
        inst = await fast_backoff(s).get_instance("checkout", "order-981")
    assert inst.status == "complete"
    assert len(api.requests) == 3


@pytest.mark.anyio
async def test_retries_run_out(api: FakeWorkflowsAPI, base_url: str) -> None:
    api.inject(Fault.http(503), times=3)
    async with plain_session(api, base_url, max_retries=2) as s:
        with pytest.raises(InternalServerError) as info:
            await fast_backoff(s).get_step_output("checkout", "order-981", name="fetch page-1")
    assert info.value.status_code == 503
    assert len(api.requests) == 3


@pytest.mark.anyio
@pytest.mark.parametrize("status", [408, 409, 500, 502, 504, 520])
async def test_retryable_statuses(api: FakeWorkflowsAPI, base_url: str, status: int) -> None:
    api.inject(Fault.http(status))
    async with plain_session(api, base_url, max_retries=1) as s:
        inst = await fast_backoff(s).get_instance("checkout", "order-981")
    assert inst.status == "complete"
    assert len(api.requests) == 2


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("status", "cls"),
    [(400, BadRequestError), (401, AuthenticationError), (403, PermissionDeniedError),
     (404, NotFoundError), (418, APIStatusError), (422, APIStatusError)],
)
async def test_other_4xx_never_retry(
    api: FakeWorkflowsAPI, base_url: str, status: int, cls: type[APIStatusError]
) -> None:
    api.inject(Fault.http(status), times=3)
    async with plain_session(api, base_url, max_retries=2) as s:
        with pytest.raises(cls):
            await fast_backoff(s).get_instance("checkout", "order-981")
    assert len(api.requests) == 1


@pytest.mark.anyio
async def test_not_found_is_not_retried(api: FakeWorkflowsAPI, session: WorkflowsSession) -> None:
    with pytest.raises(NotFoundError) as info:
        await session.get_instance("checkout", "no-such-instance")
    assert info.value.errors[0].message == "instance.not_found"
    assert len(api.requests) == 1


@pytest.mark.anyio
async def test_max_retries_zero(api: FakeWorkflowsAPI, base_url: str) -> None:
    api.inject(Fault.http(503))
    async with plain_session(api, base_url, max_retries=0) as s:
        with pytest.raises(InternalServerError):
            await s.get_instance("checkout", "order-981")
    assert len(api.requests) == 1


@pytest.mark.anyio
async def test_connection_errors_are_retried(serve_app: ServeApp) -> None:
    calls = 0

    async def flaky(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        if calls == 1:
            assert request.transport is not None
            request.transport.abort()  # drop the connection without an answer
        return web.json_response({"success": True, "result": {"status": "complete"}})

    app = web.Application()
    app.router.add_get("/v4/accounts/a/workflows/w/instances/i", flaky)
    async with serve_app(app) as root, WorkflowsSession(
        api_token="t", account_id="a", base_url=root + "/v4", rate_limit=None, max_retries=1
    ) as s:
        inst = await fast_backoff(s).get_instance("w", "i")
    assert inst.status == "complete"
    assert calls == 2


# ---------------------------------------------------------------------------
# Transport failures


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.anyio
async def test_connection_refused() -> None:
    url = f"http://127.0.0.1:{free_port()}/client/v4"
    async with WorkflowsSession(api_token="tok-REFUSED-secret", account_id="a", base_url=url,
                                rate_limit=None, max_retries=0) as s:
        with anyio.fail_after(10), pytest.raises(APIConnectionError) as info:
            await s.get_instance("wf", "i")
    assert not isinstance(info.value, APITimeoutError)
    assert isinstance(info.value, WorkflowsError)
    assert "tok-REFUSED-secret" not in str(info.value)
    assert "/instances/i" in str(info.value)


@pytest.mark.anyio
async def test_slow_server_times_out(serve_app: ServeApp) -> None:
    release = anyio.Event()
    hits = 0

    async def slow(request: web.Request) -> web.Response:
        nonlocal hits
        hits += 1
        await release.wait()
        return web.json_response({"success": True, "result": {"status": "complete"}})

    app = web.Application()
    app.router.add_get("/v4/accounts/a/workflows/w/instances/i", slow)
    async with serve_app(app) as root:
        try:
            async with WorkflowsSession(api_token="t", account_id="a", base_url=root + "/v4",
                                        rate_limit=None, max_retries=0, timeout=0.3) as s:
                started = time.monotonic()
                with anyio.fail_after(10), pytest.raises(APITimeoutError) as info:
                    await s.get_instance("w", "i")
                elapsed = time.monotonic() - started
        finally:
            release.set()
    assert isinstance(info.value, APIConnectionError)
    assert elapsed >= 0.25
    assert hits == 1


@pytest.mark.anyio
async def test_timeout_bounds_each_attempt(serve_app: ServeApp) -> None:
    release = anyio.Event()
    hits = 0

    async def slow(request: web.Request) -> web.Response:
        nonlocal hits
        hits += 1
        await release.wait()
        return web.json_response({"success": True, "result": {"status": "complete"}})

    app = web.Application()
    app.router.add_get("/v4/accounts/a/workflows/w/instances/i", slow)
    async with serve_app(app) as root:
        try:
            async with WorkflowsSession(api_token="t", account_id="a", base_url=root + "/v4",
                                        rate_limit=None, max_retries=1, timeout=0.2) as s:
                with anyio.fail_after(10), pytest.raises(APITimeoutError):
                    await fast_backoff(s).get_instance("w", "i")
        finally:
            release.set()
    assert hits == 2  # a timeout is retried, and each attempt gets its own timeout


def partial_json_app(release: anyio.Event | None) -> web.Application:
    """Sends the headers and part of a JSON body, then stalls (or drops the connection)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_type = "application/json"
        resp.content_length = 200
        await resp.prepare(request)
        await resp.write(b'{"success": true, "result": {"sta')
        if release is not None:
            await release.wait()
        else:
            assert request.transport is not None
            request.transport.close()
        return resp

    app = web.Application()
    app.router.add_get("/v4/accounts/a/workflows/w/instances/i", handler)
    return app


@pytest.mark.anyio
async def test_json_body_that_stalls_times_out(serve_app: ServeApp) -> None:
    release = anyio.Event()
    async with serve_app(partial_json_app(release)) as root:
        try:
            async with WorkflowsSession(api_token="t", account_id="a", base_url=root + "/v4",
                                        rate_limit=None, max_retries=0, timeout=0.3) as s:
                with anyio.fail_after(10), pytest.raises(APITimeoutError):
                    await s.get_instance("w", "i")
        finally:
            release.set()


@pytest.mark.anyio
async def test_json_body_that_breaks_off(serve_app: ServeApp) -> None:
    async with serve_app(partial_json_app(None)) as root, WorkflowsSession(
        api_token="t", account_id="a", base_url=root + "/v4", rate_limit=None, max_retries=0
    ) as s:
        with anyio.fail_after(10), pytest.raises(APIResponseValidationError) as info:
            await s.get_instance("w", "i")
    # Issue 3: a 2xx JSON body cut short is a body that does not decode (not retried);
    # tests/test_reliability.py covers the non-2xx case (mapped and retried by status).
    assert info.value.status_code == 200


@pytest.mark.anyio
async def test_redirects_are_not_followed(api: FakeWorkflowsAPI, base_url: str) -> None:
    elsewhere = FakeWorkflowsAPI()
    async with elsewhere.serve() as other_url:
        target = other_url + "/accounts/test-account/workflows/checkout/instances/order-981"
        api.inject(Fault.http(302, body=b"", headers={"Location": target}))
        async with plain_session(api, base_url) as s:
            with pytest.raises(APIStatusError) as info:
                await s.get_instance("checkout", "order-981")
    assert type(info.value) is APIStatusError
    assert info.value.status_code == 302
    assert len(api.requests) == 1
    assert elsewhere.requests == []


# ---------------------------------------------------------------------------
# Rate limit shared by every call of a session


@pytest.mark.anyio
async def test_session_rate_limit_holds_the_next_call(
    api: FakeWorkflowsAPI, base_url: str
) -> None:
    async with plain_session(api, base_url, rate_limit=RateLimit(2, 0.4)) as s:
        started = time.monotonic()
        await s.get_instance("checkout", "order-981")
        await s.get_step_output("checkout", "order-981", name="fetch page-1")
        await s.get_instance("checkout", "order-981")
        done = time.monotonic()
    assert len(api.requests) == 3
    # Two left at once; the third waited for the first to leave the 0.4 s window.
    assert done - started >= 0.35


# ---------------------------------------------------------------------------
# Lifetime, the caller's aiohttp session, leaks


@pytest.mark.anyio
async def test_callers_http_session_is_used_and_left_open(
    api: FakeWorkflowsAPI, base_url: str
) -> None:
    started: list[str] = []

    async def on_start(_s: Any, _ctx: Any, params: aiohttp.TraceRequestStartParams) -> None:
        started.append(params.url.path)

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_start)
    async with aiohttp.ClientSession(trace_configs=[trace]) as http:
        async with plain_session(api, base_url, http_session=http) as s:
            await s.get_instance("checkout", "order-981")
        assert s.closed
        assert not http.closed
        assert len(started) == 1
        assert started[0].endswith("/instances/order-981")
        # The caller's session still works after ours is gone.
        async with http.get(base_url + "/nowhere") as resp:
            assert resp.status == 404
    assert http.closed


@pytest.mark.anyio
async def test_aclose_without_async_with(api: FakeWorkflowsAPI, base_url: str) -> None:
    s = plain_session(api, base_url)
    inst = await s.get_instance("checkout", "order-981")
    assert inst.status == "complete"
    http = s._http
    assert http is not None
    await s.aclose()
    await s.aclose()  # idempotent
    assert http.closed
    assert s.closed
    with pytest.raises(RuntimeError, match="closed"):
        await s.get_instance("checkout", "order-981")
    assert len(api.requests) == 1


@pytest.mark.anyio
async def test_no_unclosed_warnings(
    api: FakeWorkflowsAPI, base_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with plain_session(api, base_url) as s:
            await s.get_instance("checkout", "order-981")
        s2 = plain_session(api, base_url)
        await s2.get_step_output("checkout", "order-981", name="fetch page-1")
        await s2.aclose()
        never_used = plain_session(api, base_url)
        del s, s2, never_used
        gc.collect()
        await anyio.lowlevel.checkpoint()  # let aiohttp's close callbacks run
        gc.collect()
    unclosed = [str(w.message) for w in caught if "nclosed" in str(w.message)]
    assert unclosed == []
    assert not [r for r in caplog.records if "nclosed" in r.getMessage()]


# ---------------------------------------------------------------------------
# Secrets


TOKEN = "tok-Zq9Secret-0123456789abcdef"


@pytest.mark.anyio
async def test_credentials_never_leak(
    serve_app: ServeApp, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    api = FakeWorkflowsAPI(api_token=TOKEN)
    api.add_instance("wf", "i1", make_instance())
    api.add_instance("wf", "bad", b"{not json")
    raised: list[BaseException] = []
    async with api.serve() as url:
        async with WorkflowsSession(api_token=TOKEN, account_id=api.account_id, base_url=url,
                                    rate_limit=None, max_retries=1) as s:
            assert TOKEN not in repr(s)
            await s.get_instance("wf", "i1")
            api.inject(Fault.http(503))
            await fast_backoff(s).get_instance("wf", "i1")  # a retry gets logged
            for failing in (
                s.get_instance("wf", "missing"),
                s.get_instance("wf", "bad"),
                s.get_instance("wf", "i1", account_id="nope"),
            ):
                try:
                    await failing
                except WorkflowsError as exc:
                    raised.append(exc)
        async with WorkflowsSession(api_token="wrong-" + TOKEN, account_id=api.account_id,
                                    base_url=url, rate_limit=None) as wrong:
            assert TOKEN not in repr(wrong)
            try:
                await wrong.get_instance("wf", "i1")
            except AuthenticationError as exc:
                raised.append(exc)
    keyed = WorkflowsSession(api_email="who@example.com", api_key="gk-" + TOKEN, account_id="a")
    assert TOKEN not in repr(keyed)
    assert "who@example.com" not in repr(keyed)
    try:
        WorkflowsSession(api_key="gk-" + TOKEN)
    except ValueError as exc:
        raised.append(exc)
    assert len(raised) == 5
    for exc in raised:
        assert TOKEN not in str(exc)
        assert TOKEN not in repr(exc)
        assert TOKEN not in repr(exc.args)
    assert caplog.records, "the session logs at DEBUG"
    for record in caplog.records:
        assert TOKEN not in record.getMessage()
        assert TOKEN not in repr(record.args)


# ---------------------------------------------------------------------------
# The README's runnable example

QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "quickstart.py"


@pytest.mark.anyio
async def test_quickstart_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("quickstart_example", QUICKSTART)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    await module.main()
    printed = capsys.readouterr().out
    assert "instance order-981: complete, 3 steps" in printed
    assert "5,242,880 bytes streamed" in printed


# ---------------------------------------------------------------------------
# Closing under calls in flight; server-supplied waits bounded by retry_after_cap


@pytest.mark.anyio
async def test_aclose_fails_calls_in_flight_with_a_workflows_error_and_no_retry(
    serve_app: ServeApp,
) -> None:
    arrived: list[int] = []
    all_in = anyio.Event()

    async def hang(request: web.Request) -> web.Response:
        arrived.append(1)
        if len(arrived) == 3:
            all_in.set()
        await anyio.sleep(30)
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/v4/accounts/a/workflows/w/instances/{id}", hang)
    outcomes: list[BaseException] = []
    async with serve_app(app) as root:
        s = WorkflowsSession(
            api_token="t", account_id="a", base_url=root + "/v4", rate_limit=None,
            max_retries=3, timeout=20,
        )

        async def call(n: int) -> None:
            try:
                await s.get_instance("w", f"i{n}")
            except BaseException as exc:
                outcomes.append(exc)

        with anyio.fail_after(15):
            async with anyio.create_task_group() as tg:
                for n in range(3):
                    tg.start_soon(call, n)
                await all_in.wait()
                await s.aclose()
        assert len(outcomes) == 3
        for exc in outcomes:
            assert isinstance(exc, APIConnectionError), repr(exc)
            assert "closed" in str(exc)
        assert len(arrived) == 3, "nothing may be retried after close"
        # A call made after close is a programming error, pinned as RuntimeError.
        with pytest.raises(RuntimeError, match="closed"):
            await s.get_instance("w", "i9")


class _HoldingLimiter:
    """A limiter that knows its server-imposed hold and honours acquire_within."""

    def __init__(self) -> None:
        self.until = 0.0
        self.pauses: list[float] = []
        self.within: list[float] = []
        self.acquired = 0

    async def acquire(self) -> None:
        await anyio.sleep(max(0.0, self.until - time.monotonic()))
        self.acquired += 1

    async def acquire_within(self, max_wait: float) -> None:
        self.within.append(max_wait)
        left = self.until - time.monotonic()
        if left > max_wait:
            raise RateLimitError("held by the limiter", retry_after=left)
        await self.acquire()

    async def pause(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.until = max(self.until, time.monotonic() + seconds)

    async def observe(self, info: Any) -> None:
        pass


def _429_app(retry_after: str, hits: list[int]) -> web.Application:
    async def limited(request: web.Request) -> web.Response:
        hits.append(1)
        return web.json_response(
            {"success": False, "errors": [{"code": 971, "message": "slow down"}]},
            status=429, headers={"Retry-After": retry_after},
        )

    app = web.Application()
    app.router.add_get("/v4/accounts/a/workflows/w/instances/i", limited)
    return app


@pytest.mark.anyio
async def test_a_pause_heard_by_one_session_fails_another_fast_past_its_cap(
    serve_app: ServeApp,
) -> None:
    hits: list[int] = []
    limiter = _HoldingLimiter()
    async with serve_app(_429_app("300", hits)) as root:
        common: dict[str, Any] = {
            "api_token": "t", "account_id": "a", "base_url": root + "/v4",
            "rate_limit": limiter, "max_retries": 0,
        }
        async with WorkflowsSession(retry_after_cap=600, **common) as patient, WorkflowsSession(
            retry_after_cap=5, **common
        ) as hasty:
            with pytest.raises(RateLimitError):
                await patient.get_instance("w", "i")
            assert limiter.pauses == [300.0]
            with anyio.fail_after(5), pytest.raises(RateLimitError) as caught:
                await hasty.get_instance("w", "i")
    assert caught.value.retry_after is not None
    assert caught.value.retry_after > 290
    assert limiter.within == [600, 5]
    assert hits == [1], "the hasty call must not have been sent"


@pytest.mark.anyio
async def test_a_server_wait_is_clamped_to_max_server_wait(serve_app: ServeApp) -> None:
    from cfwf_async._retry import MAX_SERVER_WAIT

    hits: list[int] = []
    limiter = _HoldingLimiter()
    async with serve_app(_429_app("1000000", hits)) as root, WorkflowsSession(
        api_token="t", account_id="a", base_url=root + "/v4", rate_limit=limiter,
        max_retries=0, retry_after_cap=10_000_000,
    ) as s:
        with pytest.raises(RateLimitError):
            await s.get_instance("w", "i")
        assert limiter.pauses == [MAX_SERVER_WAIT]
        # The session's own pause is clamped as well: a caller with a larger cap would
        # wait at most MAX_SERVER_WAIT, not the server's eleven days.
        assert s._gate.blocked_until - time.monotonic() <= MAX_SERVER_WAIT


@pytest.mark.anyio
async def test_a_limiter_with_only_the_protocol_methods_still_works(
    api: FakeWorkflowsAPI, base_url: str
) -> None:
    class Plain:
        def __init__(self) -> None:
            self.acquired = 0

        async def acquire(self) -> None:
            self.acquired += 1

        async def pause(self, seconds: float) -> None:
            pass

        async def observe(self, info: Any) -> None:
            pass

    plain = Plain()
    async with plain_session(api, base_url, rate_limit=plain) as s:
        await s.get_instance("checkout", "order-981")
    assert plain.acquired == 1
