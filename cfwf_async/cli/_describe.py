"""``cfwf describe``: an instance's summary, every step, and a timeline (or its JSON)."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any, Final

from ..models import (
    Attempt,
    Instance,
    SleepStep,
    Step,
    StepRun,
    TerminationStep,
    UnknownStep,
    WaitForEventStep,
)
from ..session import WorkflowsSession
from ..steplog import (
    describe_duration,
    format_seconds,
    last_successful_step,
    next_retry,
    step_bounds,
    step_state,
)
from ._console import EXIT_API, EXIT_OK, Console, safe
from ._format import (
    Style,
    format_clock,
    format_error,
    format_number,
    format_time,
    json_text,
    one_line,
    table,
    wrapped,
)
from ._timeline import render_timeline
from ._waiting import waiting
from ._width import Column

__all__ = ["cmd_describe", "fetch_instance_result", "render_describe"]


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
    lines = _summary(console, workflow, instance_id, inst, show_output, truncate, now)
    if not inst.steps:
        return lines
    lines.append("")
    lines.extend(_step_table(console, inst, order, show_output, truncate, now))
    lines.append("")
    lines.extend(render_timeline(console, inst, now=now))
    return lines


def _summary(console: Console, workflow: str, instance_id: str, inst: Instance,
             show_output: bool, truncate: int, now: datetime) -> list[str]:
    """The title line and the instance's fields, one per line."""
    p = console.paint
    g = console.glyphs
    lines = [f"{p(workflow, 'bold')} / {p(instance_id, 'bold')}  {console.status(inst.status)}"]

    def field_line(label: str, value: str, style: str | None = None) -> None:
        # Wrapped plain (the label's colour is added after), so long values fit.
        first, *rest = wrapped(console, "  ", label.ljust(14), value, style)
        lines.append("  " + p(label.ljust(14), "dim") + first[16:])
        lines.extend(rest)

    field_line("trigger", safe(inst.trigger.source) if inst.trigger else "-")
    if inst.schedule is not None and inst.schedule.cron:
        field_line("schedule", safe(inst.schedule.cron))
    field_line("version", safe(inst.version_id or "-"))
    field_line("queued", format_time(inst.queued))
    started = format_time(inst.start)
    if inst.start is not None and inst.queued is not None:
        started += p(f"  ({format_seconds((inst.start - inst.queued).total_seconds())} queued)",
                     "dim")
    field_line("started", started)
    field_line("ended", format_time(inst.end))
    if inst.start is not None:
        span = format_seconds(((inst.end or now) - inst.start).total_seconds())
        field_line("duration", span if inst.end else f"{span} so far")
    else:
        field_line("duration", "-")
    last_ok = last_successful_step(inst.steps)
    field_line("last ok step", safe(last_ok.name) if last_ok is not None else "-")
    if inst.error is not None:
        field_line("error", format_error(inst.error), "red")
    if inst.rollback is not None:
        field_line("rollback", safe(inst.rollback.outcome or "-")
                   + (f" ({format_error(inst.rollback.error)})" if inst.rollback.error else ""))
    if show_output:
        field_line("params", one_line(inst.params, truncate, g.ellipsis))
        if inst.output not in (None, ""):
            field_line("output", one_line(inst.output, truncate, g.ellipsis))
    count = inst.step_count if inst.step_count is not None else len(inst.steps)
    field_line("steps", format_number(count))
    return lines


def _step_row(number: int, step: Step, now: datetime, day: datetime | None) -> list[str]:
    start, stop = step_bounds(step, now)
    dur = format_seconds((stop - start).total_seconds()) if start and stop else "-"
    attempts = ""
    if isinstance(step, StepRun):
        limit = step.config.retries.limit if step.config and step.config.retries else None
        attempts = str(len(step.attempts))
        if limit is not None:
            attempts += f"/{format_number(limit + 1)}"
    name = step.name
    if isinstance(step, TerminationStep):
        name = f"(by {step.trigger.source if step.trigger else 'unknown'})"
    return [str(number), safe(step.type), safe(name), step_state(step),
            format_clock(start, day_of=day), dur, attempts]


