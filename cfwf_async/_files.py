"""Writing downloads to disk: complete files or none, never through a planted link.

Every file the package writes (a streamed output, a batch's ``stream_dir`` entry, the
CLI's ``--output``) goes through here, so the rules hold in one place:

* the bytes go to a fresh temporary file in the target's own directory, created with
  ``O_CREAT | O_EXCL | O_NOFOLLOW``: a symlink or file planted under a predictable name
  is never written through, and two downloads to one target never share a file;
* the temporary file is renamed over the target only once it is complete, and removed
  on any failure or cancellation, so nothing half-written is ever left behind;
* a target that is a directory, or whose directory does not exist, is refused by
  :func:`check_target` before any request is made.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

import anyio

__all__ = ["atomic_file", "check_target", "write_atomic"]

_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
_MODE: Final = 0o644
#: A name component may be 255 bytes on every common file system; the temporary name
#: adds a dot, a random tag and a suffix to the target's, so it is cut to fit.
_NAME_MAX: Final = 255
_TAG_BYTES: Final = 6


def check_target(name: str, path: str | os.PathLike[str]) -> Path:
    """Refuse a download target that can never be written, before any request.

    ``name`` is the argument (or option) the path came from, for the message.
    """
    target = Path(os.fspath(path))
    if target.is_dir():
        raise ValueError(f"{name}: {os.fspath(target)!r} is a directory, not a file path")
    parent = target.parent
    if not parent.is_dir():
        raise ValueError(f"{name}: the directory {os.fspath(parent)!r} does not exist")
    return target


def _temporary_name(target: Path) -> Path:
    tag = secrets.token_hex(_TAG_BYTES)
    stem = os.fsencode(target.name)
    room = _NAME_MAX - len(tag) - len(".") - len(".part") - len(".")
    stem = stem[:room].decode("utf-8", "ignore").encode() if len(stem) > room else stem
    return target.with_name(f".{os.fsdecode(stem)}.{tag}.part")


def _open_exclusive(target: Path) -> tuple[Path, int]:
    partial = _temporary_name(target)
    return partial, os.open(partial, _FLAGS, _MODE)


@asynccontextmanager
async def atomic_file(path: str | os.PathLike[str]) -> AsyncIterator[anyio.AsyncFile[bytes]]:
    """An open binary file that becomes ``path`` when the block ends without error.

    On any exception or cancellation inside the block, the temporary file is removed and
    ``path`` is left as it was.
    """
    target = Path(os.fspath(path))
    partial, fd = await anyio.to_thread.run_sync(_open_exclusive, target)
    try:
        async with anyio.wrap_file(os.fdopen(fd, "wb")) as f:
            yield f
        await anyio.Path(partial).replace(target)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await anyio.Path(partial).unlink(missing_ok=True)
        raise


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` all at once (blocking): a complete file or none."""
    target = Path(os.fspath(path))
    partial, fd = _open_exclusive(target)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
