"""InstanceListing: the async iterator behind ``WorkflowsSession.list_instances``."""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Self

from . import _protocol as proto
from ._resource import AsyncResource
from .errors import APIResponseValidationError
from .models import InstanceSummary

__all__ = ["InstanceListing"]

PageFetcher = Callable[[Mapping[str, str]], Awaitable[proto.InstancePage]]


class InstanceListing(AsyncResource):
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

    The listing ends after a page without a cursor or without items. It never hands
    out one id twice: an instance a page repeats (the listing shifted while it was
    read) is skipped. A server that loops instead of advancing raises
    :class:`~cfwf_async.APIResponseValidationError` rather than paging forever: a
    cursor the listing has already sent, or a page that brings no instance not
    handed out before. To know what it handed out, the listing remembers every id
    (one set entry per instance, about 100 bytes for the API's 36-character ids, so
    some 100 MB for a million instances) until it is dropped. A page that fails after
    the session's retries raises; items handed out before stay handed out, and the
    listing is finished.
    """

    __slots__ = ("_buffer", "_busy", "_done", "_fetch", "_query", "_seen", "_sent", "pages")

    def __init__(self, fetch: PageFetcher, query: Mapping[str, str]) -> None:
        self._fetch = fetch
        self._query: dict[str, str] = dict(query)
        self._buffer: deque[InstanceSummary] = deque()
        self._sent: set[str] = set()
        self._seen: set[str] = set()
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
            if not self._done:  # else closed by another task while the page was in flight
                self._take(page)
        except BaseException:
            # An error (or cancellation) ends the listing, like an async generator.
            self._done = True
            raise
        finally:
            self._busy = False

    def _take(self, page: proto.InstancePage) -> None:
        cursor = proto.next_cursor(page, self._sent)
        fresh: list[InstanceSummary] = []
        for summary in page.items:
            # Noted as it goes, so an id repeated within one page is handed out once.
            if summary.id not in self._seen:
                self._seen.add(summary.id)
                fresh.append(summary)
        if page.items and not fresh:
            raise APIResponseValidationError(
                f"instance listing: page {self.pages} brought only instances already handed "
                "out; the server repeated itself and the cursor did not advance, so the "
                "listing stops instead of reading the same items forever",
                status_code=page.status,
                cf_ray=page.cf_ray,
            )
        self._buffer.extend(fresh)
        if cursor is None:
            self._done = True
        else:
            self._sent.add(cursor)
            self._query["cursor"] = cursor

    async def aclose(self) -> None:
        """Finish the listing: no further page is requested; buffered items are dropped."""
        self._done = True
        self._buffer.clear()
