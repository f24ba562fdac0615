"""The ``cfwf`` command: look at Workflows instances from a terminal.

::

    cfwf describe checkout order-981            # summary, every step, a timeline
    cfwf step checkout order-981 --step "render invoice-1" --output invoice.pdf
    cfwf watch checkout order-981               # until it ends; exit 0 if complete
    cfwf list checkout --status errored --since 2026-10-26 --limit 20
    cfwf demo                                   # all of the above against a local fake

Credentials and the account come from the SDK's environment variables
(``CLOUDFLARE_API_TOKEN``, ``CLOUDFLARE_ACCOUNT_ID``, ...); ``--account-id`` and
``--base-url`` override them. Errors are one line on stderr; the exit status is 0 on
success, 1 for an API error (or a watched instance that did not complete) and 2 for a
usage error. Colour is used only on a terminal and never when ``NO_COLOR`` is set.
``rich`` (the ``cli`` extra) draws the download progress bar; without it the command
works the same with a plainer bar.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import IO, Any, Final, NoReturn

import msgspec

from .errors import OutputTooLargeError, WorkflowsError
from .models import (
    INSTANCE_STATUSES,
    TERMINAL_STATUSES,
    Attempt,
    ErrorInfo,
    Instance,
    SleepStep,
    Step,
    StepOutput,
    StepRun,
    TerminationStep,
    UnknownStep,
    WaitForEventStep,
)
from .session import WorkflowsSession
from .streaming import StepStream

__all__ = ["main"]

#: Largest streamed output ``cfwf step`` prints without ``--output``.
DISPLAY_CAP: Final = 1 << 20

EXIT_OK: Final = 0
EXIT_API: Final = 1
EXIT_USAGE: Final = 2


class UsageError(Exception):
    """A command that cannot run as given; reported on one line, exit status 2."""


# ---------------------------------------------------------------------------
# Terminal output


_ANSI: Final = {
    "bold": "1",
    "dim": "2",
    "red": "31",
    "green": "32",
    "yellow": "33",
    "blue": "34",
    "magenta": "35",
    "cyan": "36",
}

_STATUS_STYLE: Final = {
    "complete": "green",
    "errored": "red",
    "terminated": "red",
    "failed": "red",
    "running": "yellow",
    "retrying": "yellow",
    "queued": "blue",
    "waiting": "magenta",
    "sleeping": "magenta",
    "paused": "magenta",
    "waitingForPause": "magenta",
    "rollingBack": "magenta",
}


def colour_wanted(stream: IO[str]) -> bool:
    """Colour only on a terminal, never with ``NO_COLOR`` set, never for ``TERM=dumb``."""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _is_tty(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


@dataclass(frozen=True)
class Glyphs:
    """The characters the timeline and status lines draw with."""

    ok: str
    failed: str
    running: str
    wait: str
    idle: str
    ellipsis: str
    arrow: str
    approx: str

    @classmethod
    def for_stream(cls, stream: IO[str]) -> Glyphs:
        """Block characters when the stream can encode them, ASCII otherwise."""
        unicode = cls("█", "▓", "▒", "·", "░", "…", "→", "≈ ")
        encoding = getattr(stream, "encoding", None) or "ascii"
        try:
            "".join(vars(unicode).values()).encode(encoding)
        except (UnicodeEncodeError, LookupError):
            return cls("#", "x", "=", ".", "-", "...", "->", "~")
        return unicode


@dataclass
class Console:
    """Where a command writes, and how: colour and glyphs decided once per stream."""

    stdout: IO[str]
    stderr: IO[str]
    colour: bool = False
    err_colour: bool = False
    glyphs: Glyphs = field(default_factory=lambda: Glyphs.for_stream(sys.stdout))

    @classmethod
    def for_streams(cls, stdout: IO[str], stderr: IO[str]) -> Console:
        """A console for these streams, colour per their terminal-ness and ``NO_COLOR``."""
        return cls(
            stdout,
            stderr,
            colour=colour_wanted(stdout),
            err_colour=colour_wanted(stderr),
            glyphs=Glyphs.for_stream(stdout),
        )

    def paint(self, text: str, style: str | None, *, err: bool = False) -> str:
        """``text`` in ``style`` (a name or several, space-separated) when colour is on."""
        if not text or not style or not (self.err_colour if err else self.colour):
            return text
        codes = ";".join(_ANSI[s] for s in style.split() if s in _ANSI)
        return f"\x1b[{codes}m{text}\x1b[0m" if codes else text

    def status(self, status: str, *, width: int = 0, err: bool = False) -> str:
        """A status word, padded to ``width``, in its colour."""
        return self.paint(status.ljust(width), _STATUS_STYLE.get(status), err=err)

    def print(self, text: str = "") -> None:
        """One line to stdout."""
        self.stdout.write(text + "\n")

    def error(self, message: str) -> None:
        """One line to stderr, newlines folded so an error is always a single line."""
        one_line = " ".join(message.split())
        self.stderr.write(f"cfwf: {self.paint('error:', 'bold red', err=True)} {one_line}\n")
        self.stderr.flush()

    def note(self, message: str) -> None:
        """An informational line on stderr."""
        self.stderr.write(self.paint(message, "dim", err=True) + "\n")


# ---------------------------------------------------------------------------
# Formatting helpers


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


def format_bytes(n: float) -> str:
    """``5.0 MiB`` style sizes."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def format_time(dt: datetime | None, *, millis: bool = True) -> str:
    """A UTC timestamp, ``2026-10-30 08:00:00.120Z`` (or to the second); ``-`` for None."""
    if dt is None:
        return "-"
    utc = dt.astimezone(UTC)
    if not millis:
        return utc.strftime("%Y-%m-%d %H:%M:%SZ")
    return utc.strftime("%Y-%m-%d %H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def format_clock(dt: datetime | None, *, day_of: datetime | None = None) -> str:
    """Time of day in UTC, with the date only when it differs from ``day_of``'s."""
    if dt is None:
        return "-"
    utc = dt.astimezone(UTC)
    clock = utc.strftime("%H:%M:%S.") + f"{utc.microsecond // 1000:03d}"
    if day_of is not None and day_of.astimezone(UTC).date() != utc.date():
        return utc.strftime("%m-%d ") + clock
    return clock


def one_line(value: Any, limit: int, ellipsis: str = "…") -> str:
    """A value as a single line of at most ``limit`` characters (0: no limit)."""
    if value is None:
        return "-"
    text = value if isinstance(value, str) else msgspec.json.encode(value).decode()
    text = text.replace("\r", "\\r").replace("\n", "\\n").replace("\t", "\\t")
    if limit and len(text) > limit:
        rest = len(text) - limit
        return f"{text[:limit]}{ellipsis} (+{rest} chars)"
    return text


def format_error(error: ErrorInfo | None) -> str:
    """``Name: message`` of a runtime error."""
    if error is None:
        return "-"
    if error.name and error.message:
        return f"{error.name}: {error.message}"
    return error.name or error.message or "(no message)"


def table(console: Console, headers: Sequence[str], rows: Iterable[Sequence[str]],
          styles: Sequence[Callable[[str, int], str] | None] | None = None) -> list[str]:
    """Lines of a left-aligned table; ``styles[i](cell, width)`` paints column ``i``."""
    body = [list(r) for r in rows]
    widths = [len(h) for h in headers]
    for row in body:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    head = "  ".join(
        console.paint(h.ljust(w), "bold") for h, w in zip(headers, widths, strict=True)
    )
    lines = [head.rstrip()]
    for row in body:
        cells = []
        for i, cell in enumerate(row):
            style = styles[i] if styles is not None else None
            cells.append(style(cell, widths[i]) if style else cell.ljust(widths[i]))
        lines.append("  ".join(cells).rstrip())
    return lines


# ---------------------------------------------------------------------------
# Reading a step log


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


def instance_json(inst: Instance) -> bytes:
    """The instance as indented JSON, unknown step types flattened back to their fields."""
    data = msgspec.to_builtins(inst)
    steps = data.get("steps")
    if isinstance(steps, list):
        for i, step in enumerate(inst.steps):
            if isinstance(step, UnknownStep):
                steps[i] = {**step.fields, "type": step.type}
    return msgspec.json.format(msgspec.json.encode(data), indent=2)


# ---------------------------------------------------------------------------
# describe


LABEL_WIDTH: Final = 24


def render_describe(
    console: Console,
    workflow: str,
    instance_id: str,
    inst: Instance,
    *,
    order: str = "asc",
    show_output: bool = True,
    truncate: int = 200,
    now: datetime | None = None,
) -> list[str]:
    """The lines ``cfwf describe`` prints: summary, steps and timeline."""
    now = now or datetime.now(UTC)
    g = console.glyphs
    lines: list[str] = []
    p = console.paint
    title = f"{p(workflow, 'bold')} / {p(instance_id, 'bold')}"
    lines.append(f"{title}  {console.status(inst.status)}")

    def field_line(label: str, value: str) -> None:
        lines.append(f"  {p(label.ljust(14), 'dim')}{value}")

    field_line("trigger", inst.trigger.source if inst.trigger else "-")
    if inst.schedule is not None and inst.schedule.cron:
        field_line("schedule", inst.schedule.cron)
    field_line("version", inst.version_id or "-")
    field_line("queued", format_time(inst.queued))
    started = format_time(inst.start)
    if inst.start is not None and inst.queued is not None:
        started += p(f"  ({format_seconds((inst.start - inst.queued).total_seconds())} queued)",
                     "dim")
    field_line("started", started)
    field_line("ended", format_time(inst.end))
    if inst.start is not None:
        end = inst.end or now
        span = format_seconds((end - inst.start).total_seconds())
        field_line("duration", span if inst.end else f"{span} so far")
    else:
        field_line("duration", "-")
    last_ok = last_successful_step(inst.steps)
    field_line("last ok step", last_ok.name if last_ok is not None else "-")
    if inst.error is not None:
        field_line("error", p(format_error(inst.error), "red"))
    if inst.rollback is not None:
        field_line("rollback", f"{inst.rollback.outcome or '-'}"
                   + (f" ({format_error(inst.rollback.error)})" if inst.rollback.error else ""))
    if show_output:
        field_line("params", one_line(inst.params, truncate, g.ellipsis))
        if inst.output not in (None, ""):
            field_line("output", one_line(inst.output, truncate, g.ellipsis))
    count = inst.step_count if inst.step_count is not None else len(inst.steps)
    field_line("steps", str(count))

    if not inst.steps:
        return lines
    lines.append("")
    lines.append(p("Steps", "bold") + p(" (newest first)" if order == "desc" else "", "dim"))
    total = len(inst.steps)
    day = inst.start or inst.queued
    numbers = [total - i if order == "desc" else i + 1 for i in range(total)]
    rows = []
    for number, step in zip(numbers, inst.steps, strict=True):
        start, stop = step_bounds(step, now)
        dur = format_seconds((stop - start).total_seconds()) if start and stop else "-"
        attempts = ""
        if isinstance(step, StepRun):
            limit = step.config.retries.limit if step.config and step.config.retries else None
            attempts = str(len(step.attempts))
            if limit is not None:
                attempts += f"/{limit + 1}"
        name = step.name
        if isinstance(step, TerminationStep):
            name = f"(by {step.trigger.source if step.trigger else 'unknown'})"
        rows.append([str(number), step.type, name, step_state(step),
                     format_clock(start, day_of=day), dur, attempts])
    header = ["#", "TYPE", "NAME", "STATE", "START", "DURATION", "ATTEMPTS"]
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header))]
    indent = " " * (widths[0] + widths[1] + 6)
    heads = (p(h.ljust(w), "bold") for h, w in zip(header, widths, strict=True))
    lines.append(("  " + "  ".join(heads)).rstrip())
    for row, step in zip(rows, inst.steps, strict=True):
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=True)]
        cells[3] = console.status(row[3], width=widths[3])
        lines.append("  " + "  ".join(cells).rstrip())
        details = _step_details(console, step, show_output, truncate, now, day)
        lines.extend(indent + d for d in details)
    lines.append("")
    lines.extend(render_timeline(console, inst, now=now))
    return lines


