"""The request loop behind every session call, and where a session's credentials come from.

:class:`Caller` runs one API call, a read or a write: the session's limiter (its
:class:`~_transport.Gate`), an attempt, classification, and retries per the session's
:class:`RetryPolicy` and :class:`RetryBudget`. A write adds an :class:`Outcome`, which
reads each failure first (applied or not, settled or not). The session owns every object
the caller uses and hands them over.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Final, Protocol, TypeVar

import aiohttp
import anyio
from yarl import URL

from . import _protocol as proto
from . import _transport as transport
from . import errors
from ._retry import RetryBudget, RetryPolicy, clamp_server_wait

__all__ = ["Caller", "Outcome", "env_credentials"]

logger = logging.getLogger("cfwf_async")

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


def env_credentials(
    api_token: str | None, api_email: str | None, api_key: str | None
) -> tuple[str | None, str | None, str | None]:
    """The credentials given, or else those of the environment (a token first)."""
    if api_token is None and api_email is None and api_key is None:
        env = os.environ
        api_token = env.get("CLOUDFLARE_API_TOKEN") or None
        if api_token is None:
            api_email = env.get("CLOUDFLARE_EMAIL") or None
            api_key = env.get("CLOUDFLARE_API_KEY") or None
    return api_token, api_email, api_key


class Outcome(Protocol[T_co]):
    """How a call that may change something (a write) reads its failed attempts."""

    async def after(self, failure: errors.WorkflowsError) -> tuple[T_co] | None:
        """``(value,)`` settles the call with ``value``; None leaves the retry to the
        session's policy; raising ends the call."""
        ...

    def give_up(self, failure: errors.WorkflowsError) -> errors.WorkflowsError:
        """What the call raises when no retry is left after ``failure``."""
        ...


class Caller:
    """Sends one call with its session's limiter, retries and retry budget."""

    __slots__ = ("_budget", "_client", "_closed", "_gate", "_policy", "_sender", "_timeout",
                 "base_url")

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float,
        policy: RetryPolicy,
        budget: RetryBudget | None,
        gate: transport.Gate,
        sender: transport.Sender,
        client: Callable[[], aiohttp.ClientSession],
        closed: Callable[[], bool],
    ) -> None:
        self.base_url: Final = base_url
        self._timeout: Final = timeout
        self._policy: Final = policy
        self._budget: Final = budget
        self._gate: Final = gate
        self._sender: Final = sender
        self._client: Final = client
        self._closed: Final = closed

    async def call(
        self,
        path: str,
        query: Mapping[str, str],
        decode: transport.Decode[T],
        on_stream: Callable[[aiohttp.ClientResponse, str | None], T] | None = None,
        *,
        method: str = "GET",
        body: bytes | None = None,
        outcome: Outcome[T] | None = None,
    ) -> T:
        """One API call: limiter, attempt, classify, and retries per the policy.

        ``outcome`` first judges each failed attempt of a call that may change something
        (see :class:`Outcome`); without one, the retry policy alone decides.
        """
        http = self._client()
        target = self.base_url + path
        if query:
            target += "?" + proto.query_string(query)
        request = transport.Request(
            path, URL(target, encoded=True), decode, on_stream,
            timeout=self._timeout, closed=self._closed, method=method, body=body,
        )
        attempt = 0
        spent = 0  # what the latest retry took from the budget
        while True:
            if self._closed():  # closed while this call waited: never retried
                raise errors.APIConnectionError(f"{method} {path}: the session was closed")
            # Idle fast path: with no limiter and no 429 pause in force there is nothing
            # to wait for, so skip the coroutine round trips.
            if not self._gate.idle:
                await self._gate.wait_turn()
            attempt += 1
            try:
                result = await self._sender.attempt(http, request, attempt)
            except errors.WorkflowsError as exc:
                failure = exc
            else:
                if self._budget is not None:
                    self._budget.refund(spent)
                return result
            if outcome is not None:
                settled = await outcome.after(failure)
                if settled is not None:
                    return settled[0]
            delay = self.retry_delay(attempt, failure, path, method=method)
            if delay is None:
                raise failure if outcome is None else outcome.give_up(failure)
            spent = delay[1]
            await anyio.sleep(delay[0])

    def retry_delay(
        self, retry: int, exc: errors.WorkflowsError, path: str, *, method: str = "GET"
    ) -> tuple[float, int] | None:
        """The wait before retry ``retry`` (at most MAX_SERVER_WAIT) and its cost, or None."""
        delay = self._policy.delay(retry, exc)
        if delay is None or self._closed():
            return None
        delay = clamp_server_wait(delay)
        spent = 0
        if self._budget is not None:
            spent = self._budget.try_spend(exc)
            if not spent:
                if logger.isEnabledFor(logging.DEBUG):
                    logger.debug("%s %s not retried: the retry budget is empty", method, path)
                return None
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "%s %s retrying in %.3f s after %s", method, path, delay, type(exc).__name__
            )
        return delay, spent
