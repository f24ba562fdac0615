"""Decoding the wire shapes into models: samples, unknown fields, statuses and step types.

Pure tests: bodies go through the sans-I/O decoders, no socket.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgspec
import pytest

from cfwf_async import _decoding
from cfwf_async import _protocol as proto
from cfwf_async.errors import (
    APIResponseValidationError,
    APIStatusError,
    AuthenticationError,
    NotFoundError,
)
from cfwf_async.models import (
    INSTANCE_STATUSES,
    TERMINAL_STATUSES,
    Attempt,
    ErrorInfo,
    Instance,
    RollbackStep,
    SleepStep,
    StepOutput,
    StepRun,
    TerminationStep,
    UnknownStep,
    WaitForEventStep,
)
from cfwf_async.testing import make_instance

# Copies of ../shared/samples (answer bodies shaped like the live API's), kept in the
# repository so that a fresh clone tests the same bodies.
SAMPLES = Path(__file__).resolve().parent / "samples"


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def envelope(result: Any, **extra: Any) -> bytes:
    return msgspec.json.encode(
        {"success": True, "errors": [], "messages": [], "result": result, **extra}
    )


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


# ---------------------------------------------------------------------------
# The recorded samples


def test_samples_are_present() -> None:
    names = {p.name for p in SAMPLES.glob("*.json")}
    assert {
        "instance-errored.json",
        "instance-running-simple.json",
        "step-output-complete.json",
        "step-output-retrying.json",
        "error-401.json",
        "error-404.json",
    } <= names


def test_errored_instance_sample_top_level() -> None:
    inst = proto.decode_instance(sample("instance-errored.json"))
    assert isinstance(inst, Instance)
    assert inst.status == "errored"
    assert inst.is_terminal
    assert inst.queued == utc(2026, 10, 30, 8, 0, 0, 120000)
    assert inst.start == utc(2026, 10, 30, 8, 0, 0, 480000)
    assert inst.end == utc(2026, 10, 30, 8, 4, 10, 4000)
    assert inst.error == ErrorInfo(name="NonRetryableError", message="card declined")
    assert inst.output == ""
    assert inst.params == {"orderId": "o-981", "items": 3}
    assert inst.step_count == 6
    assert inst.success is False
    assert inst.trigger is not None
    assert inst.trigger.source == "api"
    assert inst.version_id == "0b7d4c2e-3f1a-4e5b-9c8d-7a6f5e4d3c2b"
    assert inst.rollback is not None
    assert inst.rollback.outcome == "complete"
    assert inst.rollback.error is None
    assert inst.schedule is None


def test_errored_instance_sample_every_step_type() -> None:
    inst = proto.decode_instance(sample("instance-errored.json"))
    types = [type(s) for s in inst.steps]
    assert types == [StepRun, SleepStep, WaitForEventStep, StepRun, RollbackStep, TerminationStep]
    assert [s.type for s in inst.steps] == [
        "step", "sleep", "waitForEvent", "step", "rollback", "termination",
    ]
    assert [s.name for s in inst.steps] == [
        "load order-1", "settle-1", "payment approved-1", "charge card-1", "release stock-1", "",
    ]
    load, settle, wait, _charge, _release, _term = inst.steps

    assert isinstance(load, StepRun)
    assert load.success is True
    assert load.output == '{"id":"o-981","total":129.5}'
    assert load.attempts == [
        Attempt(
            start=utc(2026, 10, 30, 8, 0, 0, 500000),
            end=utc(2026, 10, 30, 8, 0, 1, 900000),
            error=None,
            success=True,
        )
    ]
    assert load.config is not None
    assert load.config.retries is not None
    assert load.config.retries.delay == "10 seconds"
    assert load.config.retries.limit == 5
    assert load.config.retries.backoff == "exponential"
    assert load.config.timeout == "10 minutes"
    assert load.config.sensitive is None

    assert isinstance(settle, SleepStep)
    assert settle.finished is True
    assert settle.error is None
    assert settle.end == utc(2026, 10, 30, 8, 0, 31, 950000)

    assert isinstance(wait, WaitForEventStep)
    assert wait.event_type == "payment-approved"
    assert wait.output == '{"approver":"ops"}'
    assert wait.finished is True


def test_errored_instance_sample_redacted_dynamic_numeric() -> None:
    inst = proto.decode_instance(sample("instance-errored.json"))
    charge, release = inst.steps[3], inst.steps[4]

    # A sensitive step: output redacted, dynamic delay, numeric timeout, failed attempts.
    assert isinstance(charge, StepRun)
    assert charge.output == "[REDACTED]"
    assert charge.success is False
    assert charge.config is not None
    assert charge.config.retries is not None
    assert charge.config.sensitive == "output"
    assert charge.config.retries.delay == "[dynamic]"
    assert charge.config.retries.backoff is None
    assert charge.config.timeout == 30000
    assert [a.error for a in charge.attempts] == [
        ErrorInfo(name="Error", message="gateway timeout"),
        ErrorInfo(name="NonRetryableError", message="card declined"),
    ]
    assert [a.success for a in charge.attempts] == [False, False]

    # A rollback step has the step shape, with a numeric delay and a string timeout.
    assert isinstance(release, RollbackStep)
    assert isinstance(release, StepRun)
    assert release.config is not None
    assert release.config.retries is not None
    assert release.config.retries.delay == 1000
    assert release.config.retries.limit == 0
    assert release.config.retries.backoff == "constant"
    assert release.config.timeout == "5 minutes"
    assert release.output == "null"

    term = inst.steps[5]
    assert isinstance(term, TerminationStep)
    assert term.trigger is not None
    assert term.trigger.source == "api"


def test_every_datetime_in_the_sample_is_timezone_aware() -> None:
    inst = proto.decode_instance(sample("instance-errored.json"))
    found: list[datetime] = [d for d in (inst.queued, inst.start, inst.end) if d is not None]
    for step in inst.steps:
        for attr in ("start", "end"):
            value = getattr(step, attr, None)
            if value is not None:
                found.append(value)
        for att in getattr(step, "attempts", []):
            found += [d for d in (att.start, att.end) if d is not None]
    assert len(found) >= 15
    for value in found:
        assert value.tzinfo is not None
        assert value.utcoffset() == timedelta(0)


def test_offsets_other_than_utc_are_kept() -> None:
    body = envelope({"status": "running", "queued": "2026-10-30T10:00:00.120+02:00"})
    inst = proto.decode_instance(body)
    assert inst.queued is not None
    assert inst.queued.utcoffset() == timedelta(hours=2)
    assert inst.queued == utc(2026, 10, 30, 8, 0, 0, 120000)
    assert inst.queued.tzinfo == timezone(timedelta(hours=2))


def test_simple_sample_has_count_but_no_steps() -> None:
    inst = proto.decode_instance(sample("instance-running-simple.json"))
    assert inst.status == "running"
    assert not inst.is_terminal
    assert inst.steps == []
    assert inst.step_count == 6
    assert inst.end is None
    assert inst.success is None
    assert inst.rollback is None


def test_step_output_samples() -> None:
    done = proto.decode_step_output(sample("step-output-complete.json"))
    assert done == StepOutput(
        status="complete",
        error=None,
        output={"id": "o-981", "total": 129.5, "lines": [{"sku": "A1", "qty": 2}]},
    )
    retrying = proto.decode_step_output(sample("step-output-retrying.json"))
    assert retrying.status == "running"
    assert retrying.error == ErrorInfo(name="Error", message="gateway timeout")
    assert retrying.output is None
    assert retrying.event_type is None


def test_step_output_redacted_and_event_type() -> None:
    out = proto.decode_step_output(
        envelope({"status": "complete", "error": None, "output": "[REDACTED]"})
    )
    assert out.output == "[REDACTED]"
    event = proto.decode_step_output(
        envelope({"status": "waiting", "error": None, "output": None, "event_type": "approve"})
    )
    assert event.status == "waiting"
    assert event.event_type == "approve"


def test_step_output_flat_body() -> None:
    # The reference page describes "a flat status-shaped JSON body"; its schema shows the
    # envelope. Both decode to the same StepOutput.
    flat = b'{"status": "complete", "error": null, "output": {"id": 7}, "novel": 1}'
    assert proto.decode_step_output(flat) == StepOutput(status="complete", output={"id": 7})
    retrying = proto.decode_step_output(
        b'{"status": "running", "error": {"name": "Error", "message": "boom"}, "output": null}'
    )
    assert retrying.error == ErrorInfo(name="Error", message="boom")
    for broken in (b"{}", b'{"error": null}', b'{"status": 1}'):
        with pytest.raises(APIResponseValidationError):
            proto.decode_step_output(broken, status=200, cf_ray=None)


@pytest.mark.parametrize("value", [None, 0, 1.5, "text", [1, 2], {"a": {"b": [None]}}, True])
def test_step_output_any_json_value(value: Any) -> None:
    out = proto.decode_step_output(envelope({"status": "complete", "output": value}))
    assert out.output == value


@pytest.mark.parametrize(
    ("name", "status", "cls", "code", "message"),
    [
        ("error-401.json", 401, AuthenticationError, 10000, "Authentication error"),
        ("error-404.json", 404, NotFoundError, 10001, "instance.not_found"),
    ],
)
def test_error_samples(
    name: str, status: int, cls: type[APIStatusError], code: int, message: str
) -> None:
    exc = proto.status_error(status, method="GET", path="/p", body=sample(name), cf_ray="r-1")
    assert type(exc) is cls
    assert [(e.code, e.message) for e in exc.errors] == [(code, message)]
    assert message in str(exc)
    # The same body on a 2xx is not a result either.
    with pytest.raises(APIResponseValidationError, match=message):
        proto.decode_instance(sample(name))


# ---------------------------------------------------------------------------
# Bodies from a newer API


def test_unknown_fields_are_ignored_everywhere() -> None:
    body = envelope(
        {
            "status": "complete",
            "brandNewField": {"nested": [1, 2, 3]},
            "trigger": {"source": "api", "actor": "someone"},
            "schedule": {"cron": "0 * * * *", "scheduledTime": 1793347200000, "tz": "UTC"},
            "rollback": {"outcome": "failed", "error": {"name": "E", "message": "m", "x": 1},
                         "extra": True},
            "steps": [
                {
                    "type": "step",
                    "name": "a-1",
                    "novel": "value",
                    "attempts": [{"start": "2026-10-30T08:00:00Z", "success": True, "z": 0}],
                    "config": {"retries": {"delay": 5, "limit": 1, "jitter": True},
                               "timeout": 10, "priority": "high"},
                },
                {"type": "sleep", "name": "s-1", "finished": False, "wakeAt": "later"},
            ],
        },
        result_info={"count": 1, "unknown": 2},
        extraEnvelopeField=[1],
    )
    inst = proto.decode_instance(body)
    assert inst.status == "complete"
    assert inst.trigger is not None
    assert inst.trigger.source == "api"
    assert inst.schedule is not None
    assert inst.schedule.cron == "0 * * * *"
    assert inst.schedule.scheduled_time == 1793347200000
    assert inst.rollback is not None
    assert inst.rollback.outcome == "failed"
    assert inst.rollback.error == ErrorInfo(name="E", message="m")
    step, sleep = inst.steps
    assert isinstance(step, StepRun)
    assert step.name == "a-1"
    assert step.attempts[0].success is True
    assert step.config is not None
    assert step.config.retries is not None
    assert step.config.retries.delay == 5
    assert isinstance(sleep, SleepStep)
    assert sleep.finished is False


@pytest.fixture
def fresh_decoders(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start from the strict decoder, whatever an earlier test decoded."""
    monkeypatch.setattr(_decoding.RECENT, "by_step", False)
    monkeypatch.setattr(_decoding.LEARNT, "keys", {})
    monkeypatch.setattr(_decoding.LEARNT, "state", None)


