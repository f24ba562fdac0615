"""The fault catalogue: one small frozen type per way an answer can go wrong.

:class:`Fault` is the common base; its class methods (``Fault.http(...)``,
``Fault.reset()``...) build the typed faults below, which the fake API tells apart by
type. :class:`FaultPlan` decides which request gets which fault.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from .._protocol import check_int, check_number
from ._builders import envelope

__all__ = [
    "EDGE_STATUSES",
    "Answer",
    "BadChunking",
    "BodyFault",
    "Delay",
    "DropAnswer",
    "Fault",
    "FaultPlan",
    "Reset",
    "Stall",
    "Trickle",
    "Truncate",
]

#: The statuses Cloudflare's edge answers with an HTML page rather than a JSON envelope.
EDGE_STATUSES: Final = frozenset({502, 504, *range(520, 528)})

_EDGE_PAGE: Final = """<!DOCTYPE html>
<html lang="en"><head><title>api.cloudflare.com | {status}: edge error</title></head>
<body><h1>Error code {status}</h1>
<p>The Cloudflare edge could not get a valid answer from the origin (fake page, cf-ray {{ray}}).</p>
</body></html>
"""

_THROTTLED: Final = (971, "Please wait and consider throttling your request speed")


def _check_status(status: object) -> int:
    return check_int("status", status, minimum=100, maximum=599)


def _check_keep(keep: object) -> float:
    """A share of the body in [0, 1): a whole body is no fault."""
    value = check_number("keep", keep, maximum=1.0)
    if value == 1.0:
        raise ValueError("keep must be a number in 0..1, 1 excluded, got 1.0")
    return value


def fake_error(status: int) -> bytes:
    """The error envelope an injected fault answers ``status`` with."""
    return envelope(errors=[(10000 + status, f"fake error {status}")])


def _seconds_text(value: float | str) -> str:
    if isinstance(value, str):
        return value
    return str(int(value)) if float(value).is_integer() else str(value)


@dataclass(frozen=True)
class Fault:
    """One way for an answer to go wrong; the base of the typed faults.

    Give one to :meth:`FakeWorkflowsAPI.inject` (the next requests) or
    :meth:`FakeWorkflowsAPI.fault_rate` (a random share of all requests). Every fault
    has a short :attr:`label` (``"503"``, ``"edge 502"``, ``"reset"``...) under which
    :attr:`FakeWorkflowsAPI.injected` counts it and :attr:`RecordedRequest.fault`
    names it.

    Answers instead of the real one (:class:`Answer`): :meth:`http` (any status, an
    envelope error), :meth:`rate_limit` (429 with ``Retry-After``), :meth:`edge_page`
    (Cloudflare's HTML error page), :meth:`malformed` (a body that is not the promised
    JSON). The transport failing before the answer: :meth:`reset` (:class:`Reset`,
    connection reset), :meth:`delay` (:class:`Delay`, the answer comes late). The real
    answer (or an error envelope) delivered badly (a :class:`BodyFault`):
    :meth:`truncate` (:class:`Truncate`, the body stops short of its
    ``Content-Length``), :meth:`bad_chunking` (:class:`BadChunking`), :meth:`trickle`
    (:class:`Trickle`, bytes dribble in), :meth:`stall` (:class:`Stall`, part of the
    body, then nothing).
    """

    @property
    def label(self) -> str:
        """The short name this fault is counted and recorded under."""
        raise NotImplementedError

    # -- canned answers ----------------------------------------------------------

    @classmethod
    def http(
        cls,
        status: int,
        *,
        errors: Sequence[tuple[int, str]] | None = None,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Answer:
        """Answer with ``status`` and a Cloudflare error envelope.

        ``errors`` are ``(code, message)`` pairs (default one ``fake error <status>``);
        ``body`` replaces the envelope with any bytes.
        """
        _check_status(status)
        if body is None:
            body = envelope(errors=errors) if errors else fake_error(status)
        return Answer(status, body, dict(headers or {}), content_type)

    @classmethod
    def rate_limit(cls, retry_after: float | str | None = 0) -> Answer:
        """429 with ``Retry-After: <retry_after>`` (None sends no ``Retry-After``)."""
        headers = {} if retry_after is None else {"Retry-After": _seconds_text(retry_after)}
        return Answer(429, envelope(errors=[_THROTTLED]), headers)

    @classmethod
    def edge_page(cls, status: int = 502) -> Answer:
        """Cloudflare's edge failing: an HTML error page, not JSON (502, 504, 520..527)."""
        if status not in EDGE_STATUSES:
            raise ValueError(f"status must be 502, 504 or 520..527, got {status!r}")
        body = _EDGE_PAGE.format(status=status).encode()
        return Answer(status, body, content_type="text/html", name=f"edge {status}")

    @classmethod
    def malformed(cls, status: int = 200, body: bytes | None = None) -> Answer:
        """A ``application/json`` answer whose body is not an envelope (by default not JSON)."""
        _check_status(status)
        body = b'{"success": true, "result": <oops>' if body is None else body
        return Answer(status, body, name=f"malformed {status}")

    # -- transport failures before the answer ---------------------------------------

    @classmethod
    def reset(cls) -> Reset:
        """Reset the connection (TCP RST) after reading the request, before any answer."""
        return Reset()

    @classmethod
    def drop_answer(cls) -> DropAnswer:
        """Process the request for real (a write is applied), then reset the connection
        instead of answering: the client cannot know whether it took effect."""
        return DropAnswer()

    @classmethod
    def delay(cls, seconds: float) -> Delay:
        """Hold the answer back for ``seconds`` (make it longer than the client's timeout)."""
        return Delay(seconds)

    # -- bodies delivered badly -------------------------------------------------------

    @classmethod
    def truncate(cls, keep: float = 0.5, *, status: int | None = None) -> Truncate:
        """Announce the full ``Content-Length``, send the first ``keep`` share, hang up."""
        return Truncate(keep, status)

    @classmethod
    def bad_chunking(cls, keep: float = 0.5) -> BadChunking:
        """Send the real answer chunked, with a corrupt chunk header after ``keep`` of it."""
        return BadChunking(keep)

    @classmethod
    def trickle(cls, chunk_size: int = 64, interval: float = 0.05) -> Trickle:
        """Send the real answer ``chunk_size`` bytes at a time, ``interval`` seconds apart."""
        return Trickle(chunk_size, interval)

    @classmethod
    def stall(cls, keep: float = 0.5, *, seconds: float = 30.0) -> Stall:
        """Send the first ``keep`` share of the real answer, then nothing for ``seconds``."""
        return Stall(keep, seconds)


