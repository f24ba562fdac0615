"""Reading an instance's step log: what each step is doing, when it ran, when it retries.

Pure functions over :mod:`cfwf_async.models`, the same ones the ``cfwf`` command uses::

    from cfwf_async.steplog import last_successful_step, next_retry, step_state

    inst = await session.get_instance("checkout", "order-981")
    for step in inst.steps:
        print(step.name, step_state(step))
        if isinstance(step, StepRun) and (retry := next_retry(step)) is not None:
            print("  next retry:", "dynamic" if retry.dynamic else retry.at)

Durations in a step's config are what the Workflows runtime records: a number of
milliseconds, a string such as ``"10 seconds"``, or ``"[dynamic]"`` when the delay is
computed at run time (:data:`DYNAMIC`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from .models import SleepStep, Step, StepRun, TerminationStep, WaitForEventStep

__all__ = [
    "DYNAMIC",
    "NextRetry",
    "describe_duration",
    "format_seconds",
    "last_successful_step",
    "next_retry",
    "parse_duration",
    "step_bounds",
    "step_state",
]

#: The retry delay a step reports when it is computed at run time.
DYNAMIC: Final = "[dynamic]"

_DURATION_RE: Final = re.compile(
    r"^\s*(\d+(?:\.\d+)?)\s*"
    r"(milliseconds?|ms|seconds?|minutes?|hours?|days?|weeks?|months?|years?)\s*$",
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


def parse_duration(value: object) -> float | None:
    """Seconds for a Workflows duration: a number of milliseconds or ``"10 seconds"``.

    None when the value is absent, :data:`DYNAMIC` or not understood::

        >>> parse_duration(1500), parse_duration("5 minutes"), parse_duration("[dynamic]")
        (1.5, 300.0, None)
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


def format_seconds(seconds: float) -> str:
    """A short human duration: ``850ms``, ``1.40s``, ``38.0s``, ``4m 09s``, ``2h 03m``."""
    seconds = max(seconds, 0.0)
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h {whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d {whole % 86400 // 3600:02d}h"


def describe_duration(value: object) -> str:
    """A config duration as people write it: ``10s``, ``5m``, ``1.50s``, ``dynamic``.

    A value that is not understood is shown as it came.
    """
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
    """What a step is doing or did, in one word.

    ``complete``, ``errored``, ``running`` or ``retrying`` (a ``step.do`` whose last
    attempt failed and that will run again), ``sleeping``, ``waiting`` (for an event),
    ``terminated``, and ``?`` for a step type this version does not know.
    """
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
    """When a step started and ended; ``now`` as the end while it still runs.

    ``(None, None)`` for a step that has not started or has no times (a termination
    entry, an unknown step type).
    """
    if isinstance(step, StepRun | SleepStep | WaitForEventStep):
        if step.start is None:
            return None, None
        # No end yet: the step runs (or waits to retry, or sleeps) until now.
        return step.start, step.end if step.end is not None else now
    return None, None


@dataclass(frozen=True)
class NextRetry:
    """When a retrying step runs again.

    ``at`` is None when the delay is ``dynamic`` (computed at run time, unknown
    outside the worker); ``estimate`` is True when the backoff is linear or
    exponential, whose exact formula Cloudflare does not publish.
    """

    at: datetime | None
    dynamic: bool
    estimate: bool


def next_retry(step: StepRun) -> NextRetry | None:
    """For a retrying step: its last attempt's end plus the retry delay (with backoff).

    None when the step is not retrying or its delay is not understood. Cloudflare does
    not publish the backoff formula; linear and exponential backoff are estimated as
    ``delay * n`` and ``delay * 2 ** (n - 1)`` after ``n`` failed attempts.
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
    """The step that most recently finished successfully (latest ``end``), or None."""
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
