"""Hostile bodies and headers: the decoding layer lets only the SDK's own errors escape.

Property tests (hypothesis) feed the sans-I/O decoders arbitrary bytes, arbitrary JSON,
and valid envelopes with a wrong-typed value put in every field, one at a time. A
decoder may return a model or raise a ``WorkflowsError``; anything else (a KeyError, a
TypeError, an OverflowError from a date...) is a bug. Header parsers must never raise.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cfwf_async import WorkflowsError, WorkflowsSession
from cfwf_async import _protocol as proto
from cfwf_async._retry import is_retryable
from cfwf_async.errors import (
    APIResponseValidationError,
    APIStatusError,
    BadRequestError,
    InternalServerError,
    NotFoundError,
    RateLimitError,
)
from cfwf_async.models import ErrorItem, StepRun
from cfwf_async.testing import make_instance

SessionFactory = Callable[..., WorkflowsSession]

SAMPLES = Path(__file__).parent / "samples"
EXAMPLES = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

Decoder = Callable[[bytes], object]


def _status_error(body: bytes) -> object:
    return proto.status_error(503, method="GET", path="/x", body=body, cf_ray="r")


DECODERS: dict[str, Decoder] = {
    "instance": lambda b: proto.decode_instance(b, cf_ray="r"),
    "step output": lambda b: proto.decode_step_output(b, cf_ray="r"),
    "instance page": lambda b: proto.decode_instance_page(b, cf_ray="r"),
    "status error": _status_error,
}


def only_sdk_errors(decode: Decoder, body: bytes) -> None:
    with contextlib.suppress(WorkflowsError):
        decode(body)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=25,
)

# Values of every JSON type, and strings that look like dates, ids and numbers.
WRONG_VALUES: list[Any] = [
    None, True, 0, -1, 2**64, 1.5, "", "x", "2026-13-45T99:99:99Z", "NaN", [], [1, "a"],
    {}, {"a": 1}, {"type": None}, {"type": 3},
]


@pytest.mark.parametrize("name", sorted(DECODERS))
@EXAMPLES
@given(body=st.binary(max_size=300))
def test_arbitrary_bytes(name: str, body: bytes) -> None:
    only_sdk_errors(DECODERS[name], body)


@pytest.mark.parametrize("name", sorted(DECODERS))
@EXAMPLES
@given(value=json_values)
def test_arbitrary_json(name: str, value: Any) -> None:
    only_sdk_errors(DECODERS[name], msgspec.json.encode(value))


@pytest.mark.parametrize("name", sorted(DECODERS))
@EXAMPLES
@given(result=json_values, success=st.sampled_from([True, False, None, 1, "yes"]),
       errors=json_values)
def test_envelope_around_arbitrary_json(name: str, result: Any, success: Any, errors: Any) -> None:
    body = {"success": success, "errors": errors, "messages": [], "result": result}
    only_sdk_errors(DECODERS[name], msgspec.json.encode(body))


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path to a value inside ``value`` (dict keys and list indexes)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield (*prefix, key)
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield (*prefix, i)
            yield from _paths(item, (*prefix, i))


def _replaced(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    doc = copy.deepcopy(doc)
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return doc


def _envelope(result: Any) -> dict[str, Any]:
    return {"success": True, "errors": [], "messages": [], "result": result}


def _valid_documents() -> list[tuple[str, Any]]:
    instance = make_instance("errored", steps=2)
    instance["steps"] += [
        {"type": "sleep", "name": "nap-1", "start": "2026-10-30T08:00:00Z",
         "end": "2026-10-30T08:01:00Z", "finished": True, "error": None},
        {"type": "waitForEvent", "name": "approve-1", "start": "2026-10-30T08:00:00Z",
         "end": None, "finished": False, "error": None, "output": {"ok": 1}},
        {"type": "termination", "trigger": {"source": "api"}},
    ]
    instance["schedule"] = {"cron": "0 * * * *", "scheduledTime": 1793000000000}
    instance["rollback"] = {"outcome": "failed", "error": {"name": "E", "message": "m"}}
    docs: list[tuple[str, Any]] = [("instance", _envelope(instance))]
    for sample in sorted(SAMPLES.glob("*.json")):
        kind = "step output" if sample.name.startswith("step") else "instance"
        if sample.name.startswith("error"):
            kind = "status error"
        docs.append((kind, msgspec.json.decode(sample.read_bytes())))
    docs.append(
        ("instance page", {
            "success": True, "errors": [], "messages": [],
            "result": [{"id": "a", "status": "complete", "created_on": "2026-10-30T08:00:00Z",
                        "started_on": "2026-10-30T08:00:01Z", "ended_on": "",
                        "modified_on": "2026-10-30T08:00:02Z", "version_id": "v",
                        "workflow_id": "w", "trigger_source": "api"}],
            "result_info": {"count": 1, "per_page": 1, "total_count": 3, "cursor": "c2"},
        })
    )
    return docs


VALID = _valid_documents()


def test_the_valid_documents_decode() -> None:
    for kind, doc in VALID:
        if kind != "status error":
            DECODERS[kind](msgspec.json.encode(doc))


@pytest.mark.parametrize(("kind", "doc"), VALID, ids=[f"{k}-{i}" for i, (k, _) in enumerate(VALID)])
def test_every_field_with_every_wrong_type(kind: str, doc: Any) -> None:
    """Exhaustive rather than sampled: each field of each document, each wrong value."""
    decode = DECODERS[kind]
    tried = 0
    for path in _paths(doc):
        for value in WRONG_VALUES:
            only_sdk_errors(decode, msgspec.json.encode(_replaced(doc, path, value)))
            tried += 1
    assert tried > 50


@EXAMPLES
@given(data=st.data(), value=json_values)
def test_any_field_replaced_by_any_json(data: st.DataObject, value: Any) -> None:
    kind, doc = data.draw(st.sampled_from(VALID))
    path = data.draw(st.sampled_from(list(_paths(doc))))
    only_sdk_errors(DECODERS[kind], msgspec.json.encode(_replaced(doc, path, value)))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_retry_after_never_raises(value: str) -> None:
    seconds = proto.parse_retry_after(value, now=1_800_000_000.0)
    assert seconds is None or seconds >= 0


@settings(max_examples=100, deadline=None)
@given(st.datetimes(timezones=st.just(__import__("datetime").UTC)))
def test_retry_after_dates_are_understood(when: Any) -> None:
    from email.utils import format_datetime

    seconds = proto.parse_retry_after(format_datetime(when, usegmt=True), now=0.0)
    assert seconds is not None
    assert seconds >= 0


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80), st.one_of(st.none(), st.text(max_size=80)))
def test_ratelimit_headers_never_raise(ratelimit: str, policy: str | None) -> None:
    info = proto.parse_ratelimit(ratelimit, policy)
    if info is not None:
        for number in (info.remaining, info.reset, info.quota, info.window):
            assert number is None or number >= 0


@settings(max_examples=200, deadline=None)
@given(
    r=st.one_of(st.integers(-5, 10**20).map(str), st.text(max_size=8)),
    t=st.one_of(st.floats().map(str), st.text(max_size=8)),
)
def test_ratelimit_with_hostile_numbers(r: str, t: str) -> None:
    info = proto.parse_ratelimit(f'"default";r={r};t={t}', '"burst";q=1200;w=300')
    assert info is not None
    assert info.quota == 1200


@settings(max_examples=200, deadline=None)
@given(status=st.integers(100, 599), body=st.binary(max_size=200))
def test_status_error_maps_any_status(status: int, body: bytes) -> None:
    exc = proto.status_error(status, method="GET", path="/p", body=body, cf_ray=None)
    assert isinstance(exc, WorkflowsError)
    assert exc.status_code == status


# -- JSON nested deeper than the interpreter's stack --------------------------------


def _deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def _deep_bodies(depth: int) -> dict[str, bytes]:
    deep = _deep(depth)
    head = b'{"success":true,"errors":[],"messages":[],"result":'
    return {
        "instance": head + b'{"status":"running","params":' + deep + b"}}",
        "step output": head + b'{"status":"complete","output":' + deep + b"}}",
        "instance page": head + b'[{"id":"a","status":"running","ended_on":"","x":' + deep
        + b"}]}",
    }


@pytest.mark.parametrize("depth", [990, 100_000])
@pytest.mark.parametrize("kind", ["instance", "step output", "instance page"])
def test_deep_json_in_a_2xx_body_is_a_validation_error(kind: str, depth: int) -> None:
    with pytest.raises(APIResponseValidationError) as info:
        DECODERS[kind](_deep_bodies(depth)[kind])
    assert info.value.status_code == 200
    assert info.value.cf_ray == "r"


@pytest.mark.parametrize("depth", [990, 100_000])
@pytest.mark.parametrize(
    ("status", "cls"), [(500, InternalServerError), (404, NotFoundError), (429, RateLimitError)]
)
def test_deep_json_in_an_error_body_is_classified_by_its_status(
    status: int, cls: type[APIStatusError], depth: int
) -> None:
    body = b'{"success":false,"errors":[{"code":7,"message":"m","x":' + _deep(depth) + b"}]}"
    exc = proto.status_error(status, method="GET", path="/p", body=body, cf_ray=None)
    assert type(exc) is cls
    assert exc.status_code == status
    assert is_retryable(exc) is (status != 404)


@pytest.mark.anyio
async def test_deep_error_bodies_are_retried_like_any_500(
    serve_app: Callable[[web.Application], AbstractAsyncContextManager[str]],
    make_session: SessionFactory,
) -> None:
    calls = 0
    deep = b'{"success":false,"errors":[],"result":' + _deep(100_000) + b"}"

    async def handler(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        if calls <= 2:
            return web.Response(status=500, body=deep, content_type="application/json")
        return web.Response(body=msgspec.json.encode(_envelope(make_instance())),
                            content_type="application/json")

    app = web.Application()
    app.router.add_get("/accounts/{a}/workflows/{w}/instances/{i}", handler)
    async with serve_app(app) as url:
        session = make_session(url, max_retries=2)
        session._policy.base_delay = 0.01
        inst = await session.get_instance("wf", "id-1")
    assert inst.status == "complete"
    assert calls == 3


# -- lone surrogates, as JavaScript writes them when it cuts a string -----------------


def test_lone_surrogate_decodes_everywhere_as_the_replacement_character() -> None:
    cut = b'"x\\ud83d"'
    head = b'{"success":true,"errors":[],"messages":[],"result":'
    inst = proto.decode_instance(
        head + b'{"status":"running","output":' + cut + b',"steps":[{"type":"step",'
        b'"name":"n-1","output":"\\ude00y","success":true}]}}'
    )
    assert inst.output == "x\ufffd"
    assert isinstance(inst.steps[0], StepRun)
    assert inst.steps[0].output == "\ufffdy"
    out = proto.decode_step_output(head + b'{"status":"complete","output":' + cut + b"}}")
    assert out.output == "x\ufffd"
    flat = proto.decode_step_output(b'{"status":"complete","output":"x\\ud83d"}')
    assert flat.output == "x\ufffd"
    page = proto.decode_instance_page(
        head + b'[{"id":"a\\ud83d","status":"complete"}],"result_info":{"cursor":"c"}}'
    )
    assert page.items[0].id == "a\ufffd"
    exc = proto.status_error(
        404, method="GET", path="/p", body=b'{"errors":[{"code":1,"message":"x\\ud83d"}]}',
        cf_ray=None,
    )
    assert exc.errors[0].message == "x\ufffd"


def test_surrogate_pairs_and_escaped_backslashes_are_left_alone() -> None:
    body = (
        b'{"success":true,"result":{"status":"s","output":"\\ud83d\\ude00",'
        b'"params":{"a":"\\\\ud83d","b":"\\\\\\ud83d","c":"\\ud83d\\u0041"}}}'
    )
    inst = proto.decode_instance(body)
    assert inst.output == "\U0001f600"
    # An escaped backslash followed by text is no escape; an escape after one is.
    assert inst.params == {"a": "\\ud83d", "b": "\\\ufffd", "c": "\ufffdA"}


def test_a_truncated_body_is_still_refused() -> None:
    with pytest.raises(APIResponseValidationError):
        proto.decode_instance(b'{"success":true,"result":{"status":"x","output":"\\ud83d')


# -- error bodies whose items are strings ---------------------------------------------


def test_string_messages_keep_cloudflare_text() -> None:
    body = b'{"success":false,"errors":[],"messages":["see docs"],"result":null}'
    exc = proto.status_error(404, method="GET", path="/p", body=body, cf_ray=None)
    assert isinstance(exc, NotFoundError)
    assert "see docs" in str(exc)
    assert "HTML" not in str(exc)
    assert exc.messages == (ErrorItem(message="see docs"),)


def test_error_items_keep_documentation_url_and_source_pointer() -> None:
    body = msgspec.json.encode({
        "success": False,
        "errors": [
            {"code": 10001, "message": "instance.not_found",
             "documentation_url": "https://developers.cloudflare.com/x",
             "source": {"pointer": "/instance_id"}, "future": 1},
            "plain text error",
            {"code": 7.0, "message": "whole float code"},
            {"code": "bad", "message": "odd code"},
            5,
        ],
        "messages": [{"code": 2, "message": "note"}, "see docs"],
    })
    exc = proto.status_error(400, method="GET", path="/p", body=body, cf_ray=None)
    assert isinstance(exc, BadRequestError)
    first = exc.errors[0]
    assert first.documentation_url == "https://developers.cloudflare.com/x"
    assert first.source is not None
    assert first.source.pointer == "/instance_id"
    assert [e.message for e in exc.errors] == [
        "instance.not_found", "plain text error", "whole float code", "odd code"
    ]
    assert exc.errors[2].code == 7
    assert [e.message for e in exc.messages] == ["note", "see docs"]
    text = str(exc)
    for part in ("instance.not_found (code 10001)", "plain text error", "note (code 2)",
                 "see docs"):
        assert part in text


def test_string_items_in_a_2xx_envelope_do_not_reject_the_result() -> None:
    body = msgspec.json.encode({
        "success": True, "errors": [], "messages": ["deprecated soon"],
        "result": {"status": "complete"},
    })
    assert proto.decode_instance(body).status == "complete"
    refused = msgspec.json.encode({"success": False, "errors": ["quota"], "result": None})
    with pytest.raises(APIResponseValidationError, match="quota"):
        proto.decode_instance(refused)


# -- no request header ever reaches an exception ---------------------------------------

SECRET = "sk-never-in-an-error-0123456789"


@pytest.mark.anyio
async def test_no_exception_carries_a_request_header(
    serve_app: Callable[[web.Application], AbstractAsyncContextManager[str]],
    make_session: SessionFactory,
) -> None:
    """Each failure the decoders can report, from a server echoing the headers it got
    anywhere but in the error text (a hostile server could put it there itself)."""
    bodies = [
        (500, b'{"errors":[],"result":' + _deep(100_000) + b"}"),
        (404, b'{"errors":[],"messages":["see docs"]}'),
        (200, b'{"success":true,"result":{"status":"x","params":' + _deep(2000) + b"}}"),
        (200, b'{"success":true,"result":{"status":5}}'),
        (200, b"<html>"),
        (502, b"<html>bad gateway</html>"),
    ]
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        status, body = bodies[len(seen)]
        seen.append(request.headers["Authorization"])
        return web.Response(status=status, body=body, content_type="application/json",
                            headers={"X-Echo": request.headers["Authorization"]})

    app = web.Application()
    app.router.add_get("/accounts/{a}/workflows/{w}/instances/{i}", handler)
    async with serve_app(app) as url:
        session = make_session(url, api_token=SECRET, max_retries=0)
        for _ in bodies:
            with pytest.raises(WorkflowsError) as info:
                await session.get_instance("wf", "id-1")
            chain: BaseException | None = info.value
            while chain is not None:
                for text in (str(chain), repr(chain), repr(chain.args), repr(vars(chain))):
                    assert SECRET not in text
                chain = chain.__cause__ or chain.__context__
    assert seen == [f"Bearer {SECRET}"] * len(bodies)


@pytest.mark.parametrize(
    "after", [b'"}}', b'","attempts":[]}}', b'","a":"\\u0041"}}', b' "}}', b'\\n"}}']
)
def test_lone_surrogate_whatever_follows_it(after: bytes) -> None:
    """msgspec words the error differently depending on what follows the half."""
    body = b'{"success":true,"result":{"status":"x","output":"x\\ud83d' + after
    output = proto.decode_instance(body).output
    assert isinstance(output, str)
    assert output.startswith("x\ufffd")
