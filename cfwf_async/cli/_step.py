"""``cfwf step``: one step's full output, to the terminal, a file, or a pipe."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import IO, Any, Final

import msgspec

from .._files import check_target, write_atomic
from ..errors import OutputTooLargeError
from ..models import StepOutput
from ..session import WorkflowsSession
from ..streaming import StepStream
from ._console import EXIT_OK, Console, UsageError, is_tty, safe
from ._format import format_bytes, format_error, json_text, wrapped
from ._waiting import waiting

__all__ = ["DISPLAY_CAP", "PlainProgress", "binary_speed_column", "cmd_step"]

#: Largest streamed output ``cfwf step`` prints without ``--output``.
DISPLAY_CAP: Final = 1 << 20


class PlainProgress:
    """A one-line progress display on a terminal, for when rich is not installed."""

    def __init__(self, stream: IO[str], label: str) -> None:
        self._stream = stream
        self._label = safe(label)
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
    if not is_tty(console.stderr):
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
        )
    except ImportError:
        plain = PlainProgress(console.stderr, label)
        try:
            return await stream.save(path, progress=plain)
        finally:
            plain.finish()
    rich_console = RichConsole(file=console.stderr, no_color=not console.err_colour)
    with Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        TaskProgressColumn(),
        DownloadColumn(binary_units=True),
        binary_speed_column(),
        TimeRemainingColumn(),
        console=rich_console,
    ) as progress:
        task = progress.add_task(safe(label), total=stream.content_length)

        def update(done: int, total: int | None) -> None:
            progress.update(task, completed=done)

        return await stream.save(path, progress=update)


def binary_speed_column() -> Any:
    """A rich column with the transfer speed in binary units, like the sizes beside it.

    (rich's own speed column counts in powers of 1000 while its download column is set
    to powers of 1024: ``4.0/4.0 MiB 919.1 MB/s`` mixes the two.)
    """
    from rich.progress import ProgressColumn
    from rich.text import Text

    class BinarySpeedColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            shown = "?" if speed is None else f"{format_bytes(speed)}/s"
            return Text(shown, style="progress.data.speed")

    return BinarySpeedColumn()


def _as_text(data: bytes) -> str | None:
    """The text of ``data`` if it is UTF-8 without NUL bytes; None for binary data."""
    if b"\x00" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _check_output_target(args: argparse.Namespace) -> None:
    """Refuse an ``--output`` that can never be written, before the first request."""
    if args.output is None or args.output == "-":
        return
    try:
        check_target("--output", args.output)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


async def cmd_step(session: WorkflowsSession, args: argparse.Namespace,
                   console: Console) -> int:
    """``cfwf step``: one step's full output, streamed to ``--output`` when large."""
    _check_output_target(args)
    async with waiting(console, session.base_url, f"GET step {args.step}"):
        result = await session.get_step_output(
            args.workflow, args.instance, name=args.step, type=args.type, attempt=args.attempt
        )
    if isinstance(result, StepStream):
        async with result:
            return await _emit_stream(result, args, console)
    return _emit_json_output(result, args, console)


def _write_stdout_bytes(console: Console, data: bytes) -> None:
    """Raw bytes to stdout, after whatever text went there first."""
    console.stdout.flush()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def _emit_json_output(result: StepOutput, args: argparse.Namespace, console: Console) -> int:
    if args.output is not None:
        value = result.output
        data = (value.encode() if isinstance(value, str)
                else msgspec.json.format(msgspec.json.encode(value), indent=2) + b"\n")
        if args.output == "-":
            _write_stdout_bytes(console, data)
            return EXIT_OK
        write_atomic(args.output, data)
        _report_saved(console, args, args.output, len(data), "application/json", result.status)
        return EXIT_OK
    if args.json:
        console.stdout.write(json_text(msgspec.json.encode(result), indent=2) + "\n")
        return EXIT_OK
    _print_step_output(console, result)
    return EXIT_OK


def _print_step_output(console: Console, result: StepOutput) -> None:
    p = console.paint
    console.print(f"{p('status'.ljust(8), 'dim')}{console.status(result.status)}")
    if result.error is not None:
        # A running step with an error is retrying after a failed attempt.
        retrying = " (retrying)" if result.status == "running" else ""
        console.print(f"{p('error'.ljust(8), 'dim')}{p(format_error(result.error), 'red')}"
                      f"{retrying}")
    if result.event_type:
        console.print(f"{p('event'.ljust(8), 'dim')}{safe(result.event_type)}")
    console.print(p("output", "dim"))
    value = result.output
    if value is None:
        console.print("-")
    elif isinstance(value, str):
        console.print(safe(value))
        if value == "[REDACTED]":
            console.note("(the step's output is marked sensitive: Cloudflare redacts it)")
    else:
        console.print(json_text(msgspec.json.encode(value), indent=2))


async def _emit_stream(stream: StepStream, args: argparse.Namespace, console: Console) -> int:
    if args.output == "-":
        if is_tty(console.stdout):
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
    text = await _read_displayable(stream)
    if args.json:
        body = {"stream": True, "content_type": stream.content_type,
                "bytes": len(text.encode()), "output": text}
        console.stdout.write(json_text(msgspec.json.encode(body), indent=2) + "\n")
    else:
        console.write(safe(text if text.endswith("\n") else text + "\n"))
    return EXIT_OK


async def _read_displayable(stream: StepStream) -> str:
    """A streamed output small enough, and textual enough, to print; else a usage error."""
    size = stream.content_length
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
    text = _as_text(data)
    if text is None:
        raise UsageError(
            f"the output is {format_bytes(len(data))} of binary data "
            f"({safe(stream.content_type)}); {hint}"
        )
    return text


def _report_saved(console: Console, args: argparse.Namespace, path: str, n: int,
                  content_type: str, status: str | None) -> None:
    if args.json:
        body: dict[str, Any] = {"path": os.path.abspath(path), "bytes": n,
                                "content_type": content_type}
        if status is not None:
            body["status"] = status
        console.stdout.write(json_text(msgspec.json.encode(body)) + "\n")
    else:
        for line in wrapped(console, "", "", f"saved {n:,} bytes ({safe(content_type)}) to "
                                             f"{safe(path)}"):
            console.print(line)