def _step_details(
    console: Console,
    step: Step,
    show_output: bool,
    truncate: int,
    now: datetime,
    day: datetime | None,
) -> list[str]:
    p = console.paint
    g = console.glyphs
    out: list[str] = []
    if isinstance(step, StepRun):
        show_attempts = len(step.attempts) > 1 or any(a.error for a in step.attempts)
        if show_attempts:
            for i, a in enumerate(step.attempts, 1):
                out.append(_attempt_line(console, i, a, now, day))
        cfg = step.config
        if cfg is not None:
            parts = []
            r = cfg.retries
            if r is not None:
                retry = f"retries {r.limit if r.limit is not None else '?'}"
                if r.delay is not None:
                    retry += f", delay {describe_duration(r.delay)}"
                if r.backoff:
                    retry += f" {r.backoff}"
                parts.append(retry)
            if cfg.timeout is not None:
                parts.append(f"timeout {describe_duration(cfg.timeout)}")
            if cfg.sensitive:
                parts.append(f"sensitive {cfg.sensitive}")
            if parts:
                out.append(p("config: " + "; ".join(parts), "dim"))
        nxt = next_retry(step)
        if nxt is not None:
            if nxt.dynamic:
                out.append(p("next retry: dynamic (the workflow computes the delay)", "yellow"))
            elif nxt.at is not None:
                left = (nxt.at - now).total_seconds()
                when = f"in {format_seconds(left)}" if left >= 0 else f"{format_seconds(-left)} ago"
                approx = g.approx if nxt.estimate else ""
                out.append(p(f"next retry: {approx}{format_clock(nxt.at, day_of=day)} ({when})",
                             "yellow"))
        if show_output and step.output is not None:
            out.append("output: " + _output_text(step.output, truncate, g.ellipsis))
    elif isinstance(step, WaitForEventStep):
        if step.event_type:
            out.append(p(f"event: {step.event_type}", "dim"))
        if step.error is not None:
            out.append(p(f"error: {format_error(step.error)}", "red"))
        if show_output and step.output is not None:
            out.append("output: " + _output_text(step.output, truncate, g.ellipsis))
    elif isinstance(step, SleepStep):
        if step.error is not None:
            out.append(p(f"error: {format_error(step.error)}", "red"))
    elif isinstance(step, UnknownStep):
        out.append(p(f"(a step type this cfwf does not know: {one_line(step.fields, truncate)})",
                     "dim"))
    return out


