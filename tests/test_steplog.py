"""Reading a step log: states, times, the next retry, durations (pure functions)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from cfwf_async.cli._demo import demo_instance_states
from cfwf_async.models import (
    Attempt,
    ErrorInfo,
    Instance,
    RetryConfig,
    SleepStep,
    StepConfig,
    StepRun,
    TerminationStep,
    UnknownStep,
    WaitForEventStep,
)
from cfwf_async.steplog import (
    DYNAMIC,
    NextRetry,
    describe_duration,
    format_seconds,
    last_successful_step,
    next_retry,
    parse_duration,
    step_bounds,
    step_state,
)

NOW = datetime(2026, 10, 30, 8, 10, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


def retrying(*failed_ends: float, delay: object, backoff: str | None = None) -> StepRun:
    attempts = [Attempt(start=at(end - 1), end=at(end), success=False) for end in failed_ends]
    config = StepConfig(retries=RetryConfig(delay=delay, limit=5, backoff=backoff))  # type: ignore[arg-type]
    return StepRun(name="charge-1", start=at(0), attempts=attempts, config=config)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(1000, 1.0), (30000, 30.0), ("10 seconds", 10.0), ("1 second", 1.0),
     ("5 minutes", 300.0), ("2 hours", 7200.0), ("1 day", 86400.0), ("250", 0.25),
     ("[dynamic]", None), ("soon", None), (None, None), (True, None)],
)
def test_parse_duration(value: object, seconds: float | None) -> None:
    assert parse_duration(value) == seconds


def test_parse_duration_refuses_negative_and_non_finite_numbers() -> None:
    assert parse_duration(-1) is None
    assert parse_duration(float("inf")) is None
    assert parse_duration(float("nan")) is None
    assert parse_duration("1.5 hours") == 5400.0
    assert parse_duration("3 MS") == 0.003


@pytest.mark.parametrize(
    ("value", "shown"),
    [(10000, "10s"), ("5 minutes", "5m"), ("2 hours", "2h"), ("1 day", "1d"),
     (1500, "1.50s"), (90000, "90s"), (DYNAMIC, "dynamic"), ("whenever", "whenever")],
)
def test_describe_duration(value: object, shown: str) -> None:
    assert describe_duration(value) == shown


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0.85, "850ms"), (1.4, "1.40s"), (38.0, "38.0s"), (249.0, "4m 09s"),
     (7380.0, "2h 03m"), (90000.0, "1d 01h"), (-3.0, "0ms")],
)
def test_format_seconds(seconds: float, shown: str) -> None:
    assert format_seconds(seconds) == shown


def test_step_state_for_every_kind_of_step() -> None:
    assert step_state(StepRun(success=True)) == "complete"
    assert step_state(StepRun(success=False)) == "errored"
    assert step_state(StepRun(attempts=[Attempt(start=at(0))])) == "running"
    assert step_state(retrying(5, delay=1000)) == "retrying"
    assert step_state(SleepStep(finished=False)) == "sleeping"
    assert step_state(SleepStep(finished=True)) == "complete"
    assert step_state(WaitForEventStep(finished=False)) == "waiting"
    assert step_state(WaitForEventStep(error=ErrorInfo(name="E", message="m"))) == "errored"
    assert step_state(TerminationStep()) == "terminated"
    assert step_state(UnknownStep(type="sendEmail")) == "?"  # type: ignore[arg-type]


def test_step_bounds_end_at_now_while_running() -> None:
    assert step_bounds(StepRun(start=at(0), end=at(5)), NOW) == (at(0), at(5))
    assert step_bounds(SleepStep(start=at(0)), at(9)) == (at(0), at(9))
    assert step_bounds(StepRun(), NOW) == (None, None)
    assert step_bounds(TerminationStep(), NOW) == (None, None)


def test_next_retry_is_last_attempt_end_plus_delay_or_dynamic() -> None:
    assert next_retry(retrying(10, delay="15 seconds")) == NextRetry(
        at(25), dynamic=False, estimate=False
    )
    assert next_retry(retrying(10, delay=DYNAMIC)) == NextRetry(None, dynamic=True, estimate=False)
    # Two failures, exponential: 2 s * 2; linear: 2 s * 2 as well, three failures: * 4 / * 3.
    assert next_retry(retrying(3, 10, delay=2000, backoff="exponential")) == NextRetry(
        at(14), dynamic=False, estimate=True
    )
    assert next_retry(retrying(3, 6, 10, delay=2000, backoff="exponential")) == NextRetry(
        at(18), dynamic=False, estimate=True
    )
    assert next_retry(retrying(3, 6, 10, delay=2000, backoff="linear")) == NextRetry(
        at(16), dynamic=False, estimate=True
    )
    assert next_retry(retrying(10, delay="whenever")) is None
    assert next_retry(StepRun(success=True)) is None


def test_next_retry_on_the_demo_instance() -> None:
    """The same instance the CLI's describe test reads: 259.3 s in, plus 15 s."""
    running = msgspec.convert(demo_instance_states(NOW)[0], Instance)
    step = running.steps[-1]
    assert isinstance(step, StepRun)
    base = NOW - timedelta(minutes=4, seconds=30)
    assert next_retry(step) == NextRetry(
        base + timedelta(seconds=259.3 + 15), dynamic=False, estimate=False
    )


def test_last_successful_step_is_the_latest_end() -> None:
    early = StepRun(name="a", success=True, end=at(5))
    late_sleep = SleepStep(name="b", finished=True, end=at(9))
    failed = StepRun(name="c", success=False, end=at(20))
    running = StepRun(name="d", start=at(21))
    assert last_successful_step([early, late_sleep, failed, running]) is late_sleep
    assert last_successful_step([failed, running, TerminationStep()]) is None
    assert last_successful_step([]) is None
