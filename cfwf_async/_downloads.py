"""Part of the aiohttp/asyncio seam (:mod:`cfwf_async._transport` re-exports it): two
workarounds for how the transport behaves under a long download.
"""

from __future__ import annotations

import asyncio
from typing import Final

import aiohttp

__all__ = ["READ_SIZE", "Watchdog", "restore_reads", "shrink_reads"]

# How often a stream that is being read checks that its connection is still open.
_CLOSED_CHECK: Final = 0.25

#: How many bytes asyncio's plain-socket transport asks recv() for while a stream is
#: read, and the most a compressed stream inflates per chunk. asyncio's default,
#: 256 KiB, is a fresh bytes object per read, just over glibc's threshold for giving
#: freed memory back to the kernel: a process can fall into a mode where every read
#: maps new pages and faults on each of them (about 190,000 page faults and 3x the CPU
#: per GiB, measured on loopback). 128 KiB reads stay in reused heap memory.
READ_SIZE: Final = 128 * 1024


class Watchdog:
    """Fails a stream whose connection closed under a read that aiohttp left waiting.

    aiohttp's C parser, on a corrupt chunk header that arrives after the headers, closes
    the connection without failing the body or keeping the read timeout (aiohttp 3.14),
    so a plain ``readany()`` would wait forever. One timer per stream, re-armed every
    0.25 s while the body is incomplete, costs nothing per chunk (a 1 GiB body is about
    8,000 chunks). It holds the response, never the StepStream, so a dropped stream is
    still collected and closed by ``StepStream.__del__``.
    """

    __slots__ = ("_handle", "_loop", "_response")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self._loop = asyncio.get_running_loop()
        self._handle: asyncio.TimerHandle | None = self._loop.call_later(
            _CLOSED_CHECK, self._check
        )

    def _check(self) -> None:
        self._handle = None
        response = self._response
        content = response.content
        if response.closed or content.is_eof() or content.exception() is not None:
            return
        connection = response.connection
        if connection is None or connection.closed:
            content.set_exception(
                aiohttp.ClientPayloadError("the connection closed before the body was complete")
            )
            return
        self._handle = self._loop.call_later(_CLOSED_CHECK, self._check)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def shrink_reads(response: aiohttp.ClientResponse) -> asyncio.BaseTransport | None:
    """Make a plain-socket connection read :data:`READ_SIZE` bytes at a time; return it.

    Only asyncio's own socket transport has a ``max_size`` (a class attribute, which an
    instance attribute shadows); TLS and uvloop transports do not and are left alone, as
    is a transport whose default is already no larger.
    """
    connection = response.connection
    transport = connection.transport if connection is not None else None
    if transport is None:
        return None
    default = getattr(type(transport), "max_size", None)
    if not isinstance(default, int) or default <= READ_SIZE:
        return None
    try:
        transport.max_size = READ_SIZE  # type: ignore[attr-defined]
    except (AttributeError, TypeError):  # no instance __dict__: keep the default
        return None
    return transport


def restore_reads(transport: asyncio.BaseTransport) -> None:
    """Give a connection back its default read size (it may be pooled by now: the
    response hands it back when the body ends, and a smaller read harms nobody)."""
    vars(transport).pop("max_size", None)
