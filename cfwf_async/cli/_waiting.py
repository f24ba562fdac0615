"""A status line on stderr while a call takes long, so a slow server is never silent.

After ``Console.wait_delay`` seconds (about one) without an answer, a terminal shows
``waiting for api.cloudflare.com (GET instance order-1)… 3 s``, updated each second and
erased when the call ends. Nothing is written when stderr is not a terminal.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import anyio

from ._console import Console, is_tty

__all__ = ["waiting"]

_ERASE = "\r\x1b[2K"


@asynccontextmanager
async def waiting(console: Console, base_url: str, what: str) -> AsyncIterator[None]:
    """Show what the body waits for, on a terminal, once it takes ``wait_delay`` s."""
    if not is_tty(console.stderr):
        yield
        return
    host = urlsplit(base_url).netloc or base_url
    label = f"waiting for {host} ({what}){console.glyphs.ellipsis}"
    shown = False

    async def tick() -> None:
        nonlocal shown
        start = anyio.current_time()
        await anyio.sleep(console.wait_delay)
        while True:
            seconds = int(anyio.current_time() - start)
            console.stderr.write(_ERASE + console.paint(f"{label} {seconds} s", "dim",
                                                        err=True))
            console.stderr.flush()
            shown = True
            await anyio.sleep(1.0)

    async with anyio.create_task_group() as tg:
        tg.start_soon(tick)
        try:
            yield
        finally:
            tg.cancel_scope.cancel()
            if shown:
                console.stderr.write(_ERASE)
                console.stderr.flush()