@pytest.mark.usefixtures("fresh_decoders")
def test_unknown_fields_keep_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    def fallback(body: bytes) -> Any:
        raise AssertionError("the fallback decoder ran for a body of known step types")

    monkeypatch.setattr(_decoding, "_instance_by_step", fallback)
    monkeypatch.setattr(_decoding, "_instance_lenient", fallback)
    body = envelope(
        {"status": "complete", "novel": 1, "steps": [{"type": "step", "name": "x", "new": 2}]}
    )
    assert proto.decode_instance(body).steps[0].name == "x"


def test_unknown_status_stays_a_string() -> None:
    inst = proto.decode_instance(envelope({"status": "hibernating"}))
    assert inst.status == "hibernating"
    assert inst.status not in INSTANCE_STATUSES
    assert not inst.is_terminal
    out = proto.decode_step_output(envelope({"status": "teleporting", "output": None}))
    assert out.status == "teleporting"


def test_known_statuses() -> None:
    assert {"queued", "running", "waitingForPause", "rollingBack", "complete"} <= INSTANCE_STATUSES
    assert {"complete", "errored", "terminated"} == TERMINAL_STATUSES
    for status in TERMINAL_STATUSES:
        assert proto.decode_instance(envelope({"status": status})).is_terminal


def test_unknown_step_type_decodes_with_its_raw_fields() -> None:
    raw = {
        "type": "sendEmail",
        "name": "notify-1",
        "start": "2026-10-30T08:00:00.000Z",
        "recipients": ["a@example.com"],
        "meta": {"n": 1},
    }
    body = envelope(
        {
            "status": "running",
            "steps": [
                {"type": "step", "name": "before-1", "start": "2026-10-30T07:59:00Z"},
                raw,
                {"type": "sleep", "name": "after-1", "finished": True},
            ],
        }
    )
    inst = proto.decode_instance(body)
    before, unknown, after = inst.steps
    assert isinstance(before, StepRun)
    assert before.start == utc(2026, 10, 30, 7, 59)
    assert isinstance(unknown, UnknownStep)
    assert unknown.type == "sendEmail"
    assert unknown.name == "notify-1"
    assert unknown.fields["recipients"] == ["a@example.com"]
    assert unknown.fields["meta"] == {"n": 1}
    assert unknown.fields["start"] == "2026-10-30T08:00:00.000Z"
    assert isinstance(after, SleepStep)
    assert after.finished is True


