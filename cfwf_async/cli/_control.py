"""The write commands: ``trigger``, ``pause``, ``resume``, ``terminate``, ``restart``,
``send-event`` and ``delete``.

Each prints one plain line saying what happened (``--json``: the affected objects as
JSON). Arguments are checked, and destructive commands confirmed, before any request.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import anyio
import msgspec

from ..models import StatusChange
from ..session import WorkflowsSession
from ._console import EXIT_API, EXIT_OK, Console, UsageError, is_tty
from ._format import json_text

__all__ = [
    "cmd_delete",
    "cmd_pause",
    "cmd_restart",
    "cmd_resume",
    "cmd_send_event",
    "cmd_terminate",
    "cmd_trigger",
    "confirm",
    "json_argument",
    "json_file_argument",
    "read_ids",
]


class _Missing:
    """No JSON given (as opposed to a JSON ``null``)."""


MISSING = _Missing()


def json_argument(text: str) -> Any:
    """An argparse type: ``text`` decoded as JSON, or a usage error (exit 2)."""
    try:
        return msgspec.json.decode(text.encode())
    except msgspec.DecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None


def json_file_argument(path: str) -> Any:
    """An argparse type: the JSON in file ``path`` (``-``: stdin), or a usage error."""
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        raise argparse.ArgumentTypeError(f"{path} is not valid JSON: {exc}") from None


def read_ids(args_ids: Iterable[str], file: str | None, stdin: IO[str] | None = None) -> list[str]:
    """Instance ids from the arguments and ``file`` (one per line, ``-``: stdin),
    in order, without repeats; blank lines and ``#`` comments are skipped."""
    ids = list(args_ids)
    if file is not None:
        try:
            text = (stdin or sys.stdin).read() if file == "-" else Path(file).read_text()
        except OSError as exc:
            raise UsageError(f"cannot read --file {file}: {exc.strerror or exc}") from None
        ids += [line.strip() for line in text.splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    if not ids:
        raise UsageError("no instance ids: give them as arguments or with --file")
    return list(dict.fromkeys(ids))


def confirm(console: Console, question: str, *, yes: bool,
            stdin: IO[str] | None = None) -> None:
    """Go on only with ``--yes`` or a "y" typed at a terminal; else raise UsageError.

    Without a terminal to ask at (a script, a pipe) the command refuses rather than
    guessing: destroying things needs ``--yes`` there.
    """
    if yes:
        return
    stream = stdin or sys.stdin
    if not is_tty(stream):
        raise UsageError(f"not confirmed: {question} (stdin is not a terminal; pass --yes "
                         "to go ahead without asking)")
    console.stderr.write(console.paint(f"{question} [y/N] ", "bold", err=True))
    console.stderr.flush()
    answer = stream.readline().strip().lower()
    if answer not in ("y", "yes"):
        raise UsageError("cancelled: nothing was changed")


def _emit(console: Console, args: argparse.Namespace, line: str, document: Any) -> None:
    if getattr(args, "json", False):
        console.print(json_text(msgspec.json.encode(document)))
    else:
        console.print(line)


def _changed(workflow: str, instance: str, change: StatusChange) -> dict[str, Any]:
    document: dict[str, Any] = {"workflow": workflow, "id": instance}
    document.update(msgspec.to_builtins(change))
    return document


async def cmd_trigger(session: WorkflowsSession, args: argparse.Namespace,
                      console: Console) -> int:
    """``cfwf trigger``: start one instance."""
    params = None if args.params is MISSING else args.params
    created = await session.create_instance(args.workflow, instance_id=args.id, params=params)
    document = {"workflow": args.workflow, **msgspec.to_builtins(created)}
    _emit(console, args, f"triggered {args.workflow} / {created.id} ({created.status})",
          document)
    return EXIT_OK


async def _status_command(session: WorkflowsSession, args: argparse.Namespace,
                          console: Console, verb: str, **kwargs: Any) -> int:
    calls = {"pause": session.pause_instance, "resume": session.resume_instance,
             "terminate": session.terminate_instance, "restart": session.restart_instance}
    change = await calls[verb](args.workflow, args.instance, **kwargs)
    done = {"pause": "paused", "resume": "resumed", "terminate": "terminated",
            "restart": "restarted"}[verb]
    _emit(console, args, f"{done} {args.workflow} / {args.instance} (now {change.status})",
          _changed(args.workflow, args.instance, change))
    return EXIT_OK


async def cmd_pause(session: WorkflowsSession, args: argparse.Namespace,
                    console: Console) -> int:
    """``cfwf pause``."""
    return await _status_command(session, args, console, "pause")


async def cmd_resume(session: WorkflowsSession, args: argparse.Namespace,
                     console: Console) -> int:
    """``cfwf resume``."""
    return await _status_command(session, args, console, "resume")


async def cmd_terminate(session: WorkflowsSession, args: argparse.Namespace,
                        console: Console) -> int:
    """``cfwf terminate``: asks first on a terminal, needs ``--yes`` elsewhere."""
    how = " (rolling back)" if args.rollback else ""
    confirm(console, f"terminate {args.workflow} / {args.instance}{how}?", yes=args.yes)
    return await _status_command(session, args, console, "terminate", rollback=args.rollback)


async def cmd_restart(session: WorkflowsSession, args: argparse.Namespace,
                      console: Console) -> int:
    """``cfwf restart``: from the start, or from one step."""
    if args.from_step is None and (args.from_step_count is not None
                                   or args.from_step_type is not None):
        raise UsageError("--from-step-count and --from-step-type need --from-step NAME")
    return await _status_command(session, args, console, "restart", from_step=args.from_step,
                                 count=args.from_step_count, type=args.from_step_type)


async def cmd_send_event(session: WorkflowsSession, args: argparse.Namespace,
                         console: Console) -> int:
    """``cfwf send-event``: deliver one event to an instance."""
    payload = None if args.payload is MISSING else args.payload
    await session.send_event(args.workflow, args.instance, args.type, payload)
    _emit(console, args, f"sent event {args.type!r} to {args.workflow} / {args.instance}",
          {"workflow": args.workflow, "id": args.instance, "type": args.type,
           "payload": payload})
    return EXIT_OK


async def cmd_delete(session: WorkflowsSession, args: argparse.Namespace,
                     console: Console) -> int:
    """``cfwf delete``: one instance, or many (100 per request); exit 1 if any failed."""
    ids = await anyio.to_thread.run_sync(read_ids, args.ids, args.file)
    what = f"{ids[0]}" if len(ids) == 1 else f"{len(ids)} instances"
    confirm(console, f"delete {args.workflow} / {what}?", yes=args.yes)
    if len(ids) == 1:
        await session.delete_instance(args.workflow, ids[0])
        _emit(console, args, f"deleted {args.workflow} / {ids[0]}",
              {"workflow": args.workflow, "done": ids, "errors": []})
        return EXIT_OK
    result = await session.delete_instances(args.workflow, ids)
    line = f"deleted {len(result.done)} of {len(ids)} instances of {args.workflow}"
    if result.errors:
        line += f"; {len(result.errors)} failed"
    _emit(console, args, line, {"workflow": args.workflow, **msgspec.to_builtins(result)})
    for error in result.errors:
        console.note(f"not deleted: {error.id or '?'}: {error.message or error.code}")
    return EXIT_API if result.errors else EXIT_OK
