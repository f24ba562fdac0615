"""Soak and retry-budget tests: the SDK under sustained faults, and the load it puts on
a failing API.

The soak runs 1,000 calls by default; ``CFWF_FULL_SOAK=1`` runs the 5,000 behind the
README's figures (``CFWF_FULL_SOAK=1 python -m pytest -q -s tests/test_soak.py -k soak``
prints them). Connection leaks are read from the connector's ``_acquired`` set, as an
observation only.
"""

from __future__ import annotations

import gc
import os
import time
import warnings
from collections.abc import Callable
from typing import Any

import aiohttp
import anyio
import pytest

from cfwf_async import (
    APITimeoutError,
    InternalServerError,
    RateLimitError,
    RetryBudget,
    WorkflowsError,
    WorkflowsSession,
)
from cfwf_async.testing import FakeWorkflowsAPI, Fault, make_instance

SessionFactory = Callable[..., WorkflowsSession]

WF = "soak"


def acquired(connector: aiohttp.BaseConnector) -> int:
    """Connections the connector has handed out and not got back (an observation)."""
    return len(connector._acquired)  # type: ignore[attr-defined]


class CountingBudget(RetryBudget):
    """A RetryBudget that also counts the retries it paid for and its lowest level."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.retries = 0
        self.refused = 0
        self.lowest = self.tokens

    def try_spend(self, exc: BaseException) -> int:
        spent = super().try_spend(exc)
        if spent:
            self.retries += 1
            self.lowest = min(self.lowest, self.tokens)
        else:
            self.refused += 1
        return spent


# ---------------------------------------------------------------------------
# Soak: thousands of calls through 20% faults


SOAK_FULL = os.environ.get("CFWF_FULL_SOAK") == "1"
SOAK_CALLS = 5000 if SOAK_FULL else 1000
SOAK_CONCURRENCY = 100
SOAK_INSTANCES = 250
# Long enough that a busy 2-core machine does not turn slow answers into timeouts (that
# would drain the retry budget), short enough that the delay faults below do time out.
SOAK_TIMEOUT = 0.5
# Retry-After: 0 asks for an immediate retry; the delay outlasts the client's timeout.
SOAK_MIX = (
    Fault.http(500),
    Fault.edge_page(502),
    Fault.http(503),
    Fault.rate_limit(0),
    Fault.reset(),
    Fault.delay(2.0),
)


@pytest.mark.anyio
async def test_soak_every_call_returns_its_instance_and_nothing_leaks(
    fake_api: FakeWorkflowsAPI, make_session: SessionFactory
) -> None:
    api = fake_api
    for n in range(SOAK_INSTANCES):
        api.add_instance(WF, f"inst-{n}", make_instance(steps=2, params={"n": n}))
    api.fault_rate(0.2, SOAK_MIX, seed=3)
    budget = CountingBudget()  # the default sizes: transient faults must not drain it
    wrong: list[int] = []
    failed: list[BaseException] = []

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        connector = aiohttp.TCPConnector(limit=SOAK_CONCURRENCY)
        started = time.monotonic()
        async with aiohttp.ClientSession(connector=connector) as http:
            session = make_session(
                http_session=http, timeout=SOAK_TIMEOUT, max_retries=5, retry_budget=budget
            )
            calls = iter(range(SOAK_CALLS))

            async def worker() -> None:
                for i in calls:
                    n = i % SOAK_INSTANCES
                    try:
                        inst = await session.get_instance(WF, f"inst-{n}")
                    except WorkflowsError as exc:
                        failed.append(exc)
                        continue
                    if inst.params != {"n": n}:
                        wrong.append(i)

            async with anyio.create_task_group() as tg:
                for _ in range(SOAK_CONCURRENCY):
                    tg.start_soon(worker)
            await session.aclose()
            held = acquired(connector)
        elapsed = time.monotonic() - started
        gc.collect()

    resource_warnings = [w for w in caught if issubclass(w.category, ResourceWarning)]
    requests = len(api.requests)
    faults = sum(api.injected.values())
    attempts = SOAK_CALLS + budget.retries
    print(
        f"\nsoak: {SOAK_CALLS} calls, concurrency {SOAK_CONCURRENCY}, {elapsed:.1f} s; "
        f"server saw {requests} requests ({requests / SOAK_CALLS:.3f} per call), "
        f"{faults} faults ({faults / requests:.1%}): {dict(sorted(api.injected.items()))}; "
        f"SDK attempts {attempts} ({attempts / SOAK_CALLS:.3f} per call); "
        f"budget lowest {budget.lowest}/{budget.capacity}, refused {budget.refused}; "
        f"failed {len(failed)}, wrong {len(wrong)}, connections held {held}, "
        f"ResourceWarnings {len(resource_warnings)}"
    )
    assert failed == []
    assert wrong == []
    assert held == 0
    assert resource_warnings == []
    assert budget.refused == 0
    # Every kind of fault in the mix really happened, at about the rate asked for.
    assert set(api.injected) == {f.label for f in SOAK_MIX}
    assert 0.15 < faults / requests < 0.25
    assert attempts > SOAK_CALLS


# ---------------------------------------------------------------------------
# The retry budget bounds the load on a failing API


@pytest.mark.anyio
async def test_retry_budget_bounds_requests_when_everything_fails(
    fake_api: FakeWorkflowsAPI, make_session: SessionFactory
) -> None:
    calls, capacity, cost = 200, 50, 5
    api = fake_api
    api.add_instance(WF, "i", make_instance())
    api.fault_rate(1.0, [Fault.http(503)])
    budget = RetryBudget(capacity, retry_cost=cost)
    outcomes: list[BaseException] = []
    # Concurrent identical calls, each of which must spend its own attempts.
    async with make_session(max_retries=5, retry_budget=budget, coalesce=False) as session:

        async def one() -> None:
            try:
                await session.get_instance(WF, "i")
            except WorkflowsError as exc:
                outcomes.append(exc)

        async with anyio.create_task_group() as tg:
            for _ in range(calls):
                tg.start_soon(one)
        # With the bucket empty, a failing call costs exactly one request.
        before = len(api.requests)
        with pytest.raises(InternalServerError):
            await session.get_instance(WF, "i")
        assert len(api.requests) == before + 1

    print(
        f"\nbudget: {calls} calls against an API failing every request, max_retries=5, "
        f"RetryBudget({capacity}, retry_cost={cost}): {len(api.requests) - 1} requests "
        f"(bound {calls + capacity // cost}, unbudgeted {calls * 6})"
    )
    # Every call failed with the server's own error, the last one it saw.
    assert len(outcomes) == calls
    assert all(type(e) is InternalServerError and e.status_code == 503 for e in outcomes)
    # The stated bound: n + capacity // retry_cost, not n * (max_retries + 1) = 1200.
    assert len(api.requests) <= calls + 1 + capacity // cost
    assert budget.tokens < cost


@pytest.mark.anyio
async def test_without_a_budget_retries_multiply_the_load(
    fake_api: FakeWorkflowsAPI, make_session: SessionFactory
) -> None:
    """The contrast: the same failing API, no budget, every call retried to the end."""
    calls = 40
    api = fake_api
    api.fault_rate(1.0, [Fault.rate_limit(0)])  # Retry-After: 0, so no backoff sleeps
    async with make_session(max_retries=5, retry_budget=None) as s:
        for _ in range(calls):
            with pytest.raises(RateLimitError):
                await s.get_instance(WF, "i")
    unbounded = len(api.requests)
    api.requests.clear()
    async with make_session(max_retries=5, retry_budget=RetryBudget(50)) as s:
        for _ in range(calls):
            with pytest.raises(RateLimitError):
                await s.get_instance(WF, "i")
    bounded = len(api.requests)
    print(f"\nno budget: {calls} calls, {unbounded} requests; RetryBudget(50): {bounded}")
    assert unbounded == calls * 6
    assert bounded <= calls + 50 // 5


def test_budget_gives_back_what_a_successful_retry_cost() -> None:
    budget = RetryBudget(20, retry_cost=5, timeout_cost=10, success_refund=1)
    error = InternalServerError("x", status_code=503)
    timeout = APITimeoutError("slow")
    assert budget.try_spend(error) == 5
    budget.refund(5)  # that retry succeeded: the transient fault cost nothing
    assert budget.tokens == 20
    assert budget.try_spend(timeout) == 10
    assert budget.try_spend(error) == 5
    assert budget.try_spend(error) == 5
    assert budget.try_spend(error) == 0  # empty: nothing taken
    assert budget.tokens == 0
    budget.refund()  # a first-attempt success
    assert budget.tokens == 1
    budget.refund(10_000)
    assert budget.tokens == 20  # never above capacity


@pytest.mark.parametrize(
    "kwargs",
    [{"capacity": -1}, {"retry_cost": 0}, {"timeout_cost": 0}, {"success_refund": -1},
     {"capacity": 1.5}, {"retry_cost": True}],
)
def test_budget_refuses_bad_sizes(kwargs: dict[str, Any]) -> None:
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        RetryBudget(**kwargs)
