"""InstanceListing: the async iterator behind ``WorkflowsSession.list_instances``."""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Self

from . import _protocol as proto
from .models import InstanceSummary

__all__ = ["InstanceListing"]

PageFetcher = Callable[[Mapping[str, str]], Awaitable[proto.InstancePage]]


class InstanceListing:
    """A workflow's instances, page by page, as :class:`InstanceSummary` items.

    Made by :meth:`WorkflowsSession.list_instances`; iterate it with ``async for``, no
    ``await`` first::

        async for summary in session.list_instances("checkout", status="errored"):
            print(summary.id, summary.created_on)

    A page is requested only when the items of the one before are used up, so a loop
    that stops after five items has sent one request. Every page is read whole before
    its items are handed out, so between pages the listing holds no connection: leaving
    the loop early (``break``, an exception, cancellation) leaks nothing, and
    :meth:`aclose` (or ``async with``) only marks the listing finished.

    The listing ends after a page without a cursor or without items. A cursor it has
    already sent raises :class:`~cfwf_async.APIResponseValidationError` instead of
    looping. A page that fails after the session's retries raises; items handed out
    before stay handed out, and the listing is finished.
    """

    __slots__ = ("_buffer", "_busy", "_done", "_fetch", "_query", "_sent", "pages")

    def __init__(self, fetch: PageFetcher, query: Mapping[str, str]) -> None:
        self._fetch = fetch
        self._query: dict[str, str] = dict(query)
        self._buffer: deque[InstanceSummary] = deque()
        self._sent: set[str] = set()
        self._done = False
        self._busy = False
        #: Pages received so far (a page retried by the session counts once).
        self.pages = 0

    def __repr__(self) -> str:
        state = "finished" if self._done else "open"
        return f"<InstanceListing {state} pages={self.pages} buffered={len(self._buffer)}>"

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> InstanceSummary:
        """The next summary, requesting the next page when the current one is used up."""
        while not self._buffer:
            if self._done:
                raise StopAsyncIteration
            await self._next_page()
        return self._buffer.popleft()

    async def _next_page(self) -> None:
        if self._busy:
            raise RuntimeError("this InstanceListing is already fetching a page in another task")
        self._busy = True
        try:
            page = await self._fetch(self._query)
            self.pages += 1
            cursor = proto.next_cursor(page, self._sent)
        except BaseException:
            # An error (or cancellation) ends the listing, like an async generator.
            self._done = True
            raise
        finally:
            self._busy = False
        if self._done:  # closed by another task while the page was in flight
            return
        self._buffer.extend(page.items)
        if cursor is None:
            self._done = True
        else:
            self._sent.add(cursor)
            self._query["cursor"] = cursor

    async def aclose(self) -> None:
        """Finish the listing: no further page is requested; buffered items are dropped."""
        self._done = True
        self._buffer.clear()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
