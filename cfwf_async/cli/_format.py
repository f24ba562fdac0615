"""Turning values into the short strings ``cfwf`` prints: durations, sizes, times, tables.

Every helper that takes text from the server returns it escaped (see
:func:`~cfwf_async.cli._console.safe`), so a line built from these pieces is fit for a
terminal even where the console keeps its own colour codes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import msgspec

from ..models import ErrorInfo
from ._console import Console, safe

__all__ = [
    "format_bytes",
    "format_clock",
    "format_error",
    "format_time",
    "json_text",
    "one_line",
    "table",
]


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
    text = safe(text.replace("\r", "\\r").replace("\n", "\\n").replace("\t", "\\t"))
    if limit and len(text) > limit:
        rest = len(text) - limit
        return f"{text[:limit]}{ellipsis} (+{rest} chars)"
    return text


def format_error(error: ErrorInfo | None) -> str:
    """``Name: message`` of a runtime error."""
    if error is None:
        return "-"
    if error.name and error.message:
        return safe(f"{error.name}: {error.message}")
    return safe(error.name or error.message or "(no message)")


Style = Callable[[str, int], str]


def table(console: Console, headers: Sequence[str], rows: Iterable[Sequence[str]],
          styles: Sequence[Style | None] | None = None) -> list[str]:
    """Lines of a left-aligned table; ``styles[i](cell, width)`` paints column ``i``."""
    body = [[safe(cell) for cell in r] for r in rows]
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


# DEL and C1 characters are valid unescaped inside JSON strings, and can occur nowhere
# else in a JSON document, so writing them as \u escapes keeps the document's meaning
# while keeping them away from a terminal (C0 characters are always escaped in JSON).
_JSON_UNSAFE: Final = re.compile("[\x7f-\x9f]")


def json_text(document: bytes, *, indent: int = 0) -> str:
    """A JSON document as text for a terminal: optionally indented, DEL and C1 escaped."""
    if indent:
        document = msgspec.json.format(document, indent=indent)
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", document.decode())
