"""A fake Cloudflare Workflows API for tests: a real ``aiohttp.web`` server on loopback.

Register instances and step outputs, start the server, point a session at it::

    from cfwf_async.testing import FakeWorkflowsAPI

    api = FakeWorkflowsAPI()
    api.add_instance("checkout", "order-1", {"status": "complete", "steps": []})
    api.add_step_output("checkout", "order-1", "charge-1", {"ok": True})
    async with api, api.session() as session:
        inst = await session.get_instance("checkout", "order-1")
    assert api.requests[0].path.endswith("/instances/order-1")

The server checks credentials like Cloudflare does (401 with an error envelope), answers
404 for anything not registered, gives every answer a ``cf-ray`` header, and records each
request in :attr:`FakeWorkflowsAPI.requests`.

Faults, for testing retry and error handling: :meth:`FakeWorkflowsAPI.inject` scripts a
:class:`Fault` for the next requests, :meth:`FakeWorkflowsAPI.fault_rate` injects faults
at a seeded random rate, and :attr:`FakeWorkflowsAPI.injected` counts what was injected::

    from cfwf_async.testing import Fault

    api.inject(Fault.http(503), times=2)            # two 503 envelopes, then the real answer
    api.inject(Fault.reset())                       # connection reset before any answer
    api.inject(Fault.drop_answer())                 # the write is applied, the answer lost
    api.fault_rate(0.2, [Fault.http(500), Fault.edge_page(502),
                         Fault.rate_limit(0), Fault.reset()], seed=7)

Each constructor returns a typed fault (:class:`Answer`, :class:`Reset`,
:class:`Delay`, :class:`DropAnswer`, :class:`Truncate`, :class:`BadChunking`, :class:`Trickle`,
:class:`Stall`), all of them :class:`Fault` values.

With pytest, the ``cfwf_async`` plugin (installed with the package) gives the
``workflows_api`` and ``workflows_session`` fixtures; see
:mod:`cfwf_async.testing.pytest_plugin`.
"""

from ._api import FakeWorkflowsAPI, RecordedRequest
from ._bodies import ChunkSource, StreamBody
from ._builders import API_PREFIX, envelope, envelope_error, make_instance
from ._faults import (
    EDGE_STATUSES,
    Answer,
    BadChunking,
    BodyFault,
    Delay,
    DropAnswer,
    Fault,
    Reset,
    Stall,
    Trickle,
    Truncate,
)

__all__ = [
    "API_PREFIX",
    "EDGE_STATUSES",
    "Answer",
    "BadChunking",
    "BodyFault",
    "ChunkSource",
    "Delay",
    "DropAnswer",
    "FakeWorkflowsAPI",
    "Fault",
    "RecordedRequest",
    "Reset",
    "Stall",
    "StreamBody",
    "Trickle",
    "Truncate",
    "envelope",
    "envelope_error",
    "make_instance",
]
