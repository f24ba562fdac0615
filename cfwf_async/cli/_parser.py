"""The ``cfwf`` argument parser: each command's options and the handler that runs it.

A parsed command carries ``handler`` (a coroutine function taking a session, the
arguments and the console) or, for a command that needs no session, ``standalone``
(taking only the console). ``main`` calls whichever is set; it knows no command.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

from .._version import __version__
from ..models import INSTANCE_STATUSES
from ..session import WorkflowsSession
from ._console import EXIT_USAGE, Console
from ._control import (
    MISSING,
    cmd_delete,
    cmd_pause,
    cmd_restart,
    cmd_resume,
    cmd_send_event,
    cmd_terminate,
    cmd_trigger,
    json_argument,
    json_file_argument,
)
from ._describe import cmd_describe
from ._list import cmd_list, parse_timestamp
from ._step import cmd_step
from ._watch import cmd_watch
from ._workflows import cmd_workflows_delete, cmd_workflows_describe, cmd_workflows_list

__all__ = ["Handler", "Standalone", "build_parser"]

Handler = Callable[[WorkflowsSession, argparse.Namespace, Console], Awaitable[int]]
Standalone = Callable[[Console], Awaitable[int]]

Subparsers = Any  # argparse's _SubParsersAction is private


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit status 2), like the rest."""

    def error(self, message: str) -> NoReturn:
        one_line = " ".join(message.split())
        self.exit(EXIT_USAGE, f"cfwf: error: {one_line} (see `{self.prog} --help`)\n")


def _connection(parser: argparse.ArgumentParser, default: Any, *, timeout: bool = True) -> None:
    # Global options are accepted before or after the command name; the sub-parsers'
    # copies default to SUPPRESS so they never overwrite the main one's.
    group = parser.add_argument_group("connection and output")
    group.add_argument("--account-id", default=default, metavar="ID",
                       help="Cloudflare account id (default: $CLOUDFLARE_ACCOUNT_ID)")
    group.add_argument("--base-url", default=default, metavar="URL",
                       help="API base URL (default: $CLOUDFLARE_BASE_URL or "
                            "https://api.cloudflare.com/client/v4)")
    group.add_argument("--allow-insecure-http", action="store_true",
                       default=False if default is None else default,
                       help="accept a plain http:// base URL to a remote host (sends "
                            "the token unencrypted)")
    if timeout:
        group.add_argument("--timeout", type=_positive_float, default=default, metavar="S",
                           help="seconds to wait for each API answer (default 60)")
    group.add_argument("--retries", type=_non_negative_int, default=default, metavar="N",
                       help="retries after a timeout, connection error, 429 or 5xx "
                            "(default 2)")
    group.add_argument("--wide", action="store_true",
                       default=False if default is None else default,
                       help="never shorten or drop columns to fit the terminal")


def _command(sub: Subparsers, name: str, help_text: str,
             handler: Handler, *, timeout: bool = True) -> argparse.ArgumentParser:
    """An API command: global options, WORKFLOW, and (by default) INSTANCE."""
    cmd: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text)
    _connection(cmd, argparse.SUPPRESS, timeout=timeout)
    cmd.add_argument("workflow", metavar="WORKFLOW")
    cmd.set_defaults(handler=handler, standalone=None, timeout_is_deadline=not timeout)
    return cmd


def _add_describe(sub: Subparsers) -> None:
    d = _command(sub, "describe", "an instance's summary, every step, and a timeline "
                 "(no INSTANCE, or 'latest': the newest one)", cmd_describe)
    d.add_argument("instance", metavar="INSTANCE", nargs="?", default="latest")
    d.add_argument("--json", action="store_true",
                   help="print the instance as the API sent it, as JSON")
    d.add_argument("--order", choices=("asc", "desc"), default="asc",
                   help="step order: oldest first (asc, default) or newest first")
    d.add_argument("--no-step-output", action="store_true", help="leave step outputs out")
    d.add_argument("--truncate", type=_non_negative_int, default=200, metavar="N",
                   help="cut outputs to N characters (default 200; 0: no limit)")


def _add_step(sub: Subparsers) -> None:
    s = _command(sub, "step", "one step's full output; streamed outputs go to a file",
                 cmd_step)
    s.add_argument("instance", metavar="INSTANCE")
    s.add_argument("--step", required=True, metavar="NAME",
                   help='exact step name from the instance log, e.g. "fetch page-1"')
    s.add_argument("--type", choices=("step", "waitForEvent"), default="step",
                   help="step.do (step, default) or waitForEvent")
    s.add_argument("--attempt", type=_positive_int, metavar="N", help="one attempt (1-based)")
    s.add_argument("--output", metavar="FILE",
                   help="write the output to FILE chunk by chunk ('-': raw to stdout)")
    s.add_argument("--json", action="store_true", help="print JSON")


def _add_watch(sub: Subparsers) -> None:
    # Here --timeout bounds the whole watch (and so every request in it).
    w = _command(sub, "watch", "follow an instance until it ends; exit 0 if it completed",
                 cmd_watch, timeout=False)
    w.add_argument("instance", metavar="INSTANCE")
    w.add_argument("--interval", type=_positive_float, default=2.0, metavar="S",
                   help="seconds between polls (default 2)")
    w.add_argument("--timeout", type=_positive_float, default=argparse.SUPPRESS,
                   metavar="S", help="give up (exit 1) after S seconds")


