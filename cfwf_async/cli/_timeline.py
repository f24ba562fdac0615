"""The timeline ``cfwf describe`` draws: one bar per step on a shared time axis."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from ..models import Instance, Step, StepRun
from ..steplog import format_seconds, step_bounds, step_state
from ._console import Console, Glyphs, safe
from ._format import format_clock
from ._width import cells, cut, pad

__all__ = ["LABEL_WIDTH", "render_timeline"]

LABEL_WIDTH: Final = 24

Cell = tuple[str, str | None]


@dataclass(frozen=True)
class _Axis:
    """The time span the bars share, mapped onto ``width`` columns."""

    t0: datetime
    t1: datetime
    width: int

    @property
    def total(self) -> float:
        return max((self.t1 - self.t0).total_seconds(), 1e-3)

    def col(self, t: datetime) -> int:
        offset = (t - self.t0).total_seconds() / self.total * self.width
        return min(self.width - 1, max(0, int(offset)))

    def fill(self, bar: list[Cell], a: datetime, b: datetime, ch: str,
             style: str | None) -> None:
        start = self.col(a)
        for i in range(start, max(self.col(b), start + 1) if b > a else start + 1):
            if i < self.width:
                bar[i] = (ch, style)


def _axis(inst: Instance, timed: list[tuple[Step, datetime, datetime]], now: datetime,
          width: int | None, columns: int | None) -> _Axis:
    t0 = min([a for _, a, _ in timed] + ([inst.start] if inst.start else []))
    t1 = max([b for _, _, b in timed] + ([inst.end] if inst.end else []))
    if not inst.is_terminal:
        t1 = max(t1, now)
    if width is None:
        if columns is None:
            columns = shutil.get_terminal_size((100, 24)).columns
        # Room for the label, the duration and "  N attempts" after the bar.
        width = max(20, min(64, columns - LABEL_WIDTH - 24))
    return _Axis(t0, t1, width)


def _bar(step: Step, a: datetime, b: datetime, axis: _Axis, g: Glyphs,
         now: datetime) -> tuple[list[Cell], str]:
    """The cells of one step's bar and the note printed after it."""
    bar: list[Cell] = [(" ", None)] * axis.width
    note = format_seconds((b - a).total_seconds())
    if isinstance(step, StepRun) and step.attempts:
        axis.fill(bar, a, b, g.wait, "yellow")
        for att in step.attempts:
            if att.start is None:
                continue
            att_end = att.end or now
            if att.success is True:
                axis.fill(bar, att.start, att_end, g.ok, "green")
            elif att.error is not None or att.success is False:
                axis.fill(bar, att.start, att_end, g.failed, "red")
            else:
                axis.fill(bar, att.start, att_end, g.running, "yellow")
        if len(step.attempts) > 1:
            note += f"  {len(step.attempts)} attempts"
    elif isinstance(step, StepRun):
        ch, style = {"complete": (g.ok, "green"), "errored": (g.failed, "red")}.get(
            step_state(step), (g.running, "yellow"))
        axis.fill(bar, a, b, ch, style)
    else:
        style = "red" if getattr(step, "error", None) is not None else "magenta"
        axis.fill(bar, a, b, g.idle, style)
    return bar, note


def render_timeline(console: Console, inst: Instance, *, now: datetime,
                    width: int | None = None) -> list[str]:
    """One bar per step on a shared time axis from the instance's start to its end.

    Attempts that succeeded, failed or still run, the waits between retries, and sleeps
    or event waits each get their own glyph, so slow steps and retries stand out.
    """
    g = console.glyphs
    p = console.paint
    spans = [(s, *step_bounds(s, now)) for s in inst.steps]
    timed = [(s, a, b) for s, a, b in spans if a is not None and b is not None]
    if not timed:
        return []
    axis = _axis(inst, timed, now, width, console.width)
    lines = [
        p("Timeline", "bold")
        + p(f"  {format_clock(axis.t0)} {g.arrow} {format_clock(axis.t1)}"
            f"  ({format_seconds(axis.total)}; one column = "
            f"{format_seconds(axis.total / axis.width)})", "dim")
    ]
    for step, a, b in sorted(timed, key=lambda x: x[1]):
        bar, note = _bar(step, a, b, axis, g, now)
        painted = "".join(p(ch, style) for ch, style in bar)
        label = cut(safe(step.name), LABEL_WIDTH, g.ellipsis)
        lines.append(f"  {pad(label, LABEL_WIDTH)} {painted}  {p(note, 'dim')}")
    legend = [f"{g.ok} attempt ok", f"{g.failed} attempt failed", f"{g.running} running",
              f"{g.wait} waiting to retry", f"{g.idle} sleep / event wait"]
    lines.extend(p(line, "dim") for line in _pack(legend, console.width))
    return lines


def _pack(items: list[str], width: int | None) -> list[str]:
    """``items`` two spaces apart, as few lines as fit ``width``, each indented by two."""
    lines = [""]
    for item in items:
        candidate = f"{lines[-1]}  {item}"
        if width is not None and lines[-1] and cells(candidate) > width:
            lines.append(f"  {item}")
        else:
            lines[-1] = candidate
    return lines
