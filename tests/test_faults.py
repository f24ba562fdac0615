"""The fault-injection API of cfwf_async.testing: what each Fault does on the wire.

These tests check the fake API itself (status, headers, bodies, timing, counters), so a
user who scripts faults for their own retry handling gets what the docs promise.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from cfwf_async import (
    APIConnectionError,
    APIResponseValidationError,
    APITimeoutError,
    InternalServerError,
    RateLimitError,
    StepStream,
    StreamError,
    WorkflowsSession,
)
from cfwf_async.testing import FakeWorkflowsAPI, Fault, StreamBody, make_instance

WF, ID = "checkout", "order-1"


@pytest.fixture
async def api() -> AsyncIterator[FakeWorkflowsAPI]:
    fake = FakeWorkflowsAPI()
    fake.add_instance(WF, ID, make_instance())
    fake.add_step_output(WF, ID, "export-1", StreamBody.repeat(40_000, chunk_size=4_000))
    async with fake.serve():
        yield fake


@pytest.fixture
async def raw(api: FakeWorkflowsAPI) -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp client, to look at exactly what the fake sends."""
    async with aiohttp.ClientSession(
        headers={"Authorization": f"Bearer {api.api_token}"}
    ) as http:
        yield http


def url(api: FakeWorkflowsAPI, step: bool = False) -> str:
    assert api.base_url is not None
    path = f"{api.base_url}/accounts/{api.account_id}/workflows/{WF}/instances/{ID}"
    return path + "/step?name=export-1&type=step" if step else path


def session(api: FakeWorkflowsAPI, **kwargs: Any) -> WorkflowsSession:
    kwargs.setdefault("rate_limit", None)
    kwargs.setdefault("max_retries", 0)
    return WorkflowsSession(
        api_token=api.api_token, account_id=api.account_id, base_url=api.base_url, **kwargs
    )


# ---------------------------------------------------------------------------
# Canned answers


@pytest.mark.anyio
async def test_http_fault_sends_an_envelope_with_the_status(
    api: FakeWorkflowsAPI, raw: aiohttp.ClientSession
) -> None:
    api.inject(Fault.http(503, errors=[(7003, "try later")], headers={"X-Extra": "1"}))
    async with raw.get(url(api)) as resp:
        body = await resp.json()
        assert resp.status == 503
        assert resp.headers["X-Extra"] == "1"
        assert resp.headers["cf-ray"].endswith("-FAKE")
    assert body["success"] is False
    assert body["errors"] == [{"code": 7003, "message": "try later"}]
    async with raw.get(url(api)) as resp:
        assert resp.status == 200  # one time only, then the real answer


@pytest.mark.anyio
async def test_rate_limit_fault_sets_retry_after(
    api: FakeWorkflowsAPI, raw: aiohttp.ClientSession
) -> None:
    api.inject(Fault.rate_limit(2))
    api.inject(Fault.rate_limit(0.5))
    api.inject(Fault.rate_limit(None))
    seen = []
    for _ in range(3):
        async with raw.get(url(api)) as resp:
            assert resp.status == 429
            seen.append(resp.headers.get("Retry-After"))
    assert seen == ["2", "0.5", None]


@pytest.mark.anyio
@pytest.mark.parametrize("status", [502, 504, 520, 521, 522, 523, 524, 525, 526, 527])
async def test_edge_page_is_html(
    api: FakeWorkflowsAPI, raw: aiohttp.ClientSession, status: int
) -> None:
    api.inject(Fault.edge_page(status))
    async with raw.get(url(api)) as resp:
        text = await resp.text()
        assert resp.status == status
        assert resp.content_type == "text/html"
    assert f"Error code {status}" in text
    assert api.injected == {f"edge {status}": 1}