def _attempt_line(console: Console, n: int, a: Attempt, now: datetime,
                  day: datetime | None) -> str:
    p = console.paint
    dur = "-"
    if a.start is not None:
        dur = format_seconds(((a.end or now) - a.start).total_seconds())
    if a.success is True:
        result = p("ok", "green")
    elif a.error is not None or a.success is False:
        result = p(f"failed: {format_error(a.error)}", "red")
    else:
        result = p("running", "yellow")
    return f"attempt {n}  {format_clock(a.start, day_of=day)}  {dur:>7}  {result}"


def _output_text(output: Any, truncate: int, ellipsis: str) -> str:
    text = one_line(output, truncate, ellipsis)
    if output == "[REDACTED]":
        text += " (sensitive: redacted by Cloudflare)"
    return text


def render_timeline(console: Console, inst: Instance, *, now: datetime,
                    width: int | None = None) -> list[str]:
    """One bar per step on a shared time axis from the instance's start to its end.

    Attempts that succeeded, failed or still run, the waits between retries, and sleeps
    or event waits each get their own glyph, so slow steps and retries stand out.
    """
    g = console.glyphs
    spans = [(s, *step_bounds(s, now)) for s in inst.steps]
    timed = [(s, a, b) for s, a, b in spans if a is not None and b is not None]
    if not timed:
        return []
    t0 = min([a for _, a, _ in timed] + ([inst.start] if inst.start else []))
    t1 = max([b for _, _, b in timed] + ([inst.end] if inst.end else []))
    if not inst.is_terminal:
        t1 = max(t1, now)
    total = max((t1 - t0).total_seconds(), 1e-3)
    if width is None:
        columns = shutil.get_terminal_size((100, 24)).columns
        width = max(20, min(64, columns - LABEL_WIDTH - 24))

    def col(t: datetime) -> int:
        return min(width - 1, max(0, int((t - t0).total_seconds() / total * width)))

    def fill(bar: list[tuple[str, str | None]], a: datetime, b: datetime, ch: str,
             style: str | None) -> None:
        for i in range(col(a), max(col(b), col(a) + 1) if b > a else col(a) + 1):
            if i < width:
                bar[i] = (ch, style)

    p = console.paint
    lines = [
        p("Timeline", "bold")
        + p(f"  {format_clock(t0)} {g.arrow} {format_clock(t1)}"
            f"  ({format_seconds(total)}; one column = {format_seconds(total / width)})", "dim")
    ]
    ordered = sorted(timed, key=lambda x: x[1])
    for step, a, b in ordered:
        bar: list[tuple[str, str | None]] = [(" ", None)] * width
        note = format_seconds((b - a).total_seconds())
        if isinstance(step, StepRun) and step.attempts:
            fill(bar, a, b, g.wait, "yellow")
            for att in step.attempts:
                if att.start is None:
                    continue
                att_end = att.end or now
                if att.success is True:
                    fill(bar, att.start, att_end, g.ok, "green")
                elif att.error is not None or att.success is False:
                    fill(bar, att.start, att_end, g.failed, "red")
                else:
                    fill(bar, att.start, att_end, g.running, "yellow")
            if len(step.attempts) > 1:
                note += f"  {len(step.attempts)} attempts"
        elif isinstance(step, StepRun):
            state = step_state(step)
            ch, style = {"complete": (g.ok, "green"), "errored": (g.failed, "red")}.get(
                state, (g.running, "yellow"))
            fill(bar, a, b, ch, style)
        else:
            style = "red" if getattr(step, "error", None) is not None else "magenta"
            fill(bar, a, b, g.idle, style)
        painted = "".join(p(ch, style) for ch, style in bar)
        label = step.name
        if len(label) > LABEL_WIDTH:
            label = label[: LABEL_WIDTH - len(g.ellipsis)] + g.ellipsis
        lines.append(f"  {label.ljust(LABEL_WIDTH)} {painted}  {p(note, 'dim')}")
    lines.append(p(f"  {g.ok} attempt ok  {g.failed} attempt failed  {g.running} running  "
                   f"{g.wait} waiting to retry  {g.idle} sleep / event wait", "dim"))
    return lines


