"""``cfwf list``: a workflow's instances, as a table or JSON lines."""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Final

import msgspec

from ..models import TERMINAL_STATUSES, InstanceSummary
from ..session import WorkflowsSession
from ..steplog import format_seconds
from ._console import EXIT_OK, Console
from ._format import Style, format_time, json_text, note_narrowed, table
from ._waiting import waiting
from ._width import Column

__all__ = ["cmd_list", "parse_timestamp"]

# On a narrow terminal VERSION and MODIFIED go first (rarely what one scans a list
# for), then STARTED (CREATED and DURATION say nearly as much), ENDED, DURATION and
# CREATED; the id is cut last, since it is what one copies.
_COLUMNS: Final = (
    Column("ID", cut=True, min_width=12),
    Column("STATUS"),
    Column("CREATED", drop=6),
    Column("STARTED", drop=3),
    Column("ENDED", drop=4),
    Column("DURATION", drop=5),
    Column("MODIFIED", drop=2),
    Column("VERSION", drop=1),
)


def parse_timestamp(text: str) -> datetime:
    """An ISO 8601 date or date-time (``--since``, ``--until``); no zone means UTC."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an ISO 8601 date or date-time: {text!r} (e.g. 2026-10-26 or "
            "2026-10-26T08:00:00Z)"
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _query(args: argparse.Namespace) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if args.status is not None:
        kwargs["status"] = args.status
    if args.since is not None:
        kwargs["date_start"] = args.since
    if args.until is not None:
        kwargs["date_end"] = args.until
    if args.reverse:
        kwargs["direction"] = "desc"
    if args.limit is not None:
        # Ask for no more than we will show, so --limit 5 is one small request.
        kwargs["per_page"] = min(args.limit, 100)
    return kwargs


def _row(summary: InstanceSummary, now: datetime) -> list[str]:
    if summary.started_on is not None:
        end = summary.ended_on or now
        dur = format_seconds((end - summary.started_on).total_seconds())
        if summary.ended_on is None and summary.status not in TERMINAL_STATUSES:
            dur += " so far"
    else:
        dur = "-"
    return [summary.id, summary.status,
            format_time(summary.created_on, millis=False),
            format_time(summary.started_on, millis=False),
            format_time(summary.ended_on, millis=False), dur,
            format_time(summary.modified_on, millis=False), summary.version_id or "-"]


async def _stream_rows(listing: AsyncIterator[InstanceSummary], limit: int | None,
                       take: Callable[[InstanceSummary], object]) -> None:
    """Hand each summary to ``take``, up to ``limit``, then close the listing."""
    count = 0
    try:
        async for summary in listing:
            count += 1
            take(summary)
            if limit is not None and count >= limit:
                break
    finally:
        aclose: Callable[[], Awaitable[None]] | None = getattr(listing, "aclose", None)
        if aclose is not None:
            await aclose()


async def cmd_list(session: WorkflowsSession, args: argparse.Namespace,
                   console: Console) -> int:
    """``cfwf list``: a workflow's instances as a table or JSON lines."""
    listing = session.list_instances(args.workflow, **_query(args))
    now = datetime.now(UTC)
    if args.json:
        await _stream_rows(listing, args.limit, lambda s: console.stdout.write(
            json_text(msgspec.json.encode(s)) + "\n"))
        return EXIT_OK
    rows: list[list[str]] = []
    # The table is printed once complete, so the whole listing may show a status line.
    async with waiting(console, session.base_url, f"GET instances of {args.workflow}"):
        await _stream_rows(listing, args.limit, lambda s: rows.append(_row(s, now)))
    if not rows:
        console.note("no instances")
        return EXIT_OK
    styles: list[Style | None] = [None] * len(_COLUMNS)
    styles[1] = lambda cell, w: console.status(cell, width=w)
    shown = table(console, _COLUMNS, rows, styles)
    for line in shown.lines:
        console.print(line)
    note_narrowed(console, shown)
    return EXIT_OK