@pytest.mark.anyio
async def test_malformed_body_is_refused_as_invalid(api: FakeWorkflowsAPI) -> None:
    api.inject(Fault.malformed())
    api.inject(Fault.malformed(200, body=b'{"success": true, "result": 42}'))
    async with session(api) as s:
        for _ in range(2):
            with pytest.raises(APIResponseValidationError) as info:
                await s.get_instance(WF, ID)
            assert info.value.status_code == 200


# ---------------------------------------------------------------------------
# Transport faults


@pytest.mark.anyio
async def test_reset_drops_the_connection_before_any_answer(
    api: FakeWorkflowsAPI, raw: aiohttp.ClientSession
) -> None:
    # aiohttp resends an idempotent request once after a dropped connection, so it
    # takes two resets in a row for a GET to fail.
    api.inject(Fault.reset(), times=2)
    with pytest.raises((aiohttp.ClientOSError, aiohttp.ServerDisconnectedError)):
        async with raw.get(url(api)):
            pass
    assert [r.fault for r in api.requests] == ["reset", "reset"]
    api.inject(Fault.reset(), times=2)
    async with session(api) as s:
        with pytest.raises(APIConnectionError) as info:
            await s.get_instance(WF, ID)
    assert not isinstance(info.value, APITimeoutError)
    assert info.value.cf_ray is None  # no answer, so no ray id


@pytest.mark.anyio
async def test_delay_outlasts_the_timeout_and_holds_the_answer(api: FakeWorkflowsAPI) -> None:
    api.inject(Fault.delay(5.0))
    async with session(api, timeout=0.2) as s:
        started = time.monotonic()
        with pytest.raises(APITimeoutError):
            await s.get_instance(WF, ID)
        assert time.monotonic() - started < 3.0  # the client gave up at its timeout
    api.inject(Fault.delay(0.3))
    async with session(api, timeout=5.0) as s:
        started = time.monotonic()
        inst = await s.get_instance(WF, ID)
        held = time.monotonic() - started
    assert inst.status == "complete"
    assert held >= 0.3 - 0.02  # the answer was held at least as long as asked


# ---------------------------------------------------------------------------
# Bodies delivered badly


@pytest.mark.anyio
async def test_truncate_announces_the_full_length_and_sends_part(
    api: FakeWorkflowsAPI, raw: aiohttp.ClientSession
) -> None:
    api.inject(Fault.truncate(0.25))
    async with raw.get(url(api, step=True)) as resp:
        assert resp.content_length == 40_000
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    api.inject(Fault.truncate(0.5, status=503))
    async with raw.get(url(api)) as resp:
        assert resp.status == 503
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    assert api.injected == {"truncate": 1, "truncate 503": 1}


@pytest.mark.anyio
async def test_bad_chunking_breaks_the_chunk_framing(api: FakeWorkflowsAPI) -> None:
    api.inject(Fault.bad_chunking(0.5))
    async with session(api, timeout=5.0) as s:
        out = await s.get_step_output(WF, ID, name="export-1")
        assert isinstance(out, StepStream)
        assert out.content_length is None  # sent chunked, whatever the size
        with pytest.raises(StreamError):
            await out.read()
        assert 0 < out.bytes_read <= 20_000


@pytest.mark.anyio
async def test_trickle_delivers_everything_slowly(api: FakeWorkflowsAPI) -> None:
    api.inject(Fault.trickle(chunk_size=4_000, interval=0.02))  # 10 pieces
    async with session(api, timeout=5.0) as s:
        started = time.monotonic()
        out = await s.get_step_output(WF, ID, name="export-1")
        assert isinstance(out, StepStream)
        data = await out.read()
        took = time.monotonic() - started
    assert data == b"x" * 40_000
    assert took >= 10 * 0.02 - 0.02


@pytest.mark.anyio
async def test_stall_sends_part_then_nothing(api: FakeWorkflowsAPI) -> None:
    api.inject(Fault.stall(0.5))
    async with session(api, timeout=0.3) as s:
        out = await s.get_step_output(WF, ID, name="export-1")
        assert isinstance(out, StepStream)
        with pytest.raises(APITimeoutError):
            await out.read()
        assert out.bytes_read == 20_000


