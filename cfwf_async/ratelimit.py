"""Client-side rate limiting: stay under Cloudflare's account-wide API quota.

Cloudflare allows 1,200 API requests per 5 minutes per user, counted across every
client of that user, and blocks the user for 5 minutes once that is crossed. A
:class:`WorkflowsSession` therefore asks a *limiter* before every request leaves.

The limiter is a seam. The session speaks to it only through the methods of the
:class:`Limiter` protocol, so any object with them plugs in: the in-process
:class:`RateLimit` (the default), a limiter shared by several processes through Redis
(:mod:`cfwf_async.redis`), or your own. The session drives a limiter like this::

    await limiter.acquire()            # before every attempt, retries included
    ... the request is sent ...
    await limiter.observe(info)        # the answer carried a Ratelimit header
    await limiter.pause(retry_after)   # the answer was a 429 with Retry-After

Independently of the limiter, the session itself holds its own requests after a 429
until ``Retry-After`` is over, so a limiter that ignores :meth:`Limiter.pause` is
still safe; ``pause`` exists so that one 429 also holds every *other* session that
shares the limiter.

No server-supplied wait counts for more than :data:`~cfwf_async._retry.MAX_SERVER_WAIT`
(15 minutes): a broken or hostile ``Retry-After`` or ``Ratelimit`` must not park every
session sharing a limiter for years.
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Final, Protocol, runtime_checkable

import anyio

from . import errors
from ._protocol import check_int, check_number, check_timeout
from ._retry import clamp_server_wait
from .models import RateLimitInfo

__all__ = ["Clock", "Limiter", "RateLimit", "RateLimitInfo"]

#: Two ``Ratelimit`` answers whose resets lie this close together describe the same
#: window: ``t`` comes in whole seconds, and answers travel for a while.
_SAME_WINDOW_SLACK: Final = 1.0


@runtime_checkable
class Limiter(Protocol):
    """What a session needs from a rate limiter: three coroutine methods.

    Contract:

    * :meth:`acquire` is awaited before every request leaves (every attempt, retries
      included). It returns when the request may go, having counted it. It must be
      cancellable at any await without consuming a slot, and safe to call from many
      tasks at once.
    * :meth:`pause` is awaited after a 429 answer with ``Retry-After``: no
      :meth:`acquire` may return before ``seconds`` from now. A later, shorter pause
      must not shorten a longer one.
    * :meth:`observe` is awaited with the parsed ``Ratelimit`` / ``Ratelimit-Policy``
      headers of every answer that had them (any part may be None). ``info.reset`` is
      in seconds from the moment of the call. A limiter may ignore it.

    A limiter MAY also implement ``async def acquire_within(self, max_wait: float)``:
    like :meth:`acquire`, except that when a wait the *server* imposed (a pause, an
    ``r=0`` hold, pacing towards a reset) would keep the caller longer than
    ``max_wait`` seconds, it raises :class:`~cfwf_async.errors.RateLimitError` at once,
    with ``retry_after`` set to that wait and no slot taken. When a limiter has it, the
    session calls it with its ``retry_after_cap``, so nothing a server said parks a call
    longer than that; a limiter with only the three methods keeps working.

    None of the methods may raise for ordinary rate-limit conditions; waiting is how a
    limiter says no. A minimal limiter that lets everything through::

        class Unlimited:
            async def acquire(self) -> None: ...
            async def pause(self, seconds: float) -> None: ...
            async def observe(self, info: RateLimitInfo) -> None: ...

        WorkflowsSession(rate_limit=Unlimited())

    One limiter object may serve several sessions; then they share one budget and one
    429 pauses them all.
    """

    async def acquire(self) -> None:
        """Wait until one more request may leave, and count it."""
        ...

    async def pause(self, seconds: float) -> None:
        """Let no request leave for ``seconds`` from now (a 429's ``Retry-After``)."""
        ...

    async def observe(self, info: RateLimitInfo) -> None:
        """Learn the server's view of the quota from an answer's ``Ratelimit`` header."""
        ...


class Clock(Protocol):
    """Where a limiter reads the time and sleeps: ``now()`` in seconds, ``sleep()``.

    The default is :func:`time.monotonic` and :func:`anyio.sleep`. Tests pass a clock
    whose time is virtual, so timing logic is checked without waiting in real time.
    """

    def now(self) -> float:
        """Seconds on a clock that never goes back."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return ``seconds`` from now by this clock."""
        ...


class _MonotonicClock:
    __slots__ = ()

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


MONOTONIC: Final[Clock] = _MonotonicClock()


def server_wait_error(wait: float, max_wait: float) -> errors.RateLimitError:
    """What ``acquire_within`` raises when the server's hold outlasts ``max_wait``."""
    return errors.RateLimitError(
        f"Cloudflare's rate limit holds every request for another {wait:.1f} s, "
        f"longer than this call may wait ({max_wait:g} s); no request was sent",
        retry_after=wait,
    )


class RateLimit:
    """An in-process sliding-window limiter: at most ``requests`` per ``period`` seconds.

    A burst of up to ``requests`` leaves at once; after that each request waits until
    the oldest of the last ``requests`` is ``period + margin`` seconds old, so no window
    of ``period`` seconds ever holds more than ``requests`` acquisitions, even counted
    where they *arrive*: a request granted now may reach the server up to ``margin``
    seconds later (queues, connection set-up, a slow network), and the server counts it
    then. Waiters are served first come, first served.

    It also follows the server, whose count includes every other client of the same
    user (the dashboard, other machines):

    * A ``Ratelimit`` answer of ``r=0;t=N`` holds every request for ``N`` seconds.
    * Between answers, each request it lets through is subtracted from the last ``r``
      it saw, so a burst of concurrent requests cannot overrun a small remainder just
      because their answers have not come back yet. Answers that arrive out of order
      never raise that estimate within one window.
    * When fewer than :attr:`low_water` of the quota remain, requests are spread evenly
      over the time to the reset (``t / r`` apart) instead of spending the rest in one
      burst and then hitting the wall.
    * :meth:`pause` (a 429's ``Retry-After``) holds every request.

    Every wait the server supplies counts for at most 15 minutes, and
    :meth:`acquire_within` refuses at once, with
    :class:`~cfwf_async.errors.RateLimitError`, to wait out a server hold longer than
    the caller allows.

    One object may be shared by several sessions of one process to give them one budget::

        limit = RateLimit(1000, 300.0)
        async with WorkflowsSession(rate_limit=limit) as a, \\
                   WorkflowsSession(rate_limit=limit, api_token=other) as b:
            ...

    ``clock`` (an object with ``now()`` and ``async sleep()``, see :class:`Clock`)
    replaces the monotonic clock, for tests.
    """

    #: When the server says fewer than this fraction of its quota remains, pace.
    low_water: float = 0.1

    def __init__(
        self,
        requests: int,
        period: float,
        *,
        margin: float = 1.0,
        clock: Clock = MONOTONIC,
    ) -> None:
        self.requests: Final = check_int("requests", requests, minimum=1)
        self.period: Final = check_timeout("period", period)
        self.margin: Final = check_number("margin", margin)
        self._clock: Final = clock
        self._hold_for: Final = self.period + self.margin
        self._sent: deque[float] = deque(maxlen=requests)
        self._lock = anyio.Lock()
        # Sleeping callers, woken early when the server's word changes so that one
        # allowed a shorter wait can refuse the new hold at once.
        self._napping: set[anyio.CancelScope] = set()
        self._paused_until = -math.inf
        self._last_sent = -math.inf
        # The server's budget as last reported, minus what left since; None when no
        # answer described the current window.
        self._server_left: int | None = None
        self._server_reset_at = 0.0
        self._server_quota: int | None = None

    def __repr__(self) -> str:
        return f"RateLimit({self.requests}, {self.period})"

    @property
    def server_remaining(self) -> int | None:
        """Requests the server has left in its current window, as this limiter estimates.

        The last ``r`` the server reported minus the requests let through since; None
        when no answer described the current window.
        """
        if self._server_left is not None and self._clock.now() < self._server_reset_at:
            return max(0, self._server_left)
        return None

    def _low_mark(self) -> float:
        quota = self._server_quota or self.requests
        return max(1.0, quota * self.low_water)

    def _server_hold(self, now: float) -> float:
        """How long the server's word (pause, ``r=0``, pacing) holds the next request."""
        wait = self._paused_until - now
        left = self._server_left
        if left is not None:
            to_reset = self._server_reset_at - now
            if to_reset <= 0:
                self._server_left = None
            elif left <= 0:
                wait = max(wait, to_reset)
            elif left < self._low_mark():
                wait = max(wait, self._last_sent + to_reset / left - now)
        return wait

    def _window_wait(self, now: float) -> float:
        """How long this limiter's own window holds the next request."""
        if len(self._sent) == self.requests:
            return self._sent[0] + self._hold_for - now
        return 0.0

    def _take(self, now: float) -> None:
        self._sent.append(now)
        self._last_sent = now
        if self._server_left is not None:
            self._server_left -= 1

    async def acquire(self) -> None:
        """Wait for a free slot in the window (FIFO among waiters), then take it."""
        await self._acquire(math.inf)

    async def acquire_within(self, max_wait: float) -> None:
        """Like :meth:`acquire`, but never wait out a server hold over ``max_wait`` s.

        When a pause, an ``r=0`` hold or pacing towards the server's reset would keep
        this call longer than ``max_wait`` seconds, raise
        :class:`~cfwf_async.errors.RateLimitError` at once, ``retry_after`` set to that
        hold, without taking a slot. Waiting for this limiter's own window is waited.
        """
        await self._acquire(check_number("max_wait", max_wait))

    async def _acquire(self, max_wait: float) -> None:
        clock = self._clock
        while True:
            now = clock.now()
            hold = self._server_hold(now)
            if hold > max_wait:
                raise server_wait_error(hold, max_wait)
            if hold > 0:
                # Sat out outside the lock, so that callers queued behind see the hold
                # (and may refuse it) instead of waiting for this one to finish it.
                await self._nap(hold)
                continue
            if not self._lock.locked() and self._window_wait(now) <= 0:
                # Fast path: nobody queued and a slot free; no await, no lock round trip.
                self._take(now)
                return
            async with self._lock:
                while self._server_hold(now := clock.now()) <= 0:
                    wait = self._window_wait(now)
                    if wait <= 0:
                        self._take(now)
                        return
                    # Re-checked after the sleep: a pause or an answer may have come in.
                    await self._nap(wait)

    async def _nap(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if :meth:`_wake` is called meanwhile."""
        with anyio.CancelScope() as scope:
            self._napping.add(scope)
            try:
                await self._clock.sleep(seconds)
            finally:
                self._napping.discard(scope)

    def _wake(self) -> None:
        for scope in self._napping:
            scope.cancel()

    async def pause(self, seconds: float) -> None:
        """Hold every request for ``seconds`` from now (never shortens a longer pause).

        At most 15 minutes count: a longer ``Retry-After`` is a broken server (and a
        non-finite one is ignored rather than freezing the limiter).
        """
        if seconds > 0 and math.isfinite(seconds):
            until = self._clock.now() + clamp_server_wait(seconds)
            if until > self._paused_until:
                self._paused_until = until
                self._wake()

    async def observe(self, info: RateLimitInfo) -> None:
        """Follow the server's ``Ratelimit`` header: hold at ``r=0``, pace when ``r`` is low.

        ``info.reset`` counts from now, and for at most 15 minutes. Within one window
        the estimate only goes down, because answers to concurrent requests arrive in
        any order; a later reset starts a new window, and an answer from an earlier
        window is ignored.
        """
        if info.quota:
            self._server_quota = info.quota
        remaining, reset = info.remaining, info.reset
        if remaining is None or reset is None or math.isnan(reset):
            return
        now = self._clock.now()
        reset_at = now + clamp_server_wait(reset)
        left = self._server_left
        if left is not None and now < self._server_reset_at:
            if reset_at < self._server_reset_at - _SAME_WINDOW_SLACK:
                # Sent before the current window began, answered after: stale.
                return
            if reset_at <= self._server_reset_at + _SAME_WINDOW_SLACK:
                self._server_left = min(left, remaining)
                self._server_reset_at = max(self._server_reset_at, reset_at)
                self._wake()
                return
        self._server_left = remaining
        self._server_reset_at = reset_at
        self._wake()