async def cmd_describe(session: WorkflowsSession, args: argparse.Namespace,
                       console: Console) -> int:
    """``cfwf describe``: summary, steps and timeline of one instance (or its JSON)."""
    inst = await session.get_instance(args.workflow, args.instance, order=args.order)
    if args.json:
        console.stdout.write(instance_json(inst).decode() + "\n")
        return EXIT_OK
    for line in render_describe(
        console, args.workflow, args.instance, inst, order=args.order,
        show_output=not args.no_step_output, truncate=args.truncate,
    ):
        console.print(line)
    return EXIT_OK


# ---------------------------------------------------------------------------
# step


class PlainProgress:
    """A one-line progress display on a terminal, for when rich is not installed."""

    def __init__(self, stream: IO[str], label: str) -> None:
        self._stream = stream
        self._label = label
        self._started = time.monotonic()
        self._last = 0.0

    def __call__(self, done: int, total: int | None) -> None:
        now = time.monotonic()
        if now - self._last < 0.1 and (total is None or done < total):
            return
        self._last = now
        rate = done / max(now - self._started, 1e-6)
        size = f"{format_bytes(done)}"
        if total:
            size += f" / {format_bytes(total)}  {done * 100 // total:3d}%"
        self._stream.write(f"\r\x1b[2K{self._label}  {size}  {format_bytes(rate)}/s")
        self._stream.flush()

    def finish(self) -> None:
        """End the progress line."""
        self._stream.write("\n")
        self._stream.flush()


