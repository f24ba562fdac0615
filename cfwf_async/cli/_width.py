"""How wide text is on a terminal, and making it fit: display cells, cutting, wrapping.

A terminal gives East Asian wide and fullwidth characters two cells and combining marks
none, so widths are counted in cells, not characters. Colour codes take no cells either;
callers measure text before painting it.
"""

from __future__ import annotations

import os
import shutil
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import IO, Final

__all__ = ["Column", "cells", "cut", "fit_columns", "pad", "terminal_width", "wrap"]


#: Narrower than this, nothing can be laid out sensibly; lines may then overflow.
MIN_WIDTH: Final = 40


@lru_cache(maxsize=4096)
def _char_cells(char: str) -> int:
    if unicodedata.combining(char) or unicodedata.category(char) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def cells(text: str) -> int:
    """How many terminal cells ``text`` takes (no control characters expected)."""
    if text.isascii():
        return len(text)
    return sum(_char_cells(c) for c in text)


def pad(text: str, width: int) -> str:
    """``text`` padded with spaces on the right to ``width`` cells."""
    return text + " " * max(width - cells(text), 0)


def terminal_width(stdout: IO[str], *, wide: bool = False) -> int | None:
    """The cells a line may take on ``stdout``; None for no limit.

    ``--wide`` lifts the limit; ``COLUMNS`` sets it explicitly (even for a pipe); a
    terminal gives its own width; anything else (a pipe, a file) gets no limit, so
    scripts see whole values.
    """
    if wide:
        return None
    env = os.environ.get("COLUMNS", "")
    if env.isdigit() and int(env) > 0:
        return max(int(env), MIN_WIDTH)
    isatty = getattr(stdout, "isatty", None)
    if isatty and isatty():
        return max(shutil.get_terminal_size().columns, MIN_WIDTH)
    return None


def cut(text: str, width: int, ellipsis: str = "…") -> str:
    """``text`` in at most ``width`` cells, ending in ``ellipsis`` when it was cut."""
    if cells(text) <= width:
        return text
    room = width - cells(ellipsis)
    if room <= 0:
        return ellipsis[: max(width, 0)]
    out: list[str] = []
    used = 0
    for char in text:
        w = _char_cells(char)
        if used + w > room:
            break
        out.append(char)
        used += w
    return "".join(out) + ellipsis


def _split_long(word: str, width: int) -> list[str]:
    """A word wider than ``width`` in pieces that each fit."""
    pieces: list[str] = []
    current = ""
    for char in word:
        if current and cells(current) + _char_cells(char) > width:
            pieces.append(current)
            current = ""
        current += char
    return [*pieces, current] if current else pieces


def wrap(text: str, width: int | None, *, indent: str = "", hang: str = "") -> list[str]:
    """``text`` in lines of at most ``width`` cells, broken between words.

    The first line starts with ``indent``, later lines with ``hang``; a word longer than
    a whole line is broken where it must be. ``width=None`` means no limit.
    """
    if width is None or cells(indent) + cells(text) <= width:
        return [indent + text]
    lines: list[str] = []
    line, prefix = "", indent
    room = max(width - cells(prefix), 1)
    for word in text.split(" "):
        candidate = f"{line} {word}" if line else word
        if cells(candidate) <= room:
            line = candidate
            continue
        if line:
            lines.append(prefix + line)
            prefix, room = hang, max(width - cells(hang), 1)
        pieces = _split_long(word, room) if cells(word) > room else [word]
        for piece in pieces[:-1]:
            lines.append(prefix + piece)
            prefix, room = hang, max(width - cells(hang), 1)
        line = pieces[-1] if pieces else ""
    lines.append(prefix + line)
    return [ln.rstrip() for ln in lines]


@dataclass(frozen=True)
class Column:
    """A table column: its header, when it may be dropped, and whether it may be cut.

    Columns with a ``drop`` rank are left out, lowest rank first, while the table is too
    wide; then ``cut`` columns are shortened with an ellipsis, down to ``min_width``.
    """

    header: str
    drop: int | None = None
    cut: bool = False
    min_width: int = 8


def fit_columns(columns: Sequence[Column], widths: Sequence[int], width: int | None,
                *, gap: int = 2, margin: int = 0) -> tuple[list[int], list[int]]:
    """Which columns to show and how wide, so a row fits ``width`` cells.

    ``widths`` are the natural widths (header included) and ``margin`` the cells before
    the first column. Returns the indexes of the kept columns and their widths.
    """
    kept = list(range(len(columns)))
    sizes = list(widths)

    def total() -> int:
        return margin + sum(sizes[i] for i in kept) + gap * max(len(kept) - 1, 0)

    if width is None:
        return kept, [sizes[i] for i in kept]
    droppable = sorted((c.drop, i) for i, c in enumerate(columns) if c.drop is not None)
    for _, i in droppable:
        if total() <= width:
            break
        kept.remove(i)
    for i in kept:
        excess = total() - width
        if excess <= 0:
            break
        if columns[i].cut:
            floor = max(columns[i].min_width, cells(columns[i].header))
            sizes[i] = max(floor, sizes[i] - excess)
    return kept, [sizes[i] for i in kept]
