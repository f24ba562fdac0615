"""The sans-I/O core: everything about the wire that needs no socket.

Validate arguments, build paths, queries and headers, and turn an answer's
``(status, headers, body)`` into a model or an exception. Pure functions and immutable
values only, so most of the SDK is tested without a server.
"""

from __future__ import annotations

import email.utils
import functools
import ipaddress
import math
import re
import time
from collections.abc import Callable, Container, Iterable, Mapping
from datetime import UTC, datetime
from typing import Final, Literal, TypeVar, overload
from urllib.parse import quote, urlsplit

import msgspec

from . import _decoding, errors
from ._retry import clamp_server_wait
from .models import (
    INSTANCE_STATUSES,
    Envelope,
    ErrorItem,
    Instance,
    InstanceSummary,
    RateLimitInfo,
    StepOutput,
)

T = TypeVar("T")

DEFAULT_BASE_URL: Final = "https://api.cloudflare.com/client/v4"

STEP_TYPES: Final = ("step", "waitForEvent")
ORDERS: Final = ("asc", "desc")
WORKFLOW_NAME_MAX: Final = 64
# User-created ids are at most 100 characters, but cron-triggered instances get longer,
# system-generated ids. The API documents no upper bound for those; 1,024 keeps a
# runaway argument from building a huge URL without refusing any real id.
INSTANCE_ID_MAX: Final = 1024


# ---------------------------------------------------------------------------
# Arguments


def check_str(name: str, value: object, *, max_len: int | None = None) -> str:
    """Return ``value`` if it is a non-empty str (at most ``max_len`` chars), else raise."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    if not value:
        raise ValueError(f"{name} must not be empty")
    if max_len is not None and len(value) > max_len:
        raise ValueError(f"{name} must be at most {max_len} characters, got {len(value)}")
    return value


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise naming the argument."""
    if not isinstance(value, str) or value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def check_int(name: str, value: object, *, minimum: int = 0, maximum: int | None = None) -> int:
    """Return ``value`` if it is an int in ``[minimum, maximum]``, else raise.

    The one rule for every integer argument of the package: the wrong type (a bool
    included, though Python counts it as an int) is a :class:`TypeError`, the right type
    out of range a :class:`ValueError`; both name the argument.
    """
    bounds = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int {bounds}, got {type(value).__name__}")
    if value < minimum or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be an int {bounds}, got {value}")
    return value


def check_positive_int(name: str, value: object) -> int:
    """Return ``value`` if it is an int >= 1 (bools refused), else raise."""
    return check_int(name, value, minimum=1)


def check_number(
    name: str, value: object, *, minimum: float = 0.0, maximum: float | None = None
) -> float:
    """Return ``value`` as a float if it is a finite number in ``[minimum, maximum]``.

    Same rule as :func:`check_int`: a non-number (or a bool) is a :class:`TypeError`,
    NaN, an infinity or a number out of range a :class:`ValueError`.
    """
    bounds = f">= {minimum:g}" if maximum is None else f"in {minimum:g}..{maximum:g}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number {bounds}, got {type(value).__name__}")
    if not (math.isfinite(value) and value >= minimum and (maximum is None or value <= maximum)):
        raise ValueError(f"{name} must be a number {bounds}, got {value!r}")
    return float(value)