async def _save_with_progress(stream: StepStream, path: str, label: str,
                              console: Console) -> int:
    if not _is_tty(console.stderr):
        return await stream.save(path)
    try:
        from rich.console import Console as RichConsole
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
    except ImportError:
        plain = PlainProgress(console.stderr, label)
        try:
            return await stream.save(path, progress=plain)
        finally:
            plain.finish()
    rich_console = RichConsole(file=console.stderr, no_color=not console.err_colour)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=rich_console,
    ) as progress:
        task = progress.add_task(label, total=stream.content_length)

        def update(done: int, total: int | None) -> None:
            progress.update(task, completed=done)

        return await stream.save(path, progress=update)


def _looks_binary(data: bytes) -> str | None:
    """The text of ``data`` if it is UTF-8 without NUL bytes, else None."""
    if b"\x00" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


async def cmd_step(session: WorkflowsSession, args: argparse.Namespace,
                   console: Console) -> int:
    """``cfwf step``: one step's full output, streamed to ``--output`` when large."""
    result = await session.get_step_output(
        args.workflow, args.instance, name=args.step, type=args.type, attempt=args.attempt
    )
    if isinstance(result, StepStream):
        async with result:
            return await _emit_stream(result, args, console)
    return _emit_json_output(result, args, console)


def _emit_json_output(result: StepOutput, args: argparse.Namespace, console: Console) -> int:
    if args.output is not None:
        value = result.output
        data = (value.encode() if isinstance(value, str)
                else msgspec.json.format(msgspec.json.encode(value), indent=2) + b"\n")
        if args.output == "-":
            console.stdout.flush()
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
            return EXIT_OK
        _write_file(args.output, data)
        _report_saved(console, args, args.output, len(data), "application/json", result.status)
        return EXIT_OK
    if args.json:
        body = msgspec.json.format(msgspec.json.encode(result), indent=2)
        console.stdout.write(body.decode() + "\n")
        return EXIT_OK
    p = console.paint
    console.print(f"{p('status'.ljust(8), 'dim')}{console.status(result.status)}")
    if result.error is not None:
        # A running step with an error is retrying after a failed attempt.
        retrying = " (retrying)" if result.status == "running" else ""
        console.print(f"{p('error'.ljust(8), 'dim')}{p(format_error(result.error), 'red')}"
                      f"{retrying}")
    if result.event_type:
        console.print(f"{p('event'.ljust(8), 'dim')}{result.event_type}")
    console.print(p("output", "dim"))
    value = result.output
    if value is None:
        console.print("-")
    elif isinstance(value, str):
        console.print(value)
        if value == "[REDACTED]":
            console.note("(the step's output is marked sensitive: Cloudflare redacts it)")
    else:
        console.print(msgspec.json.format(msgspec.json.encode(value), indent=2).decode())
    return EXIT_OK


