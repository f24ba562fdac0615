"""``cfwf watch``: follow an instance until it ends; exit 0 if it completed."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

import anyio

from ..models import Instance
from ..session import WorkflowsSession
from ..steplog import format_seconds
from ._console import EXIT_API, EXIT_OK, Console, is_tty
from ._format import format_error, format_number

__all__ = ["cmd_watch"]


def _step_count(inst: Instance) -> int | float:
    return inst.step_count if inst.step_count is not None else len(inst.steps)


def _status_line(console: Console, inst: Instance) -> str:
    """``08:00:01  running     6 steps  running for 4m 30s``."""
    p = console.paint
    now = datetime.now(UTC)
    if inst.start is not None:
        span = format_seconds(((inst.end or now) - inst.start).total_seconds())
        timing = f"took {span}" if inst.end else f"running for {span}"
    else:
        timing = "not started"
    steps = _step_count(inst)
    return (f"{p(now.strftime('%H:%M:%S'), 'dim')}  {console.status(inst.status, width=10)}"
            f"  {format_number(steps)} step{'s' if steps != 1 else ''}  {p(timing, 'dim')}")


async def cmd_watch(session: WorkflowsSession, args: argparse.Namespace,
                    console: Console) -> int:
    """``cfwf watch``: poll until the instance ends; 0 when it completed, else 1.

    On a terminal one status line is rewritten in place; elsewhere a line is printed
    each time the status or the step count changes. ``--interval`` is fixed (no
    backoff); ``--timeout`` gives up, exit 1, even in the middle of a poll.
    """
    live = is_tty(console.stdout)
    shown: tuple[str, int | float] | None = None
    last: Instance | None = None
    with anyio.move_on_after(args.timeout):
        polls = session.watch_instance(args.workflow, args.instance, simple=True,
                                       poll_interval=args.interval,
                                       max_poll_interval=args.interval)
        async for inst in polls:
            last = inst
            state = (inst.status, _step_count(inst))
            if live:
                console.rewrite_line(_status_line(console, inst))
            elif state != shown or inst.is_terminal:
                console.print(_status_line(console, inst))
            shown = state
    if live:
        console.write("\n")
    console.stdout.flush()
    if last is None or not last.is_terminal:
        still = f"still {last.status}" if last is not None else "not answered yet"
        console.error(f"timed out after {args.timeout:g} s; the instance is {still}")
        return EXIT_API
    if last.error is not None:
        console.print(console.paint(f"error: {format_error(last.error)}", "red"))
    return EXIT_OK if last.status == "complete" else EXIT_API
