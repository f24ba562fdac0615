"""Turning values into the short strings ``cfwf`` prints: durations, sizes, times, tables.

Every helper that takes text from the server returns it escaped (see
:func:`~cfwf_async.cli._console.safe`), so a line built from these pieces is fit for a
terminal even where the console keeps its own colour codes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import msgspec

from ..models import ErrorInfo
from ._console import Console, safe
from ._width import Column, cells, cut, fit_columns, pad, wrap

__all__ = [
    "Table",
    "format_bytes",
    "format_clock",
    "format_error",
    "format_time",
    "json_text",
    "note_narrowed",
    "one_line",
    "table",
    "wrapped",
]


def format_bytes(n: float) -> str:
    """``5.0 MiB`` style sizes."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def format_number(n: float) -> str:
    """A count as the API meant it: ``3`` for ``3`` and ``3.0``, ``2.5`` as sent."""
    if isinstance(n, float) and n.is_integer():
        return str(int(n))
    return str(n)


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


@dataclass(frozen=True)
class Table:
    """A table laid out for the console's width: header line and one line per row.

    ``kept`` are the indexes of the columns shown (others were dropped to fit),
    ``widths`` their widths in cells, ``cut`` whether any cell was shortened and
    ``dropped`` whether any column was left out, so the caller can say how to see all.
    """

    lines: list[str]
    kept: list[int]
    widths: list[int]
    cut: bool
    dropped: bool


def table(console: Console, columns: Sequence[Column], rows: Iterable[Sequence[str]],
          styles: Sequence[Style | None] | None = None, *, margin: str = "") -> Table:
    """A left-aligned table that fits ``console.width``; ``styles[i](cell, width)``
    paints column ``i``. Lines start with ``margin``."""
    body = [[safe(cell) for cell in r] for r in rows]
    natural = [cells(c.header) for c in columns]
    for row in body:
        for i, cell in enumerate(row):
            natural[i] = max(natural[i], cells(cell))
    kept, widths = fit_columns(columns, natural, console.width, margin=len(margin))
    ellipsis = console.glyphs.ellipsis
    head = "  ".join(console.paint(pad(columns[i].header, w), "bold")
                     for i, w in zip(kept, widths, strict=True))
    lines = [(margin + head).rstrip()]
    was_cut = False
    for row in body:
        out = []
        for i, w in zip(kept, widths, strict=True):
            cell = cut(row[i], w, ellipsis)
            was_cut = was_cut or cell != row[i]
            style = styles[i] if styles is not None else None
            out.append(style(cell, w) if style else pad(cell, w))
        lines.append((margin + "  ".join(out)).rstrip())
    return Table(lines, kept, widths, was_cut, len(kept) < len(columns))


_MIN_ROOM: Final = 40


def wrapped(console: Console, indent: str, lead: str, text: str,
            style: str | None = None) -> list[str]:
    """``lead`` then ``text`` (painted in ``style``) from ``indent``, wrapped to the
    console's width with later lines starting under ``text``."""
    hang = indent + " " * (cells(lead) if lead else 2)
    if console.width is not None and console.width - cells(hang) < _MIN_ROOM:
        hang = indent + "    "  # too deep a hang would leave a narrow column of words
    lines = wrap(lead + text, console.width, indent=indent, hang=hang)
    first = lines[0]
    out = [first[: len(indent) + len(lead)] + console.paint(first[len(indent) + len(lead):],
                                                             style)]
    out.extend(hang + console.paint(line[len(hang):], style) for line in lines[1:])
    return out


def note_narrowed(console: Console, shown: Table) -> None:
    """Say on stderr how to see the columns or text a narrow table left out."""
    if shown.cut or shown.dropped:
        console.note(f"(fitted to {console.width} columns; --wide or --json for every "
                     "value in full)")


# DEL and C1 characters are valid unescaped inside JSON strings, and can occur nowhere
# else in a JSON document, so writing them as \u escapes keeps the document's meaning
# while keeping them away from a terminal (C0 characters are always escaped in JSON).
_JSON_UNSAFE: Final = re.compile("[\x7f-\x9f]")


def json_text(document: bytes, *, indent: int = 0) -> str:
    """A JSON document as text for a terminal: optionally indented, DEL and C1 escaped."""
    if indent:
        document = msgspec.json.format(document, indent=indent)
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", document.decode())
