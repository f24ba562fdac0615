"""The fault-injection API of cfwf_async.testing: what each typed Fault does on the wire.

These tests check the fake API itself (status, headers, bodies, timing, counters), so a
user who scripts faults for their own retry handling gets what the docs promise.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
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
from cfwf_async.testing import (
    Answer,
    BadChunking,
    BodyFault,
    Delay,
    FakeWorkflowsAPI,
    Fault,
    Reset,
    Stall,
    StreamBody,
    Trickle,
    Truncate,
    make_instance,
)

WF, ID = "checkout", "order-1"


@pytest.fixture
def api(fake_api: FakeWorkflowsAPI, base_url: str) -> FakeWorkflowsAPI:
    """The conftest fake API, serving one instance and one 40,000-byte streamed output."""
    fake_api.add_instance(WF, ID, make_instance())
    fake_api.add_step_output(WF, ID, "export-1", StreamBody.repeat(40_000, chunk_size=4_000))
    return fake_api


Connect = Callable[..., WorkflowsSession]


@pytest.fixture
def connect(make_session: Connect) -> Connect:
    """Sessions on the fake API that never retry, so each fault shows as it is."""

    def connect(**kwargs: Any) -> WorkflowsSession:
        kwargs.setdefault("max_retries", 0)
        return make_session(**kwargs)

    return connect


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
async def test_malformed_body_is_refused_as_invalid(
    api: FakeWorkflowsAPI, connect: Connect
) -> None:
    api.inject(Fault.malformed())
    api.inject(Fault.malformed(200, body=b'{"success": true, "result": 42}'))
    async with connect() as s:
        for _ in range(2):
            with pytest.raises(APIResponseValidationError) as info:
                await s.get_instance(WF, ID)
            assert info.value.status_code == 200


# ---------------------------------------------------------------------------
# Transport faults


@pytest.mark.anyio
async def test_reset_drops_the_connection_before_any_answer(
    api: FakeWorkflowsAPI, raw: aiohttp.ClientSession, connect: Connect
) -> None:
    # aiohttp resends an idempotent request once after a dropped connection, so it
    # takes two resets in a row for a GET to fail.
    api.inject(Fault.reset(), times=2)
    with pytest.raises((aiohttp.ClientOSError, aiohttp.ServerDisconnectedError)):
        async with raw.get(url(api)):
            pass
    assert [r.fault for r in api.requests] == ["reset", "reset"]
    api.inject(Fault.reset(), times=2)
    async with connect() as s:
        with pytest.raises(APIConnectionError) as info:
            await s.get_instance(WF, ID)
    assert not isinstance(info.value, APITimeoutError)
    assert info.value.cf_ray is None  # no answer, so no ray id


@pytest.mark.anyio
async def test_delay_outlasts_the_timeout_and_holds_the_answer(
    api: FakeWorkflowsAPI, connect: Connect
) -> None:
    api.inject(Fault.delay(5.0))
    async with connect(timeout=0.2) as s:
        started = time.monotonic()
        with pytest.raises(APITimeoutError):
            await s.get_instance(WF, ID)
        assert time.monotonic() - started < 3.0  # the client gave up at its timeout
    api.inject(Fault.delay(0.3))
    async with connect(timeout=5.0) as s:
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
async def test_bad_chunking_breaks_the_chunk_framing(
    api: FakeWorkflowsAPI, connect: Connect
) -> None:
    api.inject(Fault.bad_chunking(0.5))
    async with connect(timeout=5.0) as s:
        out = await s.get_step_output(WF, ID, name="export-1")
        assert isinstance(out, StepStream)
        assert out.content_length is None  # sent chunked, whatever the size
        with pytest.raises(StreamError):
            await out.read()
        assert 0 < out.bytes_read <= 20_000


@pytest.mark.anyio
async def test_trickle_delivers_everything_slowly(
    api: FakeWorkflowsAPI, connect: Connect
) -> None:
    api.inject(Fault.trickle(chunk_size=4_000, interval=0.02))  # 10 pieces
    async with connect(timeout=5.0) as s:
        started = time.monotonic()
        out = await s.get_step_output(WF, ID, name="export-1")
        assert isinstance(out, StepStream)
        data = await out.read()
        took = time.monotonic() - started
    assert data == b"x" * 40_000
    assert took >= 10 * 0.02 - 0.02


@pytest.mark.anyio
async def test_stall_sends_part_then_nothing(
    api: FakeWorkflowsAPI, connect: Connect
) -> None:
    api.inject(Fault.stall(0.5))
    async with connect(timeout=0.3) as s:
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
async def test_scripted_faults_come_before_the_credential_check(
    api: FakeWorkflowsAPI, connect: Connect
) -> None:
    api.inject(Fault.http(503))
    async with connect(api_token="wrong") as s:
        with pytest.raises(InternalServerError):
            await s.get_instance(WF, ID)


async def _labels(api: FakeWorkflowsAPI, connect: Connect, calls: int) -> list[str | None]:
    api.requests.clear()
    async with connect() as s:
        for _ in range(calls):
            with contextlib.suppress(InternalServerError, RateLimitError):
                await s.get_instance(WF, ID)
    return [r.fault for r in api.requests]


@pytest.mark.anyio
async def test_fault_rate_is_seeded_and_about_right(
    api: FakeWorkflowsAPI, connect: Connect
) -> None:
    mix = [Fault.http(500), Fault.http(503), Fault.rate_limit(0)]
    api.fault_rate(0.3, mix, seed=11)
    first = await _labels(api, connect, 200)
    api.fault_rate(0.3, mix, seed=11)
    again = await _labels(api, connect, 200)
    api.fault_rate(0.3, mix, seed=12)
    other = await _labels(api, connect, 200)
    assert first == again  # same seed, same sequence
    assert first != other
    hits = [label for label in first if label is not None]
    assert 40 <= len(hits) <= 80  # 30% of 200, within a generous margin
    assert set(hits) == {"500", "503", "429"}


@pytest.mark.anyio
async def test_rate_zero_and_one_and_clear(
    api: FakeWorkflowsAPI, connect: Connect
) -> None:
    api.fault_rate(1.0, [Fault.http(500)])
    assert set(await _labels(api, connect, 10)) == {"500"}
    api.fault_rate(0, [])
    assert set(await _labels(api, connect, 10)) == {None}
    api.fault_rate(1.0, [Fault.http(500)])
    api.inject(Fault.http(503), times=3)
    api.clear_faults()
    assert set(await _labels(api, connect, 5)) == {None}
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
    # The one argument rule: the wrong type is a TypeError, naming the argument.
    with pytest.raises(TypeError, match="status"):
        Fault.http("503")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="keep"):
        Fault.stall("half")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="times"):
        api.inject(Fault.reset(), times=1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="rate"):
        api.fault_rate(True, [Fault.reset()])
    # The typed faults check their fields however they are built.
    with pytest.raises(ValueError, match="keep"):
        Truncate(keep=1.0)
    with pytest.raises(ValueError, match="interval"):
        Trickle(interval=-0.1)
    with pytest.raises(ValueError, match="status"):
        Answer(status=600)


# ---------------------------------------------------------------------------
# The typed catalogue


def test_every_constructor_builds_its_typed_fault() -> None:
    built: list[tuple[Fault, type[Fault], str]] = [
        (Fault.http(503), Answer, "503"),
        (Fault.rate_limit(2), Answer, "429"),
        (Fault.edge_page(522), Answer, "edge 522"),
        (Fault.malformed(), Answer, "malformed 200"),
        (Fault.reset(), Reset, "reset"),
        (Fault.delay(1.5), Delay, "delay"),
        (Fault.truncate(0.25), Truncate, "truncate"),
        (Fault.truncate(0.25, status=404), Truncate, "truncate 404"),
        (Fault.bad_chunking(0.5), BadChunking, "bad chunking"),
        (Fault.trickle(8, 0.01), Trickle, "trickle"),
        (Fault.stall(0.5, seconds=2), Stall, "stall"),
    ]
    for fault, kind, label in built:
        assert type(fault) is kind
        assert isinstance(fault, Fault)
        assert fault.label == label
        assert not hasattr(fault, "kind")  # told apart by type, not by a string
    assert Fault.rate_limit(2) == Answer(
        429, Fault.rate_limit(2).body, {"Retry-After": "2"}
    )
    assert Fault.delay(1.5) == Delay(1.5)
    assert Fault.truncate(0.25, status=404) == Truncate(0.25, 404)
    assert Fault.trickle(8, 0.01) == Trickle(chunk_size=8, interval=0.01)
    assert Fault.stall(0.5, seconds=2) == Stall(keep=0.5, seconds=2.0)
    assert Answer(418, b"teapot").label == "418"
    assert Answer(418, name="teapot").label == "teapot"
    body_faults = (Truncate, BadChunking, Trickle, Stall)
    assert all(issubclass(kind, BodyFault) for kind in body_faults)
    assert not any(issubclass(kind, BodyFault) for kind in (Answer, Reset, Delay))


def _concrete_faults(base: type[Fault] = Fault) -> set[type[Fault]]:
    found: set[type[Fault]] = set()
    for sub in base.__subclasses__():
        if sub is not BodyFault and sub.__module__.startswith("cfwf_async.testing"):
            found.add(sub)
        found |= _concrete_faults(sub)
    return found


def test_every_fault_type_has_a_wire_test_here() -> None:
    """A new fault type must come with a test above of what it does on the wire."""
    from cfwf_async.testing import DropAnswer

    assert _concrete_faults() == {
        Answer, Reset, DropAnswer, Delay, Truncate, BadChunking, Trickle, Stall,
    }


@pytest.mark.anyio
async def test_typed_faults_built_directly_work_like_the_constructors(
    api: FakeWorkflowsAPI, raw: aiohttp.ClientSession
) -> None:
    api.inject(Answer(418, b"short and stout", {"X-Pot": "tea"}, "text/plain"))
    api.inject(Truncate(keep=0.5))
    async with raw.get(url(api)) as resp:
        assert (resp.status, resp.headers["X-Pot"]) == (418, "tea")
        assert await resp.read() == b"short and stout"
    async with raw.get(url(api, step=True)) as resp:
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    assert api.injected == {"418": 1, "truncate": 1}


# ---------------------------------------------------------------------------
# A client that hangs up


@pytest.mark.anyio
@pytest.mark.parametrize("fault", [None, Fault.trickle(8192, 0.001)], ids=["whole", "trickle"])
async def test_a_client_hanging_up_mid_body_ends_the_answer_quietly(
    fault: Fault | None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake = FakeWorkflowsAPI()
    # Far more than the client reads: the server is still writing when it hangs up.
    fake.add_step_output(WF, ID, "huge", StreamBody.repeat(256 << 20, chunk_size=64 * 1024))
    if fault is not None:
        fake.inject(fault)
    async with fake, aiohttp.ClientSession(
        headers={"Authorization": f"Bearer {fake.api_token}"}
    ) as http:
        resp = await http.get(url(fake) + "/step?name=huge")
        assert resp.status == 200
        await resp.content.readexactly(1000)
        resp.close()  # hang up mid-body
    # Leaving ``async with fake`` waited for the handler to finish.
    server_errors = [
        r.getMessage() for r in caplog.records
        if r.name.startswith("aiohttp") and r.levelno >= logging.ERROR
    ]
    assert server_errors == []
    assert len(fake.requests) == 1


@pytest.mark.anyio
async def test_drop_answer_applies_the_request_then_resets(
    session: WorkflowsSession, fake_api: FakeWorkflowsAPI
) -> None:
    from cfwf_async import OutcomeUnknownError
    from cfwf_async.testing import DropAnswer

    fault = Fault.drop_answer()
    assert isinstance(fault, DropAnswer)
    assert fault.label == "drop answer"
    fake_api.add_instance("wf", "i-1", make_instance("running"))
    fake_api.inject(fault)
    with pytest.raises(OutcomeUnknownError):
        await session.send_event("wf", "i-1", "go")
    assert len(fake_api.events) == 1  # applied, though the answer never came
    assert fake_api.injected["drop answer"] == 1
    # Reset, unlike it, applies nothing.
    fake_api.inject(Fault.reset())
    with pytest.raises(OutcomeUnknownError):
        await session.send_event("wf", "i-1", "go")
    assert len(fake_api.events) == 1
