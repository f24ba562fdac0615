"""Reading a step log: what a step is doing, when it runs again, how long things take.

This is SDK knowledge, not terminal output; it lives here only until
``cfwf_async.steplog`` provides the same names, when this module goes away and the
commands import from there.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from ..models import SleepStep, Step, StepRun, TerminationStep, WaitForEventStep
from ._format import format_seconds

__all__ = [
    "DYNAMIC",
    "NextRetry",
    "describe_duration",
    "last_successful_step",
    "next_retry",
    "parse_duration",
    "step_bounds",
    "step_state",
]

_DURATION_RE: Final = re.compile(
    r"^\s*(\d+(?:\.\d+)?)\s*(milliseconds?|ms|seconds?|minutes?|hours?|days?|weeks?|months?|years?)\s*$",
    re.IGNORECASE,
)
_UNIT_SECONDS: Final = {
    "ms": 0.001,
    "millisecond": 0.001,
    "second": 1.0,
    "minute": 60.0,
    "hour": 3600.0,
    "day": 86400.0,
    "week": 7 * 86400.0,
    "month": 30 * 86400.0,
    "year": 365 * 86400.0,
}
DYNAMIC: Final = "[dynamic]"


def parse_duration(value: object) -> float | None:
    """Seconds for a Workflows duration: a number of milliseconds or ``"10 seconds"``.

    None when the value is absent, ``"[dynamic]"`` or not understood.
    """
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value) / 1000.0 if math.isfinite(value) and value >= 0 else None
    if not isinstance(value, str):
        return None
    text = value.strip()
    if text.isdigit():
        return int(text) / 1000.0
    m = _DURATION_RE.match(text)
    if m is None:
        return None
    unit = m.group(2).lower()
    unit = unit if unit == "ms" else unit.rstrip("s")
    return float(m.group(1)) * _UNIT_SECONDS[unit]


def describe_duration(value: object) -> str:
    """A config duration as people write it: ``10s``, ``5m 00s``, ``dynamic``."""
    if value == DYNAMIC:
        return "dynamic"
    seconds = parse_duration(value)
    if seconds is None:
        return str(value)
    if seconds >= 1 and seconds.is_integer():
        # Configured durations are round numbers: "10m", not "10m 00s".
        for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
            if seconds % size == 0:
                return f"{int(seconds) // size}{unit}"
    return format_seconds(seconds)


def step_state(step: Step) -> str:
    """What a step is doing or did, in one word."""
    if isinstance(step, StepRun):  # RollbackStep included
        if step.success is True:
            return "complete"
        if step.success is False:
            return "errored"
        last = step.attempts[-1] if step.attempts else None
        if last is not None and last.end is not None and last.success is False:
            return "retrying"
        return "running"
    if isinstance(step, SleepStep | WaitForEventStep):
        if step.error is not None:
            return "errored"
        if step.finished:
            return "complete"
        return "sleeping" if isinstance(step, SleepStep) else "waiting"
    if isinstance(step, TerminationStep):
        return "terminated"
    return "?"


def step_bounds(step: Step, now: datetime) -> tuple[datetime | None, datetime | None]:
    """When a step started and ended (``now`` while it still runs)."""
    if isinstance(step, StepRun | SleepStep | WaitForEventStep):
        if step.start is None:
            return None, None
        # No end yet: the step runs (or waits to retry, or sleeps) until now.
        return step.start, step.end if step.end is not None else now
    return None, None


@dataclass(frozen=True)
class NextRetry:
    """When a retrying step runs again: ``at`` is None when the delay is dynamic."""

    at: datetime | None
    dynamic: bool
    estimate: bool


def next_retry(step: StepRun) -> NextRetry | None:
    """For a retrying step: its last attempt's end plus the retry delay (with backoff).

    Cloudflare does not publish the backoff formula; linear and exponential backoff are
    estimated as ``delay * n`` and ``delay * 2 ** (n - 1)`` after ``n`` failed attempts.
    """
    if step_state(step) != "retrying":
        return None
    last = step.attempts[-1]
    assert last.end is not None
    retries = step.config.retries if step.config is not None else None
    delay_value = retries.delay if retries is not None else None
    if delay_value == DYNAMIC:
        return NextRetry(None, dynamic=True, estimate=False)
    delay = parse_duration(delay_value)
    if delay is None:
        return None
    failed = sum(1 for a in step.attempts if a.success is False)
    backoff = (retries.backoff if retries is not None else None) or "constant"
    if backoff == "linear":
        delay *= failed
    elif backoff == "exponential":
        delay *= 2 ** max(failed - 1, 0)
    return NextRetry(
        last.end + timedelta(seconds=delay), dynamic=False, estimate=backoff != "constant"
    )


def last_successful_step(steps: Sequence[Step]) -> Step | None:
    """The step that most recently finished successfully."""
    best: Step | None = None
    best_end: datetime | None = None
    for step in steps:
        ok = (isinstance(step, StepRun) and step.success is True) or (
            isinstance(step, SleepStep | WaitForEventStep) and step.finished is True
        )
        end = getattr(step, "end", None)
        if ok and end is not None and (best_end is None or end >= best_end):
            best, best_end = step, end
    return best