# On a narrow terminal START goes first (the timeline shows when each step ran), then
# TYPE; a long step name is cut (its details and the timeline still name it).
_STEP_COLUMNS: Final = (
    Column("#"),
    Column("TYPE", drop=2),
    Column("NAME", cut=True, min_width=12),
    Column("STATE"),
    Column("START", drop=1),
    Column("DURATION"),
    Column("ATTEMPTS"),
)
_NAME: Final = 2
ATTEMPTS_LEGEND: Final = "ATTEMPTS: attempts made / attempts allowed (1 + the step's retry limit)"

# A detail line under a step: a plain lead, then text in a style.
Detail = tuple[str, str, str | None]


def _step_table(console: Console, inst: Instance, order: str, show_output: bool,
                truncate: int, now: datetime) -> list[str]:
    """The step table, each step followed by its attempts, config and output."""
    p = console.paint
    lines = [p("Steps", "bold") + p(" (newest first)" if order == "desc" else "", "dim")]
    total = len(inst.steps)
    day = inst.start or inst.queued
    numbers = [total - i if order == "desc" else i + 1 for i in range(total)]
    rows = [_step_row(n, s, now, day) for n, s in zip(numbers, inst.steps, strict=True)]
    styles: list[Style | None] = [None] * len(_STEP_COLUMNS)
    styles[3] = lambda cell, w: console.status(cell, width=w)
    shown = table(console, _STEP_COLUMNS, rows, styles, margin="  ")
    before = shown.kept.index(_NAME)
    indent = " " * (2 + sum(w + 2 for w in shown.widths[:before]))
    lines.append(shown.lines[0])
    for line, step in zip(shown.lines[1:], inst.steps, strict=True):
        lines.append(line)
        for lead, text, style in _step_details(console, step, show_output, truncate, now,
                                               day):
            lines.extend(wrapped(console, indent, lead, text, style))
    if any(r[6] for r in rows):
        lines.extend(wrapped(console, "  ", "", ATTEMPTS_LEGEND, "dim"))
    if shown.cut or shown.dropped:
        lines.extend(wrapped(console, "  ", "", "(fitted to the terminal; --wide or --json "
                                                "for every value in full)", "dim"))
    return lines


def _step_details(console: Console, step: Step, show_output: bool, truncate: int,
                  now: datetime, day: datetime | None) -> list[Detail]:
    g = console.glyphs
    out: list[Detail] = []
    if isinstance(step, StepRun):
        out.extend(_run_details(console, step, now, day))
        if show_output and step.output is not None:
            out.append(("output: ", _output_text(step.output, truncate, g.ellipsis), None))
    elif isinstance(step, WaitForEventStep):
        if step.event_type:
            out.append(("", f"event: {safe(step.event_type)}", "dim"))
        if step.error is not None:
            out.append(("", f"error: {format_error(step.error)}", "red"))
        if show_output and step.output is not None:
            out.append(("output: ", _output_text(step.output, truncate, g.ellipsis), None))
    elif isinstance(step, SleepStep):
        if step.error is not None:
            out.append(("", f"error: {format_error(step.error)}", "red"))
    elif isinstance(step, UnknownStep):
        out.append(("", f"(a step type this cfwf does not know: "
                        f"{one_line(step.fields, truncate)})", "dim"))
    return out


def _config_text(step: StepRun) -> str | None:
    cfg = step.config
    if cfg is None:
        return None
    parts = []
    r = cfg.retries
    if r is not None:
        retry = f"retries {format_number(r.limit) if r.limit is not None else '?'}"
        if r.delay is not None:
            retry += f", delay {describe_duration(r.delay)}"
        if r.backoff:
            retry += f" {r.backoff}"
        parts.append(retry)
    if cfg.timeout is not None:
        parts.append(f"timeout {describe_duration(cfg.timeout)}")
    if cfg.sensitive:
        parts.append(f"sensitive {cfg.sensitive}")
    return safe("config: " + "; ".join(parts)) if parts else None


