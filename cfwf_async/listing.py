"""The async iterators behind ``list_instances``, ``list_workflows`` and ``list_versions``.

:class:`Listing` is the one paging loop; :class:`InstanceListing` follows the API's
cursor, :class:`PageListing` its page numbers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Generic, Self, TypeVar

from . import _protocol as proto
from . import _wire as wire
from ._resource import AsyncResource
from .errors import APIResponseValidationError
from .models import InstanceSummary, Workflow, WorkflowVersion

__all__ = ["InstanceListing", "Listing", "PageListing"]

T = TypeVar("T")
P = TypeVar("P")
PageFetcher = Callable[[Mapping[str, str]], Awaitable[proto.InstancePage]]


class Listing(AsyncResource, Generic[P, T]):
    """A listing read page by page; ``async for`` hands out its items.

    A page is requested only when the items of the one before are used up, so a loop
    that stops after five items has sent one request. Every page is read whole before
    its items are handed out, so between pages the listing holds no connection: leaving
    the loop early (``break``, an exception, cancellation) leaks nothing, and
    :meth:`aclose` (or ``async with``) only marks the listing finished.

    It never hands out one item twice: an item a page repeats (the listing shifted
    while it was read) is skipped. A server that loops instead of advancing raises
    :class:`~cfwf_async.APIResponseValidationError` rather than paging forever: a page
    that brings nothing not handed out before ends it. To know what it handed out, the
    listing remembers every key (an id or a name) until it is dropped. A page that fails
    after the session's retries raises; items handed out before stay handed out, and
    the listing is finished.
    """

    __slots__ = ("_buffer", "_busy", "_done", "_fetch", "_query", "_seen", "pages")
    #: How errors name the listing, and what it lists.
    _what = "listing"
    _noun = "items"

    def __init__(self, fetch: Callable[[Mapping[str, str]], Awaitable[P]],
                 query: Mapping[str, str]) -> None:
        self._fetch = fetch
        self._query: dict[str, str] = dict(query)
        self._buffer: deque[T] = deque()
        self._seen: set[str] = set()
        self._done = False
        self._busy = False
        #: Pages received so far (a page retried by the session counts once).
        self.pages = 0

    def __repr__(self) -> str:
        state = "finished" if self._done else "open"
        return f"<{type(self).__name__} {state} pages={self.pages} buffered={len(self._buffer)}>"

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T:
        """The next item, requesting the next page when the current one is used up."""
        while not self._buffer:
            if self._done:
                raise StopAsyncIteration
            await self._next_page()
        return self._buffer.popleft()

    async def _next_page(self) -> None:
        if self._busy:
            raise RuntimeError(
                f"this {type(self).__name__} is already fetching a page in another task"
            )
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

    # What a subclass says about its pages.
    def _advance(self, page: P) -> dict[str, str] | None:
        """The query changes that request the page after ``page``; None: it was the last.

        Called before the page's items are taken; may raise for a looping server.
        """
        raise NotImplementedError

    def _items(self, page: P) -> list[T]:
        raise NotImplementedError

    def _key(self, item: T) -> str:
        raise NotImplementedError

    def _where(self, page: P) -> tuple[int, str | None]:
        """The page's HTTP status and cf-ray, for errors."""
        raise NotImplementedError

    def _take(self, page: P) -> None:
        step = self._advance(page)
        items = self._items(page)
        fresh: list[T] = []
        for item in items:
            # Noted as it goes, so an item repeated within one page is handed out once.
            key = self._key(item)
            if key not in self._seen:
                self._seen.add(key)
                fresh.append(item)
        if items and not fresh:
            status, ray = self._where(page)
            raise APIResponseValidationError(
                f"{self._what}: page {self.pages} brought only {self._noun} already handed "
                "out; the server repeated itself and the cursor did not advance, so the "
                "listing stops instead of reading the same items forever",
                status_code=status,
                cf_ray=ray,
            )
        self._buffer.extend(fresh)
        if step is None:
            self._done = True
        else:
            self._query.update(step)

    async def aclose(self) -> None:
        """Finish the listing: no further page is requested; buffered items are dropped."""
        self._done = True
        self._buffer.clear()


class InstanceListing(Listing[proto.InstancePage, InstanceSummary]):
    """A workflow's instances, page by page, as :class:`InstanceSummary` items.

    Made by :meth:`WorkflowsSession.list_instances`; iterate it with ``async for``, no
    ``await`` first::

        async for summary in session.list_instances("checkout", status="errored"):
            print(summary.id, summary.created_on)

    The paging rules of :class:`Listing` hold. The listing ends after a page without a
    cursor or without items. A cursor the listing has already sent raises
    :class:`~cfwf_async.APIResponseValidationError`, as does a page that brings no
    instance not handed out before. Remembering the ids costs about 100 bytes per
    instance for the API's 36-character ids, so some 100 MB for a million instances.
    """

    __slots__ = ("_sent",)
    _what = "instance listing"
    _noun = "instances"

    def __init__(self, fetch: PageFetcher, query: Mapping[str, str]) -> None:
        super().__init__(fetch, query)
        self._sent: set[str] = set()

    def _advance(self, page: proto.InstancePage) -> dict[str, str] | None:
        cursor = proto.next_cursor(page, self._sent)
        if cursor is None:
            return None
        self._sent.add(cursor)
        return {"cursor": cursor}

    def _items(self, page: proto.InstancePage) -> list[InstanceSummary]:
        return page.items

    def _key(self, item: InstanceSummary) -> str:
        return item.id

    def _where(self, page: proto.InstancePage) -> tuple[int, str | None]:
        return page.status, page.cf_ray


class PageListing(Listing["wire.NumberedPage[T]", T]):
    """Workflows or versions, page by page by page number (``page=1, 2, ...``).

    Made by :meth:`WorkflowsSession.list_workflows` and
    :meth:`WorkflowsSession.list_versions`; iterate it with ``async for``. The paging
    rules of :class:`Listing` hold. The listing ends after a page without items, a
    page shorter than the page size asked for, or the page the answer's
    ``result_info.total_pages`` names as the last; a page that brings nothing not
    handed out before raises :class:`~cfwf_async.APIResponseValidationError`.
    """

    __slots__ = ("_key_of", "_noun", "_what")

    def __init__(
        self,
        fetch: Callable[[Mapping[str, str]], Awaitable[wire.NumberedPage[T]]],
        per_page: int,
        key: Callable[[T], str],
        what: str,
    ) -> None:
        super().__init__(fetch, {"page": "1", "per_page": str(per_page)})
        self._key_of = key
        self._what = what
        self._noun = "entries"

    def _advance(self, page: wire.NumberedPage[T]) -> dict[str, str] | None:
        number = int(self._query["page"])
        last = page.total_pages is not None and number >= page.total_pages
        if not page.items or last or len(page.items) < int(self._query["per_page"]):
            return None
        return {"page": str(number + 1)}

    def _items(self, page: wire.NumberedPage[T]) -> list[T]:
        return page.items

    def _key(self, item: T) -> str:
        return self._key_of(item)

    def _where(self, page: wire.NumberedPage[T]) -> tuple[int, str | None]:
        return page.status, page.cf_ray


def workflow_key(item: Workflow) -> str:
    return item.name


def version_key(item: WorkflowVersion) -> str:
    return item.id


