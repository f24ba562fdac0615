"""The exception tree, and every error answer mapped end to end over loopback."""

from __future__ import annotations

from typing import Any

import pytest

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
    StreamError,
    WorkflowsError,
    WorkflowsSession,
)
from cfwf_async.models import ErrorItem
from cfwf_async.testing import FakeWorkflowsAPI, make_instance

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
    api.fail_next(status, errors=[(7000 + status, f"Cloudflare says {status}"), (1, "and more")])
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
    api.fail_next(status, body=body, content_type=content_type, headers={"cf-ray": "edge-1"})
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
    api.fail_next(429, headers={"Retry-After": "17"})
    with pytest.raises(RateLimitError) as info:
        await no_retry.get_instance("wf", "i1")
    assert info.value.retry_after == 17
    assert "17" in str(info.value)


@pytest.mark.anyio
async def test_a_503_carries_its_retry_after(
    api: FakeWorkflowsAPI, no_retry: WorkflowsSession
) -> None:
    api.fail_next(503, headers={"Retry-After": "5"})
    with pytest.raises(InternalServerError) as info:
        await no_retry.get_instance("wf", "i1")
    assert info.value.retry_after == 5


@pytest.mark.anyio
async def test_rate_limit_without_retry_after(
    api: FakeWorkflowsAPI, no_retry: WorkflowsSession
) -> None:
    api.fail_next(429, headers={"Retry-After": "whenever"})
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
    api.fail_next(200, body=body)
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