async def _emit_stream(stream: StepStream, args: argparse.Namespace, console: Console) -> int:
    size = stream.content_length
    if args.output == "-":
        if _is_tty(console.stdout):
            raise UsageError(
                "refusing to write a streamed output to a terminal; "
                "redirect stdout or use --output FILE"
            )
        console.stdout.flush()
        raw = sys.stdout.buffer
        async for chunk in stream:
            raw.write(chunk)
        raw.flush()
        return EXIT_OK
    if args.output is not None:
        label = os.path.basename(args.output) or args.output
        written = await _save_with_progress(stream, args.output, label, console)
        _report_saved(console, args, args.output, written, stream.content_type, None)
        return EXIT_OK
    hint = "save it with --output FILE (or --output - to pipe it)"
    if size is not None and size > DISPLAY_CAP:
        raise UsageError(
            f"the output is a stream of {format_bytes(size)}, over the "
            f"{format_bytes(DISPLAY_CAP)} display cap; {hint}"
        )
    try:
        data = await stream.read(max_bytes=DISPLAY_CAP)
    except OutputTooLargeError:
        raise UsageError(
            f"the output is a stream over the {format_bytes(DISPLAY_CAP)} display cap; {hint}"
        ) from None
    text = _looks_binary(data)
    if text is None:
        raise UsageError(
            f"the output is {format_bytes(len(data))} of binary data "
            f"({stream.content_type}); {hint}"
        )
    if args.json:
        body = {"stream": True, "content_type": stream.content_type, "bytes": len(data),
                "output": text}
        console.stdout.write(msgspec.json.format(msgspec.json.encode(body), indent=2).decode()
                             + "\n")
    else:
        console.stdout.write(text if text.endswith("\n") else text + "\n")
    return EXIT_OK


def _write_file(path: str, data: bytes) -> None:
    partial = path + ".part"
    with open(partial, "wb") as f:
        f.write(data)
    os.replace(partial, path)


def _report_saved(console: Console, args: argparse.Namespace, path: str, n: int,
                  content_type: str, status: str | None) -> None:
    if args.json:
        body: dict[str, Any] = {"path": os.path.abspath(path), "bytes": n,
                                "content_type": content_type}
        if status is not None:
            body["status"] = status
        console.stdout.write(msgspec.json.encode(body).decode() + "\n")
    else:
        console.print(f"saved {n:,} bytes ({content_type}) to {path}")


# ---------------------------------------------------------------------------
# watch


async def cmd_watch(session: WorkflowsSession, args: argparse.Namespace,
                    console: Console) -> int:
    """``cfwf watch``: poll until the instance ends; 0 when it completed, else 1."""
    interval: float = args.interval
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    live = _is_tty(console.stdout)
    shown: tuple[str, int | None] | None = None
    p = console.paint
    while True:
        inst = await session.get_instance(args.workflow, args.instance, simple=True)
        now = datetime.now(UTC)
        clock = now.strftime("%H:%M:%S")
        if inst.start is not None:
            span = format_seconds(((inst.end or now) - inst.start).total_seconds())
            timing = f"took {span}" if inst.end else f"running for {span}"
        else:
            timing = "not started"
        steps = inst.step_count if inst.step_count is not None else len(inst.steps)
        line = (f"{p(clock, 'dim')}  {console.status(inst.status, width=10)}"
                f"  {steps} step{'s' if steps != 1 else ''}  {p(timing, 'dim')}")
        state = (inst.status, steps)
        if live:
            console.stdout.write("\r\x1b[2K" + line)
            console.stdout.flush()
        elif state != shown or inst.is_terminal:
            console.print(line)
        shown = state
        if inst.is_terminal:
            if live:
                console.stdout.write("\n")
            if inst.error is not None:
                console.print(p(f"error: {format_error(inst.error)}", "red"))
            return EXIT_OK if inst.status == "complete" else EXIT_API
        wait = interval
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                if live:
                    console.stdout.write("\n")
                console.stdout.flush()
                console.error(f"timed out after {args.timeout:g} s; the instance is still "
                              f"{inst.status}")
                return EXIT_API
            wait = min(wait, left)
        await asyncio.sleep(wait)


