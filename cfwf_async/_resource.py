"""AsyncResource: ``async with`` support written once, for everything that holds I/O."""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType
from typing import Self

__all__ = ["AsyncResource"]


class AsyncResource(ABC):
    """Something that holds a connection, a task or a socket until :meth:`aclose`.

    ``async with`` enters as the object itself and always ends in :meth:`aclose`,
    however the block is left (an exception or a cancellation included). Subclasses
    that need work on entry override :meth:`__aenter__` and call ``super()``.
    """

    __slots__ = ()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @abstractmethod
    async def aclose(self) -> None:
        """Release what the object holds; calling it again does nothing."""
