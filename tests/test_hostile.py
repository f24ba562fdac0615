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
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cfwf_async import WorkflowsError
from cfwf_async import _protocol as proto
from cfwf_async.testing import make_instance

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
