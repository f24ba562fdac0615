"""Errors in a shell user's words: one plain line, and where it helps, what to try next.

The SDK's messages are written for a programmer (``pass allow_insecure_http=True``,
``ClientConnectorError: ...``); ``cfwf`` says what went wrong in terms of its own flags
and variables, and adds a ``hint:`` line.
"""

from __future__ import annotations

import argparse
import shlex
import socket
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from .. import _protocol as proto
from ..errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    OutcomeUnknownError,
    WorkflowsError,
)

__all__ = ["Explained", "explain_api_error", "explain_value_error"]

_CHECK_URL: Final = "check --base-url / CLOUDFLARE_BASE_URL"
_API_PATH: Final = "/client/v4"


@dataclass(frozen=True)
class Explained:
    """The error line and the optional hint under it."""

    message: str
    hint: str | None = None


def _base_url(args: argparse.Namespace) -> str:
    return getattr(args, "resolved_base_url", None) or proto.DEFAULT_BASE_URL


def _host(url: str) -> str:
    parts = urlsplit(url)
    return parts.netloc or url


def _connect_reason(cause: BaseException | None) -> str:
    """Why a connection failed, from the transport's exception (duck-typed)."""
    os_error = getattr(cause, "os_error", None) or cause
    if isinstance(os_error, socket.gaierror):
        return "host name not found"
    if isinstance(os_error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(os_error, OSError) and os_error.strerror:
        return os_error.strerror.lower()
    return "no connection"


def _explain_connection(exc: APIConnectionError, args: argparse.Namespace) -> Explained:
    url = _base_url(args)
    if isinstance(exc, APITimeoutError):
        timeout = getattr(args, "request_timeout", None) or 60.0
        return Explained(
            f"no answer from {_host(url)} in time (each attempt waits {timeout:g} s)",
            f"{_CHECK_URL}; --timeout S and --retries N change how long cfwf waits",
        )
    reason = _connect_reason(exc.__cause__)
    return Explained(f"cannot connect to {_host(url)} ({reason})", _CHECK_URL)


def _step_hint(args: argparse.Namespace) -> str:
    command = shlex.join(["cfwf", "describe", args.workflow, args.instance])
    return (f"run: {command} to list the step names (they end in a counter, "
            'e.g. "fetch page-1")')


def _explain_status(exc: APIStatusError, args: argparse.Namespace) -> Explained | None:
    url = _base_url(args)
    if exc.status_code == 404 and not exc.errors:
        hint = None
        if not url.rstrip("/").endswith(_API_PATH):
            hint = f"the API lives under {_API_PATH}: try --base-url {url.rstrip('/')}{_API_PATH}"
        return Explained(f"{_host(url)} answered 404 with a page that is not the "
                         "Cloudflare API's", hint or _CHECK_URL)
    codes = {item.message for item in exc.errors}
    if "step.not_found" in codes and getattr(args, "step", None) is not None:
        return Explained(f"no step named {args.step!r} ({args.type}) in instance "
                         f"{args.instance!r}", _step_hint(args))
    if "instance.not_found" in codes and getattr(args, "instance", None) is not None:
        return Explained(str(exc), f"run: {shlex.join(['cfwf', 'list', args.workflow])} "
                                   "to list its instances")
    return None


def _explain_unknown(exc: OutcomeUnknownError, args: argparse.Namespace) -> Explained:
    cause = exc.__cause__
    reason = f" ({cause})" if cause is not None else ""
    instance = getattr(args, "instance", None) or getattr(args, "id", None)
    target = ["cfwf", "describe", args.workflow, instance] if instance else [
        "cfwf", "list", args.workflow, "--reverse"]
    return Explained(
        f"no answer arrived, so the write may or may not have been applied{reason}",
        f"check with: {shlex.join(target)} before trying again",
    )


def explain_api_error(exc: WorkflowsError, args: argparse.Namespace) -> Explained:
    """The line (and hint) ``cfwf`` prints for an SDK error."""
    if isinstance(exc, OutcomeUnknownError):
        return _explain_unknown(exc, args)
    if isinstance(exc, APIConnectionError) and "session was closed" not in exc.message:
        return _explain_connection(exc, args)
    if isinstance(exc, APIStatusError):
        explained = _explain_status(exc, args)
        if explained is not None:
            return explained
    return Explained(str(exc))


def explain_value_error(exc: ValueError | TypeError) -> Explained:
    """The line (and hint) for an argument the SDK refused before any request."""
    text = str(exc)
    if "allow_insecure_http" in text:
        return Explained(
            "--base-url uses plain http:// to a host that is not this machine, which "
            "would send the API token unencrypted",
            "use https://, or add --allow-insecure-http if you really mean it",
        )
    if text.startswith("base_url"):
        return Explained("--base-url" + text[len("base_url"):], _CHECK_URL)
    return Explained(text)