@overload
def check_timeout(name: str, value: object, *, allow_none: Literal[False] = False) -> float: ...
@overload
def check_timeout(name: str, value: object, *, allow_none: bool) -> float | None: ...
def check_timeout(name: str, value: object, *, allow_none: bool = False) -> float | None:
    """Return a positive finite number of seconds (or None when allowed)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


def check_path_segment(name: str, value: object, *, max_len: int) -> str:
    """A name that becomes one URL path segment: a non-empty str the wire can carry.

    ``.`` and ``..`` are refused (they name no resource, and a proxy may resolve them),
    and so is a lone surrogate, which cannot be encoded as UTF-8 and would otherwise
    fail later, deep inside the request.
    """
    check_str(name, value, max_len=max_len)
    assert isinstance(value, str)
    if value in (".", ".."):
        raise ValueError(f"{name} must not be {value!r}")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(
                f"{name} contains a lone surrogate and cannot be sent: {value!r}"
            ) from None
    return value


def check_workflow_name(value: object, name: str = "workflow_name") -> str:
    return check_path_segment(name, value, max_len=WORKFLOW_NAME_MAX)


def check_instance_id(value: object, name: str = "instance_id") -> str:
    return check_path_segment(name, value, max_len=INSTANCE_ID_MAX)


def check_account_id(value: object) -> str:
    if value is None:
        raise ValueError(
            "account_id is required: pass account_id= or set CLOUDFLARE_ACCOUNT_ID"
        )
    return check_str("account_id", value)


# ---------------------------------------------------------------------------
# URLs


def segment(value: str) -> str:
    """Percent-encode one path segment so that it can never change the path's shape.

    Everything but ``A-Z a-z 0-9 - _ ~`` is encoded, ``.`` included, so ``..`` reaches
    the server as the two characters of an id and never as a parent directory.
    """
    return quote(value, safe="").replace(".", "%2E")


def query_string(params: Mapping[str, str]) -> str:
    """Encode query parameters (values percent-encoded, ``+`` never used for space)."""
    return "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())


# Cached: percent-encoding three segments was the largest cost of a call on our side
# (about 3.5 µs of ~100 µs CPU per loopback get_instance), and a program polls the same
# few instances over and over. Bounded, so a sweep over many ids cannot grow it.
@functools.lru_cache(maxsize=4096)
def instance_path(account_id: str, workflow_name: str, instance_id: str) -> str:
    return (
        f"/accounts/{segment(account_id)}/workflows/{segment(workflow_name)}"
        f"/instances/{segment(instance_id)}"
    )


def instances_path(account_id: str, workflow_name: str) -> str:
    return f"/accounts/{segment(account_id)}/workflows/{segment(workflow_name)}/instances"


_LOOPBACK_NAMES: Final = frozenset({"localhost", "localhost.localdomain"})


def is_loopback_host(host: str | None) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if not host:
        return False
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_base_url(value: str, *, allow_insecure_http: bool) -> str:
    """Normalise ``base_url`` and refuse plain HTTP to a remote host.

    Credentials travel in headers, so ``http://`` is only accepted for loopback hosts
    (tests, the fake API) unless the caller opts in explicitly.
    """
    check_str("base_url", value)
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"base_url must be an http(s) URL with a host, got {value!r}")
    if parts.query or parts.fragment:
        raise ValueError("base_url must not have a query or fragment")
    if parts.username or parts.password:
        raise ValueError("base_url must not carry credentials")
    if (
        parts.scheme == "http"
        and not allow_insecure_http
        and not is_loopback_host(parts.hostname)
    ):
        raise ValueError(
            "base_url uses plain http:// to a non-loopback host, which would send the "
            "API token unencrypted; use https:// or pass allow_insecure_http=True"
        )
    return value.rstrip("/")


# ---------------------------------------------------------------------------
# Headers


_CREDENTIAL_RE: Final = re.compile(r"[\x21-\x7e]+")
_CREDENTIAL_ENV: Final = {
    "api_token": "CLOUDFLARE_API_TOKEN",
    "api_email": "CLOUDFLARE_EMAIL",
    "api_key": "CLOUDFLARE_API_KEY",
}


def _credential(name: str, value: object) -> str:
    """Refuse a credential that is not a str of visible ASCII, without echoing it.

    A token read from a file often ends in a newline: caught here, at construction,
    instead of as an obscure header error on every request.
    """
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    if not _CREDENTIAL_RE.fullmatch(value):
        raise ValueError(
            f"{name} (or {_CREDENTIAL_ENV[name]}) must be visible ASCII characters only: "
            "no spaces, line breaks or control characters (a trailing newline?)"
        )
    return value


def auth_headers(
    *, api_token: str | None, api_email: str | None, api_key: str | None
) -> dict[str, str]:
    """The authentication headers: a Bearer token, or the legacy email + global key."""
    if api_token:
        return {"Authorization": f"Bearer {_credential('api_token', api_token)}"}
    if api_email and api_key:
        return {
            "X-Auth-Email": _credential("api_email", api_email),
            "X-Auth-Key": _credential("api_key", api_key),
        }
    if api_key or api_email:
        raise ValueError(
            "a global API key needs both api_email and api_key "
            "(CLOUDFLARE_EMAIL and CLOUDFLARE_API_KEY); or set CLOUDFLARE_API_TOKEN"
        )
    raise ValueError(
        "no credentials: pass api_token= or set CLOUDFLARE_API_TOKEN "
        "(or api_email= and api_key=, CLOUDFLARE_EMAIL and CLOUDFLARE_API_KEY)"
    )


SECRET_HEADERS: Final = frozenset({"authorization", "x-auth-key", "x-auth-email"})


# ---------------------------------------------------------------------------
# Rate-limit headers


# The exact forms Cloudflare sends (a first list item ending the header or followed by
# another item); integer digits are always finite and non-negative.
_RATELIMIT_EXACT: Final = re.compile(r'"[^",;]*";r=(\d+);t=(\d+)\s*(?:,|$)')
_POLICY_EXACT: Final = re.compile(r'"[^",;]*";q=(\d+);w=(\d+)\s*(?:,|$)')


def parse_ratelimit(
    ratelimit: str | None, policy: str | None = None
) -> RateLimitInfo | None:
    """Parse ``Ratelimit: "default";r=<remaining>;t=<reset>`` and its policy header.

    Garbage, missing parts and extra list items are tolerated; None when nothing useful
    was found. A reset beyond :data:`~cfwf_async._retry.MAX_SERVER_WAIT` is taken as
    that cap.
    """
    if not ratelimit and not policy:
        return None
    r = t = q = w = None
    if ratelimit:
        # Every answer carries these headers, so Cloudflare's exact shape takes one
        # regex match; anything else goes through the tolerant parser.
        if (m := _RATELIMIT_EXACT.match(ratelimit)) is not None:
            r, t = float(m[1]), float(m[2])
        else:
            r, t = _decoding.header_numbers(ratelimit, "r", "t")
    if policy:
        if (m := _POLICY_EXACT.match(policy)) is not None:
            q, w = float(m[1]), float(m[2])
        else:
            q, w = _decoding.header_numbers(policy, "q", "w")
    if r is None and t is None and q is None and w is None:
        return None
    return RateLimitInfo(
        remaining=None if r is None else int(r),
        reset=None if t is None else clamp_server_wait(t),
        quota=None if q is None else int(q),
        window=w,
    )


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` in seconds: delta-seconds or an HTTP date; None if unusable.

    A wait beyond :data:`~cfwf_async._retry.MAX_SERVER_WAIT` is taken as that cap.
    """
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
        return clamp_server_wait(max(0.0, seconds))
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return clamp_server_wait(seconds)


