"""Envelopes and plausible instance results, shaped like the live API's answers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import msgspec

__all__ = ["API_PREFIX", "envelope", "envelope_error", "make_instance"]

#: The path every Cloudflare API URL starts with; the fake API serves under it too.
API_PREFIX: Final = "/client/v4"


def envelope(
    result: Any = None,
    *,
    errors: Sequence[tuple[int, str]] = (),
    result_info: Mapping[str, Any] | None = None,
) -> bytes:
    """A Cloudflare answer envelope as bytes; ``success`` is true when there are no errors.

    ``errors`` are ``(code, message)`` pairs; ``result_info`` is added when given (the
    listing's paging block).
    """
    doc: dict[str, Any] = {
        "errors": [{"code": code, "message": message} for code, message in errors],
        "messages": [],
        "success": not errors,
        "result": result,
    }
    if result_info is not None:
        doc["result_info"] = dict(result_info)
    return msgspec.json.encode(doc)


def envelope_error(code: int, message: str) -> bytes:
    """A Cloudflare error envelope with one error, as bytes."""
    return envelope(errors=[(code, message)])


def make_instance(
    status: str = "complete",
    *,
    steps: int = 3,
    version_id: str = "0b7d4c2e-3f1a-4e5b-9c8d-7a6f5e4d3c2b",
    params: Any = None,
) -> dict[str, Any]:
    """A plausible instance ``result`` with ``steps`` completed ``step.do`` entries."""
    step_list = [
        {
            "type": "step",
            "name": f"step {i}-1",
            "start": "2026-10-30T08:00:00.500Z",
            "end": "2026-10-30T08:00:01.900Z",
            "success": True,
            "output": f'{{"n":{i}}}',
            "attempts": [
                {"start": "2026-10-30T08:00:00.500Z", "end": "2026-10-30T08:00:01.900Z",
                 "error": None, "success": True}
            ],
            "config": {"retries": {"delay": "10 seconds", "limit": 5, "backoff": "exponential"},
                       "timeout": "10 minutes"},
        }
        for i in range(steps)
    ]
    terminal = status in ("complete", "errored", "terminated")
    return {
        "status": status,
        "queued": "2026-10-30T08:00:00.120Z",
        "start": "2026-10-30T08:00:00.480Z",
        "end": "2026-10-30T08:04:10.004Z" if terminal else None,
        "error": None,
        "output": "done" if status == "complete" else "",
        "params": params if params is not None else {"orderId": "o-981"},
        "step_count": steps,
        "steps": step_list,
        "success": True if status == "complete" else (False if terminal else None),
        "trigger": {"source": "api"},
        "versionId": version_id,
    }