# ---------------------------------------------------------------------------
# list


def parse_since(text: str) -> datetime:
    """An ISO 8601 date or date-time for ``--since`` / ``--until``; naive means UTC."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an ISO 8601 date or date-time: {text!r} (e.g. 2026-10-26 or "
            "2026-10-26T08:00:00Z)"
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


async def cmd_list(session: WorkflowsSession, args: argparse.Namespace,
                   console: Console) -> int:
    """``cfwf list``: a workflow's instances as a table or JSON lines."""
    limit: int | None = args.limit
    kwargs: dict[str, Any] = {}
    if args.status is not None:
        kwargs["status"] = args.status
    if args.since is not None:
        kwargs["date_start"] = args.since
    if args.until is not None:
        kwargs["date_end"] = args.until
    if limit is not None:
        # Ask for no more than we will show, so --limit 5 is one small request.
        kwargs["per_page"] = min(limit, 100)
    listing = session.list_instances(args.workflow, **kwargs)
    rows: list[list[str]] = []
    count = 0
    now = datetime.now(UTC)
    try:
        async for summary in listing:
            count += 1
            if args.json:
                console.stdout.write(msgspec.json.encode(summary).decode() + "\n")
            else:
                if summary.started_on is not None:
                    end = summary.ended_on or now
                    dur = format_seconds((end - summary.started_on).total_seconds())
                    if summary.ended_on is None and summary.status not in TERMINAL_STATUSES:
                        dur += " so far"
                else:
                    dur = "-"
                rows.append([summary.id, summary.status,
                             format_time(summary.created_on, millis=False),
                             format_time(summary.started_on, millis=False),
                             format_time(summary.ended_on, millis=False), dur])
            if limit is not None and count >= limit:
                break
    finally:
        aclose: Callable[[], Awaitable[None]] | None = getattr(listing, "aclose", None)
        if aclose is not None:
            await aclose()
    if not args.json:
        if not rows:
            console.note("no instances")
            return EXIT_OK
        styles: list[Callable[[str, int], str] | None] = [None] * 6
        styles[1] = lambda cell, w: console.status(cell, width=w)
        for line in table(console, ["ID", "STATUS", "CREATED", "STARTED", "ENDED",
                                    "DURATION"], rows, styles):
            console.print(line)
    return EXIT_OK