def test_unknown_step_type_without_a_name() -> None:
    inst = proto.decode_instance(envelope({"status": "running", "steps": [{"type": "marker"}]}))
    (step,) = inst.steps
    assert isinstance(step, UnknownStep)
    assert step.type == "marker"
    assert step.name == ""


def test_step_without_a_usable_type() -> None:
    body = envelope({"status": "running", "steps": [{"name": "untagged"}, {"type": 5}]})
    untagged, numeric = proto.decode_instance(body).steps
    assert isinstance(untagged, UnknownStep)
    assert untagged.type == ""
    assert untagged.name == "untagged"
    assert isinstance(numeric, UnknownStep)
    assert numeric.type == ""
    assert numeric.fields == {"type": 5}


@pytest.mark.usefixtures("fresh_decoders")
def test_all_known_types_never_take_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []
    real = _decoding._instance_by_step

    def spy(body: bytes) -> Any:
        calls.append(body)
        return real(body)

    def lenient(body: bytes) -> Any:
        raise AssertionError("the lenient decoder ran")

    monkeypatch.setattr(_decoding, "_instance_by_step", spy)
    monkeypatch.setattr(_decoding, "_instance_lenient", lenient)
    proto.decode_instance(sample("instance-errored.json"))
    proto.decode_instance(sample("instance-running-simple.json"))
    assert calls == []
    # The spy is live: an unknown type does go through it, once; then it is learnt.
    unknown = envelope({"status": "running", "steps": [{"type": "new"}]})
    proto.decode_instance(unknown)
    proto.decode_instance(unknown)
    assert len(calls) == 1


