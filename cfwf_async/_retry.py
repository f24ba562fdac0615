"""Which failures are retried, how long to wait, and how many retries a session may spend.

Pure policy: no I/O, no clock except where a caller passes one in.
"""

from __future__ import annotations

import random
from typing import Final

from . import errors

RETRYABLE_STATUSES: Final = frozenset({408, 409, 429})

#: The longest wait a server can impose through anything it says (``Retry-After``, a
#: ``Ratelimit`` reset, a pause shared through a limiter or Redis). Cloudflare's own
#: block lasts 5 minutes; a longer value is a broken or hostile server, and believing
#: it would park every caller, and every process sharing a limiter, for that long.
MAX_SERVER_WAIT: Final = 900.0


def clamp_server_wait(seconds: float) -> float:
    """A server-supplied wait, taken as at most :data:`MAX_SERVER_WAIT` seconds."""
    return seconds if seconds <= MAX_SERVER_WAIT else MAX_SERVER_WAIT


def is_retryable(exc: BaseException) -> bool:
    """Connection errors, timeouts, 408, 409, 429 and 5xx are worth another attempt."""
    if isinstance(exc, errors.APIStatusError):
        return exc.status_code in RETRYABLE_STATUSES or exc.status_code >= 500
    return isinstance(exc, errors.APIConnectionError)


class RetryPolicy:
    """Exponential backoff with full jitter, honouring ``Retry-After`` up to a cap.

    Attempt ``n`` (1 for the first retry) waits a random time in
    ``[0, min(max_delay, base_delay * 2 ** (n - 1))]``, or exactly the server's
    ``Retry-After`` when it sent one. A ``Retry-After`` above ``retry_after_cap`` is not
    slept through: the error is raised at once, so a request handler is never parked
    for minutes.
    """

    __slots__ = ("base_delay", "max_delay", "max_retries", "retry_after_cap")

    def __init__(
        self,
        max_retries: int,
        *,
        base_delay: float = 0.5,
        max_delay: float = 8.0,
        retry_after_cap: float = 60.0,
    ) -> None:
        self.max_retries = max_retries
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.retry_after_cap = retry_after_cap

    def delay(
        self, retry: int, exc: BaseException, rng: random.Random | None = None
    ) -> float | None:
        """Seconds to wait before retry number ``retry`` (1-based), or None to give up."""
        if retry > self.max_retries or not is_retryable(exc):
            return None
        if isinstance(exc, errors.APIStatusError) and exc.retry_after is not None:
            # The server said when to come back (a 429, or a 503 during maintenance).
            if exc.retry_after > self.retry_after_cap:
                return None
            return exc.retry_after
        ceiling = min(self.max_delay, self.base_delay * (2 ** (retry - 1)))
        return (rng or random).uniform(0.0, ceiling)


class RetryBudget:
    """A session-wide retry quota, in the spirit of the AWS SDKs' retry token bucket.

    Every retry spends ``retry_cost`` tokens (``timeout_cost`` after a timeout, since a
    timed-out attempt held a connection for the whole timeout). A call that succeeds on
    a retry puts that retry's cost back; a call that succeeds at once adds
    ``success_refund``; the bucket never holds more than ``capacity``. Transient faults
    therefore cost nothing in the long run, while a run of calls that keep failing
    drains the bucket, and with it empty a failing call gives up at once with its last
    error: when the API is down, a busy session stops multiplying its load by
    ``max_retries + 1``.

    Over a run of ``n`` calls that all fail, the total number of requests is at most
    ``n + capacity // retry_cost`` (each retry takes at least ``retry_cost`` tokens and
    nothing is put back). With the defaults that is ``n + 100``::

        WorkflowsSession(retry_budget=RetryBudget(capacity=50))   # n + 10
        WorkflowsSession(retry_budget=None)                       # no budget

    One budget may be shared by several sessions (of one event loop) to bound them
    together.
    """

    __slots__ = ("capacity", "retry_cost", "success_refund", "timeout_cost", "tokens")

    def __init__(
        self,
        capacity: int = 500,
        *,
        retry_cost: int = 5,
        timeout_cost: int = 10,
        success_refund: int = 1,
    ) -> None:
        for name, value, low in (
            ("capacity", capacity, 0),
            ("retry_cost", retry_cost, 1),
            ("timeout_cost", timeout_cost, 1),
            ("success_refund", success_refund, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        self.capacity = capacity
        self.retry_cost = retry_cost
        self.timeout_cost = timeout_cost
        self.success_refund = success_refund
        #: Tokens left; a retry needs its cost in tokens.
        self.tokens = capacity

    def __repr__(self) -> str:
        return f"RetryBudget(tokens={self.tokens}/{self.capacity})"

    def cost(self, exc: BaseException) -> int:
        """What a retry after ``exc`` costs."""
        return self.timeout_cost if isinstance(exc, errors.APITimeoutError) else self.retry_cost

    def try_spend(self, exc: BaseException) -> int:
        """Take the cost of retrying after ``exc``; return it, or 0 (nothing taken) if short."""
        cost = self.cost(exc)
        if cost > self.tokens:
            return 0
        self.tokens -= cost
        return cost

    def refund(self, retry_cost: int = 0) -> None:
        """A call succeeded: put back the cost of the retry that succeeded (``retry_cost``),
        or ``success_refund`` when the first attempt did."""
        amount = retry_cost if retry_cost > 0 else self.success_refund
        self.tokens = min(self.capacity, self.tokens + amount)