# ---------------------------------------------------------------------------
# Answers

_STATUS_ERRORS: Final[dict[int, type[errors.APIStatusError]]] = {
    400: errors.BadRequestError,
    401: errors.AuthenticationError,
    403: errors.PermissionDeniedError,
    404: errors.NotFoundError,
    409: errors.ConflictError,
    429: errors.RateLimitError,
}

# What a decoder may raise for a body that is not what the API promises: msgspec's
# errors, a ValueError or TypeError from a value, and RecursionError for JSON nested
# deeper than the interpreter's stack.
_UNDECODABLE: Final = (msgspec.DecodeError, ValueError, TypeError, RecursionError)


def _decoded(
    decode: Callable[[bytes], T], body: bytes, what: str, status: int, cf_ray: str | None
) -> T:
    """``decode(body)``, with any failure raised as APIResponseValidationError."""
    try:
        return _decoding.surrogate_tolerant(decode, body)
    except _UNDECODABLE as exc:
        raise errors.APIResponseValidationError(
            f"{what}: the {status} answer does not decode: {exc}",
            status_code=status,
            cf_ray=cf_ray,
        ) from None


def _describe(items: Iterable[ErrorItem]) -> str:
    """Cloudflare's items as text: ``message (code n)``, the code left out when 0."""
    return "; ".join(f"{e.message} (code {e.code})" if e.code else e.message for e in items)