def _add_list(sub: Subparsers) -> None:
    ls = _command(sub, "list", "a workflow's instances, as a table or JSON lines", cmd_list)
    ls.add_argument("--status", choices=sorted(INSTANCE_STATUSES), metavar="STATUS",
                    help="only this status: " + ", ".join(sorted(INSTANCE_STATUSES)))
    ls.add_argument("--since", type=parse_timestamp, metavar="ISO",
                    help="created at or after this date-time (no zone: UTC)")
    ls.add_argument("--until", type=parse_timestamp, metavar="ISO",
                    help="created at or before this date-time (no zone: UTC)")
    ls.add_argument("--limit", type=_positive_int, metavar="N",
                    help="stop after N instances (fetches no further pages)")
    ls.add_argument("--reverse", action="store_true", help="newest first")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")


def _json_flag(cmd: argparse.ArgumentParser, what: str) -> None:
    cmd.add_argument("--json", action="store_true", help=f"print {what} as JSON")


def _yes_flag(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("-y", "--yes", action="store_true",
                     help="do not ask for confirmation (needed when stdin is not a terminal)")


def _add_writes(sub: Subparsers) -> None:
    t = _command(sub, "trigger", "start an instance of a workflow", cmd_trigger)
    t.add_argument("params", metavar="PARAMS_JSON", nargs="?", type=json_argument,
                   default=MISSING, help="the instance's params, as JSON")
    t.add_argument("--id", metavar="ID", help="the instance id (default: a new UUID)")
    _json_flag(t, "the created instance")
    for name, handler, text in (("pause", cmd_pause, "pause a running instance"),
                                ("resume", cmd_resume, "resume a paused instance"),
                                ("terminate", cmd_terminate, "terminate an instance"),
                                ("restart", cmd_restart, "restart an instance")):
        c = _command(sub, name, text, handler)
        c.add_argument("instance", metavar="INSTANCE")
        _json_flag(c, "the new status")
        if name == "terminate":
            c.add_argument("--rollback", action="store_true",
                           help="run the instance's rollback steps first")
            _yes_flag(c)
        if name == "restart":
            c.add_argument("--from-step", metavar="NAME",
                           help="restart from this step instead of the start")
            c.add_argument("--from-step-count", type=_positive_int, metavar="N",
                           help="the step's Nth run (when it ran more than once)")
            c.add_argument("--from-step-type", choices=("do", "sleep", "waitForEvent"),
                           help="the step's type")
    e = _command(sub, "send-event", "send an event to an instance's waitForEvent step",
                 cmd_send_event)
    e.add_argument("instance", metavar="INSTANCE")
    e.add_argument("--type", required=True, metavar="T", help="the event type")
    payload = e.add_mutually_exclusive_group()
    payload.add_argument("--payload", type=json_argument, default=MISSING, metavar="JSON",
                         help="the event's payload, as JSON")
    payload.add_argument("--payload-file", dest="payload", type=json_file_argument,
                         metavar="FILE", help="the payload from a JSON file ('-': stdin)")
    _json_flag(e, "the event sent")
    d = _command(sub, "delete", "delete instances (100 per request)", cmd_delete)
    d.add_argument("ids", metavar="ID", nargs="*", help="instance ids")
    d.add_argument("--file", metavar="FILE",
                   help="more ids, one per line ('-': stdin)")
    _yes_flag(d)
    _json_flag(d, "what was deleted")


def _add_workflows(sub: Subparsers) -> None:
    group: argparse.ArgumentParser = sub.add_parser(
        "workflows", help="the account's workflows: list, describe NAME, delete NAME",
        description="The account's workflows.")
    actions = group.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls: argparse.ArgumentParser = actions.add_parser("list", help="every workflow")
    _connection(ls, argparse.SUPPRESS)
    ls.set_defaults(handler=cmd_workflows_list, standalone=None, timeout_is_deadline=False,
                    workflow=None)
    _json_flag(ls, "one workflow per line")
    d = _command(actions, "describe", "a workflow's id, class, script, times and counts",
                 cmd_workflows_describe)
    _json_flag(d, "the workflow")
    rm = _command(actions, "delete", "delete a workflow and all its instances",
                  cmd_workflows_delete)
    _yes_flag(rm)
    _json_flag(rm, "what was deleted")


def _add_demo(sub: Subparsers, demo: Standalone) -> None:
    cmd = sub.add_parser("demo", help="run every command against a local fake API (offline)",
                         description="Start the fake Workflows API on 127.0.0.1, fill it "
                                     "with an instance, and run describe, step, list and "
                                     "watch against it. No network, no credentials.")
    cmd.add_argument("--wide", action="store_true", default=argparse.SUPPRESS,
                     help="never shorten or drop columns to fit the terminal")
    cmd.set_defaults(handler=None, standalone=demo, timeout_is_deadline=False)


def build_parser(*, demo: Standalone | None = None) -> argparse.ArgumentParser:
    """The ``cfwf`` argument parser; with ``demo``, a ``demo`` command that runs it."""
    parser = _Parser(
        prog="cfwf",
        description="Look at and control Cloudflare Workflows instances: describe, step "
                    "outputs, watch, list, trigger, pause, resume, terminate, restart, "
                    "send-event, delete, workflows. Credentials come from "
                    "CLOUDFLARE_API_TOKEN (or CLOUDFLARE_EMAIL and CLOUDFLARE_API_KEY).",
        epilog="Try `cfwf demo` first: it runs every command against a local fake API.",
    )
    parser.add_argument("--version", action="version", version=f"cfwf {__version__}")
    _connection(parser, None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_describe(sub)
    _add_step(sub)
    _add_watch(sub)
    _add_list(sub)
    _add_writes(sub)
    _add_workflows(sub)
    if demo is not None:
        _add_demo(sub, demo)
    return parser