# ---------------------------------------------------------------------------
# Scripting, random rates and counters


@pytest.mark.anyio
async def test_scripted_faults_come_in_order_then_the_real_answer(
    api: FakeWorkflowsAPI, raw: aiohttp.ClientSession
) -> None:
    api.inject(Fault.http(500))
    api.inject(Fault.edge_page(502), times=2)
    api.inject(Fault.http(503))
    statuses = []
    for _ in range(5):
        async with raw.get(url(api)) as resp:
            statuses.append(resp.status)
    assert statuses == [500, 502, 502, 503, 200]
    assert [r.fault for r in api.requests] == ["500", "edge 502", "edge 502", "503", None]
    assert api.injected == {"500": 1, "edge 502": 2, "503": 1}


@pytest.mark.anyio
async def test_scripted_faults_come_before_the_credential_check(api: FakeWorkflowsAPI) -> None:
    api.inject(Fault.http(503))
    async with WorkflowsSession(
        api_token="wrong", account_id=api.account_id, base_url=api.base_url,
        rate_limit=None, max_retries=0,
    ) as s:
        with pytest.raises(InternalServerError):
            await s.get_instance(WF, ID)


async def _labels(api: FakeWorkflowsAPI, calls: int) -> list[str | None]:
    api.requests.clear()
    async with session(api) as s:
        for _ in range(calls):
            with contextlib.suppress(InternalServerError, RateLimitError):
                await s.get_instance(WF, ID)
    return [r.fault for r in api.requests]


@pytest.mark.anyio
async def test_fault_rate_is_seeded_and_about_right(api: FakeWorkflowsAPI) -> None:
    mix = [Fault.http(500), Fault.http(503), Fault.rate_limit(0)]
    api.fault_rate(0.3, mix, seed=11)
    first = await _labels(api, 200)
    api.fault_rate(0.3, mix, seed=11)
    again = await _labels(api, 200)
    api.fault_rate(0.3, mix, seed=12)
    other = await _labels(api, 200)
    assert first == again  # same seed, same sequence
    assert first != other
    hits = [label for label in first if label is not None]
    assert 40 <= len(hits) <= 80  # 30% of 200, within a generous margin
    assert set(hits) == {"500", "503", "429"}


@pytest.mark.anyio
async def test_rate_zero_and_one_and_clear(api: FakeWorkflowsAPI) -> None:
    api.fault_rate(1.0, [Fault.http(500)])
    assert set(await _labels(api, 10)) == {"500"}
    api.fault_rate(0, [])
    assert set(await _labels(api, 10)) == {None}
    api.fault_rate(1.0, [Fault.http(500)])
    api.inject(Fault.http(503), times=3)
    api.clear_faults()
    assert set(await _labels(api, 5)) == {None}
    assert api.injected["500"] == 10  # counters survive clear_faults


def test_bad_arguments_are_refused() -> None:
    api = FakeWorkflowsAPI()
    with pytest.raises(ValueError, match="status"):
        Fault.http(99)
    with pytest.raises(ValueError, match="status"):
        Fault.edge_page(500)
    with pytest.raises(ValueError, match="keep"):
        Fault.truncate(1.0)
    with pytest.raises(ValueError, match="seconds"):
        Fault.delay(-1)
    with pytest.raises(ValueError, match="chunk_size"):
        Fault.trickle(0)
    with pytest.raises(TypeError, match="fault"):
        api.inject(503)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="times"):
        api.inject(Fault.reset(), times=-1)
    with pytest.raises(ValueError, match="rate"):
        api.fault_rate(1.5, [Fault.reset()])
    with pytest.raises(ValueError, match="mix"):
        api.fault_rate(0.5, [])
    with pytest.raises(TypeError, match="mix"):
        api.fault_rate(0.5, [500])  # type: ignore[list-item]