# ---------------------------------------------------------------------------
# Arguments and the entry point


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit status 2), like the rest."""

    def error(self, message: str) -> NoReturn:
        one_line = " ".join(message.split())
        self.exit(EXIT_USAGE, f"cfwf: error: {one_line} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``cfwf`` argument parser."""
    from . import __version__

    # Connection options are accepted before or after the command name; the
    # sub-parsers' copies default to SUPPRESS so they never overwrite the main one's.
    def connection(parser: argparse.ArgumentParser, default: Any) -> None:
        group = parser.add_argument_group("connection")
        group.add_argument("--account-id", default=default, metavar="ID",
                           help="Cloudflare account id (default: $CLOUDFLARE_ACCOUNT_ID)")
        group.add_argument("--base-url", default=default, metavar="URL",
                           help="API base URL (default: $CLOUDFLARE_BASE_URL or "
                                "https://api.cloudflare.com/client/v4)")

    parser = _Parser(
        prog="cfwf",
        description="Look at Cloudflare Workflows instances: describe, step outputs, watch, "
                    "list. Credentials come from CLOUDFLARE_API_TOKEN (or CLOUDFLARE_EMAIL "
                    "and CLOUDFLARE_API_KEY).",
        epilog="Try `cfwf demo` first: it runs every command against a local fake API.",
    )
    parser.add_argument("--version", action="version", version=f"cfwf {__version__}")
    connection(parser, None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        connection(cmd, argparse.SUPPRESS)
        return cmd

    d = command("describe", "an instance's summary, every step, and a timeline")
    d.add_argument("workflow", metavar="WORKFLOW")
    d.add_argument("instance", metavar="INSTANCE")
    d.add_argument("--json", action="store_true", help="print the instance as JSON, untruncated")
    d.add_argument("--order", choices=("asc", "desc"), default="asc",
                   help="step order: oldest first (asc, default) or newest first")
    d.add_argument("--no-step-output", action="store_true", help="leave step outputs out")
    d.add_argument("--truncate", type=_non_negative_int, default=200, metavar="N",
                   help="cut outputs to N characters (default 200; 0: no limit)")
    d.set_defaults(handler=cmd_describe)

    s = command("step", "one step's full output; streamed outputs go to a file")
    s.add_argument("workflow", metavar="WORKFLOW")
    s.add_argument("instance", metavar="INSTANCE")
    s.add_argument("--step", required=True, metavar="NAME",
                   help='exact step name from the instance log, e.g. "fetch page-1"')
    s.add_argument("--type", choices=("step", "waitForEvent"), default="step",
                   help="step.do (step, default) or waitForEvent")
    s.add_argument("--attempt", type=_positive_int, metavar="N", help="one attempt (1-based)")
    s.add_argument("--output", metavar="FILE",
                   help="write the output to FILE chunk by chunk ('-': raw to stdout)")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(handler=cmd_step)

    w = command("watch", "follow an instance until it ends; exit 0 if it completed")
    w.add_argument("workflow", metavar="WORKFLOW")
    w.add_argument("instance", metavar="INSTANCE")
    w.add_argument("--interval", type=_positive_float, default=2.0, metavar="S",
                   help="seconds between polls (default 2)")
    w.add_argument("--timeout", type=_positive_float, metavar="S",
                   help="give up (exit 1) after S seconds")
    w.set_defaults(handler=cmd_watch)

    ls = command("list", "a workflow's instances, as a table or JSON lines")
    ls.add_argument("workflow", metavar="WORKFLOW")
    ls.add_argument("--status", choices=sorted(INSTANCE_STATUSES), metavar="STATUS",
                    help="only this status: " + ", ".join(sorted(INSTANCE_STATUSES)))
    ls.add_argument("--since", type=parse_since, metavar="ISO",
                    help="created at or after this date-time (no zone: UTC)")
    ls.add_argument("--until", type=parse_since, metavar="ISO",
                    help="created at or before this date-time (no zone: UTC)")
    ls.add_argument("--limit", type=_positive_int, metavar="N",
                    help="stop after N instances (fetches no further pages)")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    ls.set_defaults(handler=cmd_list)

    demo = sub.add_parser("demo", help="run every command against a local fake API (offline)",
                          description="Start the fake Workflows API on 127.0.0.1, fill it "
                                      "with an instance, and run describe, step, list and "
                                      "watch against it. No network, no credentials.")
    demo.set_defaults(handler=None)
    return parser


def _check_credentials(args: argparse.Namespace) -> None:
    env = os.environ
    if not env.get("CLOUDFLARE_API_TOKEN") and not (
        env.get("CLOUDFLARE_EMAIL") and env.get("CLOUDFLARE_API_KEY")
    ):
        raise UsageError(
            "no credentials: set CLOUDFLARE_API_TOKEN to an API token with Workers Scripts "
            "Read permission (or CLOUDFLARE_EMAIL and CLOUDFLARE_API_KEY)"
        )
    if not (args.account_id or env.get("CLOUDFLARE_ACCOUNT_ID")):
        raise UsageError("no account: pass --account-id or set CLOUDFLARE_ACCOUNT_ID")


Handler = Callable[[WorkflowsSession, argparse.Namespace, Console], Awaitable[int]]


async def _run(args: argparse.Namespace, console: Console) -> int:
    if args.command == "demo":
        from ._demo import run_demo

        return await run_demo(console)
    _check_credentials(args)
    handler: Handler = args.handler
    async with WorkflowsSession(account_id=args.account_id, base_url=args.base_url) as session:
        return await handler(session, args, console)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cfwf`` with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 with a usage line on bad arguments
    console = Console.for_streams(sys.stdout, sys.stderr)
    try:
        return asyncio.run(_run(args, console))
    except UsageError as exc:
        console.error(str(exc))
        return EXIT_USAGE
    except WorkflowsError as exc:
        console.error(str(exc))
        return EXIT_API
    except (ValueError, TypeError) as exc:
        # The SDK refuses invalid arguments (an over-long workflow name, an http:// URL
        # to a remote host) with these, before any request.
        if os.environ.get("CFWF_DEBUG"):
            raise
        console.error(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        console.stderr.write("\n")
        return 130
    except BrokenPipeError:
        # The reader went away (``| head``): say nothing, and keep Python's shutdown
        # flush from raising a second time.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except OSError as exc:
        console.error(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))
        return EXIT_API
    except Exception as exc:  # never a traceback, unless asked for
        if os.environ.get("CFWF_DEBUG"):
            raise
        console.error(f"unexpected {type(exc).__name__}: {exc} (set CFWF_DEBUG=1 for a "
                      "traceback)")
        return EXIT_API