def _logs_by_step(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The bodies that go down the step-by-step path from now on."""
    calls: list[bytes] = []
    real = _decoding._instance_by_step

    def spy(body: bytes) -> Any:
        calls.append(body)
        return real(body)

    monkeypatch.setattr(_decoding, "_instance_by_step", spy)
    return calls


@pytest.mark.usefixtures("fresh_decoders")
def test_a_learnt_step_type_decodes_in_one_pass_in_any_log(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    by_step = _logs_by_step(monkeypatch)
    first = make_instance(steps=3)
    first["steps"][1] = {"type": "sendEmail", "name": "a", "to": ["x@y.z"], "cc": None}
    proto.decode_instance(envelope(first))
    assert len(by_step) == 1
    # Another instance, the step elsewhere, a key absent and one null: still one pass,
    # and the fields are exactly what was sent.
    other = make_instance("running", steps=4)
    other["steps"][3] = {"type": "sendEmail", "name": "b", "cc": None}
    inst = proto.decode_instance(envelope(other))
    assert len(by_step) == 1
    assert inst.steps[3] == UnknownStep(
        type="sendEmail", fields={"type": "sendEmail", "name": "b", "cc": None}
    )
    assert [type(s) for s in inst.steps[:3]] == [StepRun, StepRun, StepRun]
    assert type(inst) is Instance


@pytest.mark.usefixtures("fresh_decoders")
def test_a_new_key_on_a_learnt_type_is_kept_and_learnt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    by_step = _logs_by_step(monkeypatch)
    proto.decode_instance(envelope({"status": "running", "steps": [{"type": "t", "a": 1}]}))
    weird = {"type": "t", "a": 2, "b-c": [1], "": "empty key", "f0": "clash"}
    body = envelope({"status": "running", "steps": [weird]})
    assert proto.decode_instance(body).steps[0] == UnknownStep(type="t", fields=weird)
    assert len(by_step) == 2
    assert proto.decode_instance(body).steps[0] == UnknownStep(type="t", fields=weird)
    assert len(by_step) == 2


@pytest.mark.usefixtures("fresh_decoders")
def test_learning_is_bounded_by_types_and_keys() -> None:
    many = [{"type": f"t{i}", "name": str(i)} for i in range(_decoding.MAX_LEARNT_TYPES + 4)]
    wide = {"type": "wide", **{f"k{i}": i for i in range(_decoding.MAX_LEARNT_KEYS + 1)}}
    body = envelope({"status": "running", "steps": [*many, wide]})
    first = proto.decode_instance(body)
    assert len(_decoding.LEARNT.keys) == _decoding.MAX_LEARNT_TYPES
    assert "wide" not in _decoding.LEARNT.keys
    # What was not learnt keeps the step-by-step path, with the same answer.
    assert _decoding.RECENT.by_step
    assert proto.decode_instance(body) == first
    assert first.steps[-1] == UnknownStep(type="wide", fields=wide)
    assert [s.name for s in first.steps[:-1]] == [str(i) for i in range(len(many))]


def test_decoded_models_are_frozen() -> None:
    inst = proto.decode_instance(sample("instance-errored.json"))
    with pytest.raises(AttributeError):
        inst.status = "complete"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        inst.steps[0].name = "x"  # type: ignore[misc]


def test_schedule_numeric_scheduled_time() -> None:
    inst = proto.decode_instance(
        envelope({"status": "queued", "schedule": {"cron": "*/5 * * * *",
                                                     "scheduledTime": 1793347200.5}})
    )
    assert inst.schedule is not None
    assert inst.schedule.scheduled_time == 1793347200.5
    assert inst.schedule.cron == "*/5 * * * *"


# ---------------------------------------------------------------------------
# Broken 2xx bodies


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"<html>oops</html>",
        b'{"success": true, "result": {"status": 5}}',
        b'{"success": true, "result": []}',
        b'{"success": true, "result": {"status": "x", "steps": {}}}',
        b'{"success": true, "result": {"status": "x", "steps": [1]}}',
        b'{"success": true, "result": {"status": "x", "queued": "yesterday"}}',
        b'{"success": true, "result": {"status": "x", "steps": [{"type": "step", "start": 1}]}}',
        b'{"success": true, "result": null}',
        b'{"success": true}',
        b'{"success": true, "result": {"status": "x", "steps": [{"type": "zz"}, 7]}}',
    ],
)
def test_undecodable_instance_bodies(body: bytes) -> None:
    with pytest.raises(APIResponseValidationError) as info:
        proto.decode_instance(body, status=200, cf_ray="abc-LHR")
    assert info.value.status_code == 200
    assert info.value.cf_ray == "abc-LHR"
    assert "abc-LHR" in str(info.value)


@pytest.mark.parametrize(
    "body",
    [b"", b"[]", b'{"success": true, "result": {"output": 1}}', b'{"result": {"status": 3}}'],
)
def test_undecodable_step_output_bodies(body: bytes) -> None:
    with pytest.raises(APIResponseValidationError) as info:
        proto.decode_step_output(body, status=200, cf_ray=None)
    assert info.value.status_code == 200
    assert info.value.cf_ray is None


def test_success_false_on_2xx_is_a_validation_error() -> None:
    body = msgspec.json.encode(
        {"success": False, "errors": [{"code": 7003, "message": "No route"}], "result": None}
    )
    for decode in (proto.decode_instance, proto.decode_step_output):
        with pytest.raises(APIResponseValidationError) as info:
            decode(body, status=200, cf_ray="r1")
        assert "No route" in str(info.value)
        assert info.value.status_code == 200


# ---------------------------------------------------------------------------
# Unknown step types: typed neighbours, raw fields, the same result on every path


def _log_with(unknown_at: int, steps: int = 20) -> bytes:
    result = make_instance("running", steps=steps)
    result["steps"][unknown_at] = {"type": "sendEmail", "name": "mail-1", "to": ["a@b.c"]}
    return envelope(result)


@pytest.mark.usefixtures("fresh_decoders")
@pytest.mark.parametrize("unknown_at", [0, 10, 19])
def test_unknown_step_anywhere_keeps_every_other_step_typed(unknown_at: int) -> None:
    body = _log_with(unknown_at)
    first = proto.decode_instance(body)
    # The type is learnt: the next decode is one strict pass, with the same answer.
    assert not _decoding.RECENT.by_step
    assert _decoding.LEARNT.keys == {"sendEmail": ("name", "to")}
    assert proto.decode_instance(body) == first
    for i, step in enumerate(first.steps):
        if i == unknown_at:
            assert step == UnknownStep(
                type="sendEmail", fields={"type": "sendEmail", "name": "mail-1", "to": ["a@b.c"]}
            )
        else:
            assert isinstance(step, StepRun)
            assert step.name == f"step {i}-1"
            assert step.attempts[0].end == utc(2026, 10, 30, 8, 0, 1, 900000)
    # A log of known types puts the strict decoder first again.
    known = proto.decode_instance(envelope(make_instance(steps=3)))
    assert not _decoding.RECENT.by_step
    assert all(isinstance(s, StepRun) for s in known.steps)


def test_the_type_property_is_the_wire_tag() -> None:
    assert [cls().type for cls in (StepRun, RollbackStep, SleepStep, WaitForEventStep,
                                   TerminationStep)] == [
        "step", "rollback", "sleep", "waitForEvent", "termination"
    ]


# ---------------------------------------------------------------------------
# Numbers the reference types as `number`


@pytest.mark.parametrize("number", [3, 3.0, 2.5, 1e3])
def test_any_json_number_where_the_reference_says_number(number: float) -> None:
    result = make_instance(steps=2)
    result["step_count"] = number
    result["steps"][1]["config"]["retries"]["limit"] = number
    info = {"count": number, "per_page": number, "total_count": number, "page": number,
            "total_pages": number}
    inst = proto.decode_instance(envelope(result, result_info=info))
    # The number as sent, of the kind sent: an int stays an int, a float a float.
    assert inst.step_count == number
    assert type(inst.step_count) is type(number)
    step = inst.steps[1]
    assert isinstance(step, StepRun)
    assert step.config is not None
    assert step.config.retries is not None
    assert step.config.retries.limit == number
    assert type(step.config.retries.limit) is type(number)
    page = proto.decode_instance_page(
        envelope([{"id": "a", "status": "complete"}],
                 result_info={**info, "cursor": "c2"})
    )
    assert page.cursor == "c2"
    assert [s.id for s in page.items] == ["a"]
    out = proto.decode_step_output(
        envelope({"status": "complete", "output": 1}, result_info=info)
    )
    assert out.output == 1
    exc = proto.status_error(404, method="GET", path="/p", cf_ray=None, body=msgspec.json.encode(
        {"success": False, "errors": [{"code": number, "message": "gone"}], "messages": []}
    ))
    assert isinstance(exc, NotFoundError)
    assert exc.errors[0].code == number
    assert exc.errors[0].message == "gone"


def test_a_bad_value_inside_a_step_names_the_step() -> None:
    result = make_instance(steps=3)
    result["steps"][2]["config"]["retries"]["limit"] = "three"
    with pytest.raises(APIResponseValidationError, match=r"\$\.result\.steps\[2\]\.config"
                       r"\.retries\.limit"):
        proto.decode_instance(envelope(result))
    result = make_instance(steps=3)
    result["steps"][1]["attempts"][0]["success"] = "yes"
    with pytest.raises(APIResponseValidationError, match=r"\$\.result\.steps\[1\]\.attempts"):
        proto.decode_instance(envelope(result))


# ---------------------------------------------------------------------------
# Timestamps without an offset are UTC


def _aware_everywhere(value: object) -> None:
    if isinstance(value, datetime):
        assert value.tzinfo is not None
        assert value.utcoffset() is not None
    elif isinstance(value, msgspec.Struct):
        for name in value.__struct_fields__:
            _aware_everywhere(getattr(value, name))
    elif isinstance(value, list):
        for item in value:
            _aware_everywhere(item)


def test_naive_timestamps_are_utc_everywhere() -> None:
    naive = "2026-01-01T00:00:00.000"
    result = make_instance(steps=2)
    result["queued"] = naive
    result["steps"][1]["attempts"][0]["end"] = naive
    result["steps"].append({"type": "sleep", "name": "nap-1", "start": "2026-01-01 00:00:00"})
    result["params"] = {"when": naive}
    inst = proto.decode_instance(envelope(result))
    _aware_everywhere(inst)
    assert inst.queued == utc(2026, 1, 1)
    assert inst.steps[1].attempts[0].end == utc(2026, 1, 1)  # type: ignore[union-attr]
    assert inst.steps[2].start == utc(2026, 1, 1)  # type: ignore[union-attr]
    assert inst.params == {"when": naive}  # user data is never rewritten
    # Aware values keep their offset.
    assert inst.start == utc(2026, 10, 30, 8, 0, 0, 480000)
    page = proto.decode_instance_page(envelope([
        {"id": "a", "status": "running", "created_on": naive, "ended_on": ""},
        {"id": "b", "status": "complete", "created_on": "2026-01-01T00:00:00Z",
         "modified_on": naive},
    ]))
    _aware_everywhere(page.items)
    assert page.items[0].created_on == utc(2026, 1, 1)
    assert page.items[0].ended_on is None
    assert page.items[1].modified_on == utc(2026, 1, 1)


@pytest.mark.usefixtures("fresh_decoders")
def test_naive_timestamp_and_whole_float_inside_one_step_on_both_paths() -> None:
    result = make_instance(steps=5)
    result["steps"][3]["end"] = "2026-01-01T00:00:00"
    result["steps"][3]["config"]["retries"]["limit"] = 4.0
    body = envelope(result)
    first = proto.decode_instance(body)
    assert _decoding.RECENT.by_step
    assert proto.decode_instance(body) == first
    step = first.steps[3]
    assert isinstance(step, StepRun)
    assert step.end == utc(2026, 1, 1)
    assert step.config is not None
    assert step.config.retries is not None
    assert step.config.retries.limit == 4
    _aware_everywhere(first)