def _result(env: Envelope[T], what: str, status: int, cf_ray: str | None) -> T:
    if env.success is False or env.result is None:
        messages = _describe(_decoding.error_items(env.errors)) or "no result"
        raise errors.APIResponseValidationError(
            f"{what}: the {status} answer has success={env.success} and no result "
            f"({messages})",
            status_code=status,
            cf_ray=cf_ray,
        )
    return env.result


def decode_instance(body: bytes, *, status: int = 200, cf_ray: str | None = None) -> Instance:
    """Decode a 2xx ``get_instance`` body, raising APIResponseValidationError if broken."""
    env = _decoded(_decoding.instance_envelope, body, "instance", status, cf_ray)
    return _result(env, "instance", status, cf_ray)


def decode_result(
    decode: Callable[[bytes], Envelope[T]],
    body: bytes,
    *,
    what: str,
    status: int = 200,
    cf_ray: str | None = None,
) -> T:
    """The ``result`` of a 2xx envelope, any failure an APIResponseValidationError."""
    return _result(_decoded(decode, body, what, status, cf_ray), what, status, cf_ray)


def decode_step_output(
    body: bytes, *, status: int = 200, cf_ray: str | None = None
) -> StepOutput:
    """Decode a 2xx JSON ``get_step_output`` body, enveloped or flat."""
    env = _decoded(_decoding.step_output_envelope, body, "step output", status, cf_ray)
    if isinstance(env, StepOutput):
        return env
    return _result(env, "step output", status, cf_ray)


def status_error(
    status: int,
    *,
    method: str,
    path: str,
    body: bytes,
    cf_ray: str | None,
    retry_after: float | None = None,
    cut_short: bool = False,
) -> errors.APIStatusError:
    """Map a non-2xx answer to its exception, with Cloudflare's messages in the text.

    The status alone picks the class, whatever the body holds. ``cut_short`` says the
    body broke off before its end (``body`` is then ignored).
    """
    items, messages = ([], []) if cut_short else _decoding.decode_error_body(body)
    detail = "; ".join(filter(None, (_describe(items), _describe(messages))))
    if cut_short:
        detail = "the body broke off before its end"
    elif not detail:
        detail = "HTML or empty body" if body else "empty body"
    message = f"{method} {path} returned {status}: {detail}"
    if retry_after is not None:
        message += f"; retry after {retry_after:g} s"
    cls = _STATUS_ERRORS.get(status)
    if cls is None:
        cls = errors.InternalServerError if status >= 500 else errors.APIStatusError
    return cls(
        message,
        status_code=status,
        errors=items,
        cf_ray=cf_ray,
        retry_after=retry_after,
        messages=messages,
    )


# ---------------------------------------------------------------------------
# Query values


def format_datetime(name: str, value: object) -> str:
    """A timezone-aware datetime as UTC ISO 8601 with a trailing ``Z``."""
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware (a naive datetime is ambiguous)")
    utc = value.astimezone(UTC).replace(tzinfo=None)
    return utc.isoformat(timespec="milliseconds") + "Z"


# ---------------------------------------------------------------------------
# Listing instances

