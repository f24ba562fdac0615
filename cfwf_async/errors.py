"""The exceptions cfwf_async raises.

Every failure the SDK reports is a :class:`WorkflowsError`; invalid arguments are the
one exception (they raise :class:`ValueError` or :class:`TypeError` naming the argument,
before any request is sent)::

    WorkflowsError
    ├── APIConnectionError            the request did not get an answer
    │   └── APITimeoutError           ... because a timeout ran out
    ├── APIResponseValidationError    a 2xx answer whose body is not what the API promises
    ├── StreamError                   a streamed output ended early or is corrupt
    ├── OutputTooLargeError           a stream is larger than the caller's byte cap
    ├── RateLimiterUnavailableError   the shared limiter's store (Redis) cannot be reached
    ├── OutcomeUnknownError           a write may or may not have been applied
    └── APIStatusError                a non-2xx answer (status_code, errors, cf_ray)
        ├── BadRequestError           400
        ├── AuthenticationError       401
        ├── PermissionDeniedError     403
        ├── NotFoundError             404
        ├── ConflictError             409
        ├── RateLimitError            429 (retry_after)
        └── InternalServerError       >= 500

Exception texts never contain credentials: they are built from the method, the path,
the status and Cloudflare's own error messages only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .models import ErrorItem

__all__ = [
    "APIConnectionError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "InternalServerError",
    "NotFoundError",
    "OutcomeUnknownError",
    "OutputTooLargeError",
    "PermissionDeniedError",
    "RateLimitError",
    "RateLimiterUnavailableError",
    "StreamError",
    "WorkflowsError",
]


class WorkflowsError(Exception):
    """Base class of every error the SDK raises for a failed call.

    ``cf_ray`` is Cloudflare's request id (the ``cf-ray`` header) when an answer
    arrived, for support tickets; ``None`` otherwise.
    """

    cf_ray: str | None = None

    def __init__(self, message: str, *, cf_ray: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.cf_ray = cf_ray

    def __str__(self) -> str:
        if self.cf_ray:
            return f"{self.message} (cf-ray {self.cf_ray})"
        return self.message


class APIConnectionError(WorkflowsError):
    """No usable answer: connection refused or reset, DNS failure, TLS failure."""


class APITimeoutError(APIConnectionError):
    """A timeout ran out: connecting, waiting for the answer or waiting for the next chunk."""


class APIResponseValidationError(WorkflowsError):
    """A successful (2xx) answer whose body does not decode into the documented shape."""

    def __init__(
        self, message: str, *, status_code: int, cf_ray: str | None = None
    ) -> None:
        super().__init__(message, cf_ray=cf_ray)
        self.status_code = status_code


class StreamError(WorkflowsError):
    """A streamed step output ended before its ``Content-Length`` or arrived corrupt.

    ``received`` is how many bytes were handed over before the failure and
    ``expected`` the announced size (``None`` for a chunked body).
    """

    def __init__(
        self,
        message: str,
        *,
        received: int,
        expected: int | None,
        cf_ray: str | None = None,
    ) -> None:
        super().__init__(message, cf_ray=cf_ray)
        self.received = received
        self.expected = expected


class OutputTooLargeError(WorkflowsError):
    """A streamed output is larger than the cap the caller gave (``StepStream.read``).

    ``size`` is the announced size when known, ``limit`` the cap.
    """

    def __init__(
        self, message: str, *, size: int | None, limit: int, cf_ray: str | None = None
    ) -> None:
        super().__init__(message, cf_ray=cf_ray)
        self.size = size
        self.limit = limit


class RateLimiterUnavailableError(WorkflowsError):
    """A shared rate limiter cannot reach its store, so no request was sent.

    Raised by :class:`cfwf_async.redis.RedisRateLimit` when Redis does not answer (the
    limit fails closed rather than risk the account's quota). ``host`` and ``port`` name
    the store (``port`` is None for a Unix socket); the text never holds its password.
    """

    def __init__(self, message: str, *, host: str, port: int | None) -> None:
        super().__init__(message)
        self.host = host
        self.port = port


class OutcomeUnknownError(WorkflowsError):
    """A write may or may not have been applied, and the SDK will not resend it.

    Raised when the answer to a request that is not safe to repeat (``send_event``,
    ``restart_instance``) was lost after the request was sent, or when the SDK could
    not find out what a create or status change did. ``call`` names the call; the
    error that left the outcome unknown is the ``__cause__``. Read the instance to
    learn what happened before trying again.
    """

    def __init__(self, call: str, *, reason: str = "", cf_ray: str | None = None) -> None:
        detail = f" ({reason})" if reason else ""
        super().__init__(
            f"{call}: the outcome is unknown, the write may or may not have been "
            f"applied{detail}; read the instance before trying again",
            cf_ray=cf_ray,
        )
        self.call = call


class APIStatusError(WorkflowsError):
    """Cloudflare answered with a non-2xx status.

    ``status_code`` is the HTTP status, ``errors`` the envelope's error items (each with
    ``.code`` and ``.message``, and ``.documentation_url`` and ``.source`` when sent;
    empty for an HTML or empty body), ``messages`` its informational items (a plain
    string entry becomes an item with ``code == 0``), ``cf_ray`` the request id, and
    ``retry_after`` the answer's ``Retry-After`` in seconds (None when it sent none; a
    503 may carry one as well as a 429).
    """

    status_code: int

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        errors: Sequence[ErrorItem] = (),
        cf_ray: str | None = None,
        retry_after: float | None = None,
        messages: Sequence[ErrorItem] = (),
    ) -> None:
        super().__init__(message, cf_ray=cf_ray)
        self.status_code = status_code
        self.errors: tuple[ErrorItem, ...] = tuple(errors)
        self.messages: tuple[ErrorItem, ...] = tuple(messages)
        self.retry_after = retry_after


class BadRequestError(APIStatusError):
    """400: the API refused the request's parameters."""


class AuthenticationError(APIStatusError):
    """401: the token or key is missing, wrong or expired."""


class PermissionDeniedError(APIStatusError):
    """403: the credentials lack a Workers Scripts or Workers Tail permission."""


class NotFoundError(APIStatusError):
    """404: no such account, workflow, instance or step."""


class ConflictError(APIStatusError):
    """409: the resource is in a state that conflicts with the request."""


class RateLimitError(APIStatusError):
    """429: the account's API rate limit was crossed.

    ``retry_after`` is the server's ``Retry-After`` in seconds, or ``None`` when it sent
    none. Cloudflare blocks a user for 5 minutes after the limit is crossed.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int = 429,
        errors: Sequence[ErrorItem] = (),
        cf_ray: str | None = None,
        retry_after: float | None = None,
        messages: Sequence[ErrorItem] = (),
    ) -> None:
        super().__init__(
            message,
            status_code=status_code,
            errors=errors,
            cf_ray=cf_ray,
            retry_after=retry_after,
            messages=messages,
        )


class InternalServerError(APIStatusError):
    """A 5xx answer: Cloudflare's API or its edge failed (often an HTML page)."""
