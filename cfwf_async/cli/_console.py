"""Where ``cfwf`` writes: colour and glyph decisions, and the one gate server text passes.

Everything a command prints goes through :class:`Console`. Its write path escapes
terminal control characters (C0 but newline and tab, DEL, C1), so text from the server
(a step name, an error message, an output) can never move the cursor, rewrite the
clipboard (OSC 52) or recolour the screen. The only escape sequences that reach a
terminal are the console's own colour codes, and only when colour is on.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from typing import IO, Final

from ._width import pad

__all__ = [
    "EXIT_API",
    "EXIT_OK",
    "EXIT_USAGE",
    "Console",
    "Glyphs",
    "UsageError",
    "colour_wanted",
    "is_tty",
    "safe",
]

EXIT_OK: Final = 0
EXIT_API: Final = 1
EXIT_USAGE: Final = 2


class UsageError(Exception):
    """A command that cannot run as given; reported on one line, exit status 2."""


# ---------------------------------------------------------------------------
# Control characters

# C0 except tab and newline, DEL, and C1 (U+0080-U+009F: U+009B alone starts a CSI
# sequence on terminals that honour 8-bit controls).
_CONTROL: Final = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# The colour codes Console.paint writes, and nothing else.
_SGR: Final = re.compile(r"\x1b\[[0-9;]*m")
_NAMED: Final = {"\r": "\\r"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}"


def safe(text: str) -> str:
    """``text`` with every control character but newline and tab shown escaped.

    ``"\\x1b]52;c;..."`` becomes the visible ``\\x1b]52;c;...``; escaping twice
    changes nothing, so callers may apply it to text that may already be safe.
    """
    return _CONTROL.sub(_escape, text)


def _gate(text: str, keep_colour: bool) -> str:
    """``text`` fit for a terminal: only the console's own colour codes survive."""
    if not keep_colour:
        return safe(text)
    pieces: list[str] = []
    last = 0
    for m in _SGR.finditer(text):
        pieces.append(safe(text[last:m.start()]))
        pieces.append(m.group())
        last = m.end()
    pieces.append(safe(text[last:]))
    return "".join(pieces)


# ---------------------------------------------------------------------------
# Colour and glyphs


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


def is_tty(stream: IO[str]) -> bool:
    """Whether ``stream`` is a terminal (False for anything without ``isatty``)."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def colour_wanted(stream: IO[str]) -> bool:
    """Colour only on a terminal, never with ``NO_COLOR`` set, never for ``TERM=dumb``."""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("TERM") == "dumb":
        return False
    return is_tty(stream)


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
    #: The cells a stdout line may take (None: no limit); see ``terminal_width``.
    width: int | None = None
    #: Seconds a call may take before a terminal is told what it waits for.
    wait_delay: float = 1.0

    @classmethod
    def for_streams(cls, stdout: IO[str], stderr: IO[str], *,
                    width: int | None = None) -> Console:
        """A console for these streams, colour per their terminal-ness and ``NO_COLOR``."""
        return cls(
            stdout,
            stderr,
            colour=colour_wanted(stdout),
            err_colour=colour_wanted(stderr),
            glyphs=Glyphs.for_stream(stdout),
            width=width,
        )

    def paint(self, text: str, style: str | None, *, err: bool = False) -> str:
        """``text`` (escaped) in ``style`` (names, space-separated) when colour is on."""
        text = safe(text)
        if not text or not style or not (self.err_colour if err else self.colour):
            return text
        codes = ";".join(_ANSI[s] for s in style.split() if s in _ANSI)
        return f"\x1b[{codes}m{text}\x1b[0m" if codes else text

    def status(self, status: str, *, width: int = 0, err: bool = False) -> str:
        """A status word, padded to ``width``, in its colour."""
        return self.paint(pad(status, width), _STATUS_STYLE.get(status), err=err)

    def write(self, text: str) -> None:
        """``text`` to stdout as is, but for control characters (shown escaped)."""
        self.stdout.write(_gate(text, self.colour))

    def print(self, text: str = "") -> None:
        """One line to stdout."""
        self.write(text + "\n")

    def rewrite_line(self, text: str) -> None:
        """Replace the terminal's current line with ``text`` (for a live status line)."""
        self.stdout.write("\r\x1b[2K" + _gate(text, self.colour))
        self.stdout.flush()

    def error(self, message: str) -> None:
        """One line to stderr, newlines folded so an error is always a single line."""
        one_line = safe(" ".join(message.split()))
        self.stderr.write(
            _gate(f"cfwf: {self.paint('error:', 'bold red', err=True)} {one_line}\n",
                  self.err_colour)
        )
        self.stderr.flush()

    def hint(self, message: str) -> None:
        """What to try next, on the line after an error."""
        self.stderr.write(_gate(f"{self.paint('hint:', 'bold', err=True)} {safe(message)}\n",
                                self.err_colour))
        self.stderr.flush()

    def note(self, message: str) -> None:
        """An informational line on stderr."""
        self.stderr.write(_gate(self.paint(message, "dim", err=True) + "\n", self.err_colour))
