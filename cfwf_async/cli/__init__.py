"""The ``cfwf`` command: look at Workflows instances from a terminal.

::

    cfwf describe checkout order-981            # summary, every step, a timeline
    cfwf step checkout order-981 --step "render invoice-1" --output invoice.pdf
    cfwf watch checkout order-981               # until it ends; exit 0 if complete
    cfwf list checkout --status errored --since 2026-10-26 --limit 20
    cfwf demo                                   # all of the above against a local fake

Credentials and the account come from the SDK's environment variables
(``CLOUDFLARE_API_TOKEN``, ``CLOUDFLARE_ACCOUNT_ID``, ...); ``--account-id`` and
``--base-url`` override them. Errors are one line on stderr (and a ``hint:`` line when
there is something to try); the exit status is 0 on success, 1 for an API error (or a
watched instance that did not complete) and 2 for a usage error. A reader that goes away
(``| head``) ends any command quietly with status 0. Colour is used only on a terminal
and never when ``NO_COLOR`` is set.
``rich`` (the ``cli`` extra) draws the download progress bar; without it the command
works the same with a plainer bar.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from typing import Any, Final

from ..errors import WorkflowsError
from ..session import WorkflowsSession
from ._console import EXIT_API, EXIT_OK, EXIT_USAGE, Console, UsageError
from ._errors import Explained, explain_api_error, explain_value_error
from ._parser import build_parser
from ._width import terminal_width

__all__ = ["main"]

# The session's own message speaks of keyword arguments; someone at a shell needs the
# variables, and the permission the token must carry.
_NO_CREDENTIALS: Final = (
    "no credentials: set CLOUDFLARE_API_TOKEN to an API token with Workers Scripts "
    "Read permission (or CLOUDFLARE_EMAIL and CLOUDFLARE_API_KEY)"
)
_NO_ACCOUNT: Final = "no account: pass --account-id or set CLOUDFLARE_ACCOUNT_ID"


def _open_session(args: argparse.Namespace) -> WorkflowsSession:
    """The session for a command; the session itself decides what is missing."""
    options: dict[str, Any] = {"allow_insecure_http": args.allow_insecure_http}
    if args.timeout is not None and not args.timeout_is_deadline:
        options["timeout"] = args.timeout
    if args.retries is not None:
        options["max_retries"] = args.retries
    try:
        session = WorkflowsSession(account_id=args.account_id, base_url=args.base_url,
                                   **options)
    except ValueError as exc:
        if str(exc).startswith("no credentials"):
            raise UsageError(_NO_CREDENTIALS) from None
        raise
    if session.account_id is None:
        raise UsageError(_NO_ACCOUNT)
    # For the error messages: where the requests went, and how long each could take.
    args.resolved_base_url = session.base_url
    args.request_timeout = session.timeout
    return session


async def _demo(console: Console) -> int:
    # Imported when run: the demo pulls in the fake API, which no other command needs.
    from ._demo import run_demo

    return await run_demo(console)


async def _run(args: argparse.Namespace, console: Console) -> int:
    if args.standalone is not None:
        code: int = await args.standalone(console)
        return code
    async with _open_session(args) as session:
        code = await args.handler(session, args, console)
        return code


def _report(console: Console, explained: Explained) -> None:
    console.error(explained.message)
    if explained.hint:
        console.hint(explained.hint)


def _reader_gone() -> int:
    """The reader of stdout went away (``| head``): end quietly, with success.

    stdout is pointed at /dev/null so Python's flush at exit cannot fail a second time.
    Every command behaves the same: exit 0, no message, no traceback.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cfwf`` with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    parser = build_parser(demo=_demo)
    args = parser.parse_args(argv)  # exits 2 with a usage line on bad arguments
    console = Console.for_streams(sys.stdout, sys.stderr,
                                  width=terminal_width(sys.stdout, wide=args.wide))
    try:
        return _main(args, console)
    except BrokenPipeError:
        return _reader_gone()


def _main(args: argparse.Namespace, console: Console) -> int:
    try:
        code = asyncio.run(_run(args, console))
        console.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except UsageError as exc:
        console.error(str(exc))
        return EXIT_USAGE
    except WorkflowsError as exc:
        _report(console, explain_api_error(exc, args))
        return EXIT_API
    except (ValueError, TypeError) as exc:
        # The SDK refuses invalid arguments (an over-long workflow name, an http:// URL
        # to a remote host) with these, before any request.
        if os.environ.get("CFWF_DEBUG"):
            raise
        _report(console, explain_value_error(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        console.stderr.write("\n")
        return 130
    except BrokenPipeError:
        raise
    except OSError as exc:
        console.error(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))
        return EXIT_API
    except Exception as exc:  # never a traceback, unless asked for
        if os.environ.get("CFWF_DEBUG"):
            raise
        console.error(f"unexpected {type(exc).__name__}: {exc} (set CFWF_DEBUG=1 for a "
                      "traceback)")
        return EXIT_API