def _run_details(console: Console, step: StepRun, now: datetime,
                 day: datetime | None) -> list[Detail]:
    """A step.do's attempts (when there is more to say than one success), config, retry."""
    out: list[Detail] = []
    if len(step.attempts) > 1 or any(a.error for a in step.attempts):
        out.extend(_attempt_line(i, a, now, day) for i, a in enumerate(step.attempts, 1))
    config = _config_text(step)
    if config is not None:
        out.append(("", config, "dim"))
    nxt = next_retry(step)
    if nxt is not None and nxt.dynamic:
        out.append(("", "next retry: dynamic (the workflow computes the delay)", "yellow"))
    elif nxt is not None and nxt.at is not None:
        left = (nxt.at - now).total_seconds()
        when = f"in {format_seconds(left)}" if left >= 0 else f"{format_seconds(-left)} ago"
        approx = console.glyphs.approx if nxt.estimate else ""
        out.append(("", f"next retry: {approx}{format_clock(nxt.at, day_of=day)} ({when})",
                    "yellow"))
    return out


def _attempt_line(n: int, a: Attempt, now: datetime, day: datetime | None) -> Detail:
    dur = "-"
    if a.start is not None:
        dur = format_seconds(((a.end or now) - a.start).total_seconds())
    lead = f"attempt {n}  {format_clock(a.start, day_of=day)}  {dur:>7}  "
    if a.success is True:
        return lead, "ok", "green"
    if a.error is not None or a.success is False:
        return lead, f"failed: {format_error(a.error)}", "red"
    return lead, "running", "yellow"


def _output_text(output: Any, truncate: int, ellipsis: str) -> str:
    text = one_line(output, truncate, ellipsis)
    if output == "[REDACTED]":
        text += " (sensitive: redacted by Cloudflare)"
    return text


async def fetch_instance_result(session: WorkflowsSession, workflow: str, instance_id: str,
                                *, order: str) -> bytes:
    """The API's own ``result`` object for an instance, byte for byte.

    ``describe --json`` prints this rather than re-encoding the decoded
    :class:`Instance`, which drops null fields and fields this version does not know.
    """
    return await session.get_instance_json(workflow, instance_id, order=order)


async def _latest(session: WorkflowsSession, workflow: str, console: Console) -> str | None:
    """The id of ``workflow``'s newest instance (the listing, newest first, one row)."""
    listing = session.list_instances(workflow, direction="desc", per_page=1)
    try:
        async with waiting(console, session.base_url, f"GET newest instance of {workflow}"):
            async for summary in listing:
                return summary.id
    finally:
        await listing.aclose()
    return None


async def cmd_describe(session: WorkflowsSession, args: argparse.Namespace,
                       console: Console) -> int:
    """``cfwf describe``: summary, steps and timeline of one instance (or its JSON)."""
    if args.instance == "latest":
        newest = await _latest(session, args.workflow, console)
        if newest is None:
            console.error(f"{args.workflow} has no instances to describe")
            return EXIT_API
        args.instance = newest
    what = f"GET instance {args.instance}"
    if args.json:
        async with waiting(console, session.base_url, what):
            result = await fetch_instance_result(session, args.workflow, args.instance,
                                                 order=args.order)
        console.stdout.write(json_text(result, indent=2) + "\n")
        return EXIT_OK
    async with waiting(console, session.base_url, what):
        inst = await session.get_instance(args.workflow, args.instance, order=args.order)
    for line in render_describe(
        console, args.workflow, args.instance, inst, order=args.order,
        show_output=not args.no_step_output, truncate=args.truncate,
    ):
        console.print(line)
    return EXIT_OK