@dataclass(frozen=True)
class Answer(Fault):
    """A canned answer instead of the real one: ``status``, ``body`` and ``headers``.

    The server adds its ``cf-ray`` (and rate-limit) headers; ``headers`` win over them.
    The label is ``name``, or the status when there is none.
    """

    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    name: str = ""

    def __post_init__(self) -> None:
        _check_status(self.status)
        object.__setattr__(self, "headers", dict(self.headers))

    @property
    def label(self) -> str:
        return self.name or str(self.status)


@dataclass(frozen=True)
class Reset(Fault):
    """Drop the connection with a TCP RST after reading the request, before any answer."""

    @property
    def label(self) -> str:
        return "reset"


@dataclass(frozen=True)
class DropAnswer(Fault):
    """Apply the request like the real API, then drop the connection with a TCP RST
    before the answer goes out (:class:`Reset` drops it without applying anything)."""

    @property
    def label(self) -> str:
        return "drop answer"


@dataclass(frozen=True)
class Delay(Fault):
    """Hold the answer back for ``seconds``; the server stops waiting once the client hangs up."""

    seconds: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "seconds", check_number("seconds", self.seconds))

    @property
    def label(self) -> str:
        return "delay"


@dataclass(frozen=True)
class BodyFault(Fault):
    """The base of the faults that spoil how a body is delivered, not what it says."""


@dataclass(frozen=True)
class Truncate(BodyFault):
    """Announce the full ``Content-Length``, send the first ``keep`` share, hang up.

    Applies to the real answer (a JSON body or a streamed output); with ``status`` the
    answer is that status's error envelope instead, cut the same way. A body of unknown
    size (chunked) breaks off after its first chunk.
    """

    keep: float = 0.5
    status: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "keep", _check_keep(self.keep))
        if self.status is not None:
            _check_status(self.status)

    @property
    def label(self) -> str:
        return "truncate" if self.status is None else f"truncate {self.status}"


@dataclass(frozen=True)
class BadChunking(BodyFault):
    """Send the real answer chunked, with a corrupt chunk header after ``keep`` of it.

    The corrupt header follows a 50 ms pause, so it reaches the client after the good
    part (a body of unknown size breaks after its first chunk).
    """

    keep: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "keep", _check_keep(self.keep))

    @property
    def label(self) -> str:
        return "bad chunking"


@dataclass(frozen=True)
class Trickle(BodyFault):
    """Send the real answer ``chunk_size`` bytes at a time, ``interval`` seconds apart."""

    chunk_size: int = 64
    interval: float = 0.05

    def __post_init__(self) -> None:
        check_int("chunk_size", self.chunk_size, minimum=1)
        object.__setattr__(self, "interval", check_number("interval", self.interval))

    @property
    def label(self) -> str:
        return "trickle"


@dataclass(frozen=True)
class Stall(BodyFault):
    """Send the first ``keep`` share of the real answer, then nothing for ``seconds``.

    The server stops waiting as soon as the client hangs up.
    """

    keep: float = 0.5
    seconds: float = 30.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "keep", _check_keep(self.keep))
        object.__setattr__(self, "seconds", check_number("seconds", self.seconds))

    @property
    def label(self) -> str:
        return "stall"


class FaultPlan:
    """Which request gets which fault: scripted ones first, then a seeded random share."""

    def __init__(self) -> None:
        self._scripted: deque[Fault] = deque()
        self._rate = 0.0
        self._mix: tuple[Fault, ...] = ()
        self._rng = random.Random(0)

    def script(self, fault: Fault, times: int) -> None:
        if not isinstance(fault, Fault):
            raise TypeError(f"fault must be a Fault, got {type(fault).__name__}")
        self._scripted.extend([fault] * check_int("times", times))

    def randomise(self, rate: float, mix: Sequence[Fault], seed: int) -> None:
        rate = check_number("rate", rate, maximum=1.0)
        mix = tuple(mix)
        if rate and not mix:
            raise ValueError("mix must name at least one Fault")
        for fault in mix:
            if not isinstance(fault, Fault):
                raise TypeError(f"mix must hold Fault values, got {type(fault).__name__}")
        self._rate, self._mix, self._rng = rate, mix, random.Random(seed)

    def clear(self) -> None:
        self._scripted.clear()
        self._rate = 0.0

    def draw(self) -> Fault | None:
        if self._scripted:
            return self._scripted.popleft()
        if self._rate and self._rng.random() < self._rate:
            return self._rng.choice(self._mix)
        return None
