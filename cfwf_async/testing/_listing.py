"""The listing simulation: filters, ``direction`` and opaque cursors over pages."""

from __future__ import annotations

import base64
import uuid
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from ..models import INSTANCE_STATUSES

__all__ = ["ListingQuery", "listing_page", "summarise"]

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_LIST_FILTERS: Final = ("status", "date_start", "date_end", "direction")


def _parse_time(value: object) -> datetime | None:
    """An ISO 8601 date-time (naive ones taken as UTC), or None if it is not one."""
    if not isinstance(value, str) or not value:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def summarise(workflow_name: str, instance_id: str, result: Mapping[str, Any]) -> dict[str, Any]:
    """The listing entry of a registered instance, shaped like the live API's.

    ``ended_on`` is an empty string while the instance runs, as the API sends it.
    """
    trigger = result.get("trigger")
    source = trigger.get("source") if isinstance(trigger, Mapping) else None
    entry: dict[str, Any] = {
        "id": instance_id,
        "status": result.get("status"),
        "created_on": result.get("queued"),
        "started_on": result.get("start"),
        "ended_on": result.get("end") or "",
        "modified_on": result.get("end") or result.get("start") or result.get("queued"),
        "version_id": result.get("versionId"),
        "workflow_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"workflow:{workflow_name}")),
    }
    if source is not None:
        entry["trigger_source"] = source
    return entry


@dataclass(frozen=True)
class ListingQuery:
    """A listing request's query, checked the way the API checks it."""

    status: str | None
    start: datetime | None
    end: datetime | None
    direction: str
    per_page: int
    offset: int
    fingerprint: str

    @classmethod
    def parse(cls, q: Mapping[str, str], default_per_page: int) -> ListingQuery:
        """Raise ValueError (a 400 answer) for anything the API would refuse."""
        status = q.get("status")
        if status is not None and status not in INSTANCE_STATUSES:
            raise ValueError(f"status: unknown value {status!r}")
        direction = q.get("direction", "asc")
        if direction not in ("asc", "desc"):
            raise ValueError("direction: must be asc or desc")
        raw_per_page = q.get("per_page", str(default_per_page))
        if not raw_per_page.isdigit() or int(raw_per_page) < 1:
            raise ValueError("per_page: must be an integer >= 1")
        times: list[datetime | None] = []
        for name in ("date_start", "date_end"):
            raw = q.get(name)
            when = _parse_time(raw)
            if raw is not None and when is None:
                raise ValueError(f"{name}: not an ISO 8601 date-time")
            times.append(when)
        if "cursor" in q and "page" in q:
            raise ValueError("cursor and page are mutually exclusive")
        filters = "\x00".join(q.get(k, "") for k in _LIST_FILTERS)
        fingerprint = format(zlib.crc32(filters.encode()), "08x")
        offset = 0
        if "cursor" in q:
            offset = _cursor_offset(q["cursor"], fingerprint)
        return cls(status, times[0], times[1], direction, int(raw_per_page), offset, fingerprint)

    def keeps(self, entry: Mapping[str, Any]) -> bool:
        """Whether ``entry`` passes the status and ``created_on`` window filters."""
        if self.status is not None and entry.get("status") != self.status:
            return False
        if self.start is None and self.end is None:
            return True
        created = _parse_time(entry.get("created_on"))
        if created is None:
            return False
        return (self.start is None or created >= self.start) and (
            self.end is None or created <= self.end
        )

    def cursor(self, offset: int) -> str:
        """The opaque cursor of the page starting at ``offset`` under these filters."""
        raw = f"{offset}.{self.fingerprint}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _cursor_offset(cursor: str, fingerprint: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        offset_text, _, made_for = raw.partition(".")
        offset = int(offset_text)
    except ValueError:  # binascii.Error and UnicodeDecodeError included
        raise ValueError("cursor: invalid") from None
    if made_for != fingerprint:
        raise ValueError("cursor: issued for other filters")
    if offset < 0:
        raise ValueError("cursor: invalid")
    return offset


def listing_page(
    entries: Iterable[dict[str, Any]], query: Mapping[str, str], default_per_page: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One page of a workflow's listing entries and its ``result_info``.

    ``entries`` come in registration order; the listing orders them by ``created_on``
    (registration breaks ties). A cursor encodes the offset of the next page and a
    fingerprint of the filters, so a cursor sent with other filters is refused
    (ValueError, a 400 answer), like a real opaque token.
    """
    listing = ListingQuery.parse(query, default_per_page)
    ordered = sorted(entries, key=lambda e: _parse_time(e.get("created_on")) or _EPOCH)
    kept = [e for e in ordered if listing.keeps(e)]
    if listing.direction == "desc":
        kept.reverse()
    page = kept[listing.offset : listing.offset + listing.per_page]
    after = listing.offset + len(page)
    info: dict[str, Any] = {
        "count": len(page),
        "per_page": listing.per_page,
        "total_count": len(kept),
    }
    if page and after < len(kept):
        info["cursor"] = listing.cursor(after)
    return page, info