DIRECTIONS: Final = ("asc", "desc")
#: The statuses a listing can filter on: the documented ones, sorted for messages.
LIST_STATUSES: Final = tuple(sorted(INSTANCE_STATUSES))
#: How much of a cursor an error message shows; cursors are opaque and can be long.
_CURSOR_SHOWN: Final = 80


def instance_query(order: object, simple: object) -> dict[str, str]:
    """The checked query of a ``get_instance`` request (None: the API's default)."""
    query: dict[str, str] = {}
    if order is not None:
        query["order"] = check_choice("order", order, ORDERS)
    if simple is not None:
        if not isinstance(simple, bool):
            raise TypeError(f"simple must be a bool, got {type(simple).__name__}")
        query["simple"] = "true" if simple else "false"
    return query


def listing_query(
    *,
    status: object = None,
    date_start: object = None,
    date_end: object = None,
    direction: object = None,
    per_page: object = None,
) -> dict[str, str]:
    """Check a listing's filters and encode them as the query every page repeats.

    Dates go out in UTC with a trailing ``Z``; a naive datetime is refused because it
    names no instant. None leaves a filter out.
    """
    query: dict[str, str] = {}
    if status is not None:
        if not isinstance(status, str):
            raise TypeError(f"status must be a str, got {type(status).__name__}")
        query["status"] = check_choice("status", status, LIST_STATUSES)
    if date_start is not None:
        query["date_start"] = format_datetime("date_start", date_start)
    if date_end is not None:
        query["date_end"] = format_datetime("date_end", date_end)
    if (
        isinstance(date_start, datetime)
        and isinstance(date_end, datetime)
        and date_start > date_end
    ):
        raise ValueError(
            f"date_start ({query['date_start']}) is after date_end ({query['date_end']})"
        )
    if direction is not None:
        query["direction"] = check_choice("direction", direction, DIRECTIONS)
    if per_page is not None:
        query["per_page"] = str(check_positive_int("per_page", per_page))
    return query


class InstancePage(msgspec.Struct, frozen=True, gc=False):
    """One decoded page of a listing.

    ``cursor`` names the next page; it is None on the last page, which is a page whose
    answer had no cursor (absent, null or empty) or no items.
    """

    items: list[InstanceSummary]
    cursor: str | None
    status: int = 200
    cf_ray: str | None = None


def decode_instance_page(
    body: bytes, *, status: int = 200, cf_ray: str | None = None
) -> InstancePage:
    """Decode a 2xx listing body into its summaries and the next page's cursor.

    A ``result`` of null is an empty page. A body that is not an envelope around a list
    of summaries raises :class:`~cfwf_async.errors.APIResponseValidationError`.
    """
    what = "instance listing"
    env = _decoded(_decoding.summary_page_envelope, body, what, status, cf_ray)
    if env.success is False:
        _result(env, what, status, cf_ray)
    items = env.result or []
    info = env.result_info
    cursor = info.cursor if info is not None and items else None
    return InstancePage(items, cursor or None, status, cf_ray)


def next_cursor(page: InstancePage, sent: Container[str]) -> str | None:
    """The cursor to send for the page after ``page``; None when the listing is over.

    ``sent`` holds every cursor the listing has sent so far. A cursor among them (a
    server bug, a proxy replaying an answer) would lead back to pages already read and
    loop forever, so it raises
    :class:`~cfwf_async.errors.APIResponseValidationError` naming the cursor.
    """
    cursor = page.cursor
    if cursor is not None and cursor in sent:
        shown = cursor if len(cursor) <= _CURSOR_SHOWN else cursor[:_CURSOR_SHOWN] + "..."
        raise errors.APIResponseValidationError(
            f"instance listing: the server sent cursor {shown!r} again after the listing "
            "had already followed it; stopping instead of reading the same pages forever",
            status_code=page.status,
            cf_ray=page.cf_ray,
        )
    return cursor
