"""``cfwf demo``: every ``cfwf`` command against the fake API, offline, in a few seconds.

The fake API (:mod:`cfwf_async.testing`) serves on 127.0.0.1 an order-checkout instance
that is still running: a sleep, an event wait, a step that failed twice before it
succeeded (its output redacted as sensitive), a step whose output is a 4 MiB stream, and
a step waiting to retry; and four earlier orders for ``cfwf list``. The demo runs the
real commands against it, through the real argument parser and HTTP, then lets the
instance complete while ``cfwf watch`` follows it.
"""

from __future__ import annotations

import os
import shlex
import tempfile
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import anyio
from aiohttp import web

from ..session import WorkflowsSession
from ..testing import FakeWorkflowsAPI, StreamBody
from ._console import Console
from ._format import wrapped
from ._parser import build_parser

__all__ = ["UnfoldingWorkflowsAPI", "demo_instance_states", "run_demo"]

WORKFLOW: Final = "checkout"
INSTANCE: Final = "order-7f3a9c"
STREAM_STEP: Final = "export ledger-1"
STREAM_SIZE: Final = 4 << 20


class UnfoldingWorkflowsAPI(FakeWorkflowsAPI):
    """The fake API, plus instances that move through a scripted list of states.

    Each successful read of such an instance serves its current state and then installs
    the next one, so a client polling it sees it progress one state per poll, with no
    timers involved.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._pending: dict[tuple[str, str], deque[dict[str, Any]]] = {}

    def add_instance_states(
        self, workflow_name: str, instance_id: str, states: Sequence[Mapping[str, Any]]
    ) -> None:
        """Serve ``states[0]`` now, and each next state after every read of the instance."""
        if not states:
            raise ValueError("states must not be empty")
        self.add_instance(workflow_name, instance_id, states[0])
        self._pending[(workflow_name, instance_id)] = deque(dict(s) for s in states[1:])

    def make_app(self) -> web.Application:
        """The fake API's application, advancing scripted instances after each read."""
        app = super().make_app()
        app.on_response_prepare.append(self._advance)
        return app

    async def _advance(self, request: web.Request, response: web.StreamResponse) -> None:
        # The answer's body is already encoded when this runs: swapping the state now
        # affects the next read only.
        if response.status != 200 or request.path.endswith("/step"):
            return
        workflow = request.match_info.get("workflow_name")
        instance = request.match_info.get("instance_id")
        if workflow is None or instance is None:
            return
        pending = self._pending.get((workflow, instance))
        if pending:
            self.add_instance(workflow, instance, pending.popleft())


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _csv_block() -> bytes:
    rows = [b"order_id,sku,qty,amount_cents,currency\n"]
    for i in range(2000):
        rows.append(b"o-%06d,SKU-%04d,%d,%d,EUR\n" % (i, i * 7 % 9973, i % 5 + 1, i * 37 % 100000))
    return b"".join(rows)


def ledger_body(size: int = STREAM_SIZE) -> StreamBody:
    """The demo's streamed output: ``size`` bytes of CSV, produced on the fly."""
    return StreamBody.repeat(size, chunk_size=64 * 1024, fill=_csv_block())


_DEFAULT_RETRIES: Final = {"delay": "10 seconds", "limit": 5, "backoff": "exponential"}


class _Timeline:
    """Timestamps ``seconds`` after the demo instance started, 4m30s before ``now``."""

    def __init__(self, now: datetime) -> None:
        self._base = now - timedelta(minutes=4, seconds=30)

    def at(self, seconds: float) -> str:
        return _iso(self._base + timedelta(seconds=seconds))

    def ok_step(self, name: str, start: float, end: float, output: Any,
                config: dict[str, Any]) -> dict[str, Any]:
        """A step.do that succeeded at its first attempt."""
        at = self.at
        step = {
            "type": "step", "name": name, "start": at(start), "end": at(end), "success": True,
            "attempts": [{"start": at(start), "end": at(end), "error": None, "success": True}],
            "config": config,
        }
        if output is not None:
            step["output"] = output
        return step


def _running_steps(t: _Timeline) -> list[dict[str, Any]]:
    """The step log while the instance runs: the last step waits to retry."""
    at = t.at
    gateway = {"name": "Error", "message": "payment gateway timed out (HTTP 504)"}
    smtp = {"name": "Error", "message": "SMTP 451 4.7.1 greylisted, try again later"}
    return [
        t.ok_step("load order-1", 0.5, 1.9, '{"id":"o-7f3a9c","items":3,"total":129.5}',
                  {"retries": _DEFAULT_RETRIES, "timeout": "10 minutes"}),
        {"type": "sleep", "name": "settle-1", "start": at(2.0), "end": at(32.0),
         "finished": True, "error": None},
        {"type": "waitForEvent", "name": "payment approved-1", "start": at(32.1),
         "end": at(100.0), "finished": True, "error": None, "event_type": "payment-approved",
         "output": '{"approver":"ops","amount":129.5}'},
        {"type": "step", "name": "charge card-1", "start": at(100.1), "end": at(133.0),
         "success": True, "output": "[REDACTED]",
         "attempts": [
             {"start": at(100.1), "end": at(101.0), "error": gateway, "success": False},
             {"start": at(111.0), "end": at(112.2), "error": gateway, "success": False},
             {"start": at(132.2), "end": at(133.0), "error": None, "success": True},
         ],
         "config": {"retries": {"delay": "[dynamic]", "limit": 3}, "timeout": 30000,
                    "sensitive": "output"}},
        t.ok_step(STREAM_STEP, 133.1, 258.0, None,
                  {"retries": {"delay": 1000, "limit": 2, "backoff": "constant"},
                   "timeout": "5 minutes"}),
        {"type": "step", "name": "notify customer-1", "start": at(258.1), "end": None,
         "success": None, "output": None,
         "attempts": [{"start": at(258.1), "end": at(259.3), "error": smtp, "success": False}],
         "config": {"retries": {"delay": "15 seconds", "limit": 5, "backoff": "constant"},
                    "timeout": "1 minute"}},
    ]


def demo_instance_states(now: datetime) -> list[dict[str, Any]]:
    """The demo instance, running at ``now``, then three later states up to complete."""
    t = _Timeline(now)
    at = t.at
    steps = _running_steps(t)
    running: dict[str, Any] = {
        "status": "running", "queued": at(-0.35), "start": at(0.0), "end": None,
        "error": None, "output": None,
        "params": {"orderId": "o-7f3a9c", "items": 3, "email": "ada@example.com"},
        "step_count": len(steps), "steps": steps, "success": None,
        "trigger": {"source": "api"}, "versionId": "5c1e2f4a-8b9d-4c3e-a1f0-7d6b2e9c4a18",
    }
    # Later states: the retry runs, succeeds, one more step, then the instance completes.
    retry_running = dict(steps[-1], attempts=[
        *steps[-1]["attempts"], {"start": at(274.3), "end": None, "error": None, "success": None}
    ])
    retry_ok = dict(retry_running, end=at(274.9), success=True, attempts=[
        *steps[-1]["attempts"], {"start": at(274.3), "end": at(274.9), "error": None,
                                 "success": True}
    ])
    audit = t.ok_step("write audit log-1", 275.0, 275.4, "null",
                      {"retries": _DEFAULT_RETRIES, "timeout": "10 minutes"})
    s1 = dict(running, steps=[*steps[:-1], retry_running])
    s2_steps = [*steps[:-1], retry_ok, dict(audit, end=None, success=None, attempts=[
        {"start": at(275.0), "end": None, "error": None, "success": None}])]
    s2 = dict(running, steps=s2_steps, step_count=len(s2_steps))
    s3_steps = [*steps[:-1], retry_ok, audit]
    s3 = dict(running, status="complete", end=at(275.5), success=True,
              output='{"invoice":"INV-2026-0042"}', steps=s3_steps, step_count=len(s3_steps))
    return [running, s1, s2, s3]


def fill_demo_api(api: FakeWorkflowsAPI, now: datetime) -> list[dict[str, Any]]:
    """Register the demo instance's first state and its step outputs; return its states."""
    states = demo_instance_states(now)
    api.add_instance(WORKFLOW, INSTANCE, states[0])
    api.add_step_output(WORKFLOW, INSTANCE, "load order-1",
                        {"id": "o-7f3a9c", "total": 129.5, "currency": "EUR",
                         "lines": [{"sku": "SKU-0042", "qty": 2, "amount": 49.5},
                                   {"sku": "SKU-0007", "qty": 1, "amount": 30.5}]})
    api.add_step_output(WORKFLOW, INSTANCE, "charge card-1", "[REDACTED]")
    api.add_step_output(WORKFLOW, INSTANCE, "payment approved-1",
                        {"approver": "ops", "amount": 129.5}, type="waitForEvent")
    api.add_step_output(WORKFLOW, INSTANCE, STREAM_STEP, ledger_body())
    api.add_step_output(WORKFLOW, INSTANCE, "notify customer-1", None, status="running",
                        error={"name": "Error",
                               "message": "SMTP 451 4.7.1 greylisted, try again later"})
    # Earlier orders, for `cfwf list`.
    version = states[0]["versionId"]
    for minutes, suffix, status, took in ((95, "96", "complete", 262.0),
                                          (71, "97", "errored", 131.5),
                                          (48, "98", "terminated", 610.0),
                                          (22, "99", "complete", 248.9)):
        created = now - timedelta(minutes=minutes)
        started = created + timedelta(seconds=0.4)
        ended = started + timedelta(seconds=took)
        api.add_summary(WORKFLOW, f"order-7f3a{suffix}", {
            "status": status, "created_on": _iso(created), "started_on": _iso(started),
            "ended_on": _iso(ended), "modified_on": _iso(ended), "version_id": version,
            "trigger_source": "api",
        })
    return states


def command_lines(argv: Sequence[str], width: int | None) -> list[str]:
    """``$ argv`` as a shell would take it, continued with `` \\`` to fit ``width``."""
    lines = ["$"]
    for word in (shlex.quote(a) for a in argv):
        # Two cells stay free on every line but the last, for the " \\".
        if width is not None and len(lines[-1]) > 4 and len(lines[-1]) + len(word) + 3 > width:
            lines[-1] += " \\"
            lines.append("   ")
        lines[-1] += " " + word
    return lines


NEW_ORDER: Final = "order-8b21d0"


def _waiting_for_payment(params: Any) -> dict[str, Any]:
    """The new order a moment after it started: waiting for its payment approval."""
    # Started three seconds ago (a _Timeline counts from 4m30s before its "now").
    t = _Timeline(datetime.now(UTC) + timedelta(minutes=4, seconds=27))
    return {
        "status": "waiting", "queued": t.at(0.0), "start": t.at(0.2), "end": None,
        "error": None, "output": None, "params": params, "success": None,
        "trigger": {"source": "api"}, "versionId": "5c1e2f4a-8b9d-4c3e-a1f0-7d6b2e9c4a18",
        "steps": [
            t.ok_step("load order-1", 0.3, 1.1, '{"id":"o-8b21d0","items":1,"total":19.9}',
                      {"retries": _DEFAULT_RETRIES, "timeout": "10 minutes"}),
            {"type": "waitForEvent", "name": "payment approved-1", "start": t.at(1.2),
             "end": None, "finished": False, "error": None,
             "event_type": "payment-approved", "output": None},
        ],
    }


async def _control_section(api: FakeWorkflowsAPI, console: Console,
                           run: Callable[[list[str]], Awaitable[int]]) -> list[int]:
    """Start an order, release its event wait with an event, and restart it."""
    params = {"orderId": "o-8b21d0", "items": 1}
    console.print()
    _prose(console, "Starting and steering instances: a new order, an event that releases "
                    "its wait, and a restart from that step.")
    codes = [await run(["trigger", WORKFLOW, '{"orderId":"o-8b21d0","items":1}',
                        "--id", NEW_ORDER])]
    # The fake API runs no workflow code: this is where the order's code would have
    # reached its step.waitForEvent.
    api.add_instance(WORKFLOW, NEW_ORDER, _waiting_for_payment(params))
    codes.append(await run(["send-event", WORKFLOW, NEW_ORDER, "--type", "payment-approved",
                            "--payload", '{"approver":"ops"}']))
    codes.append(await run(["describe", WORKFLOW, NEW_ORDER, "--no-step-output"]))
    codes.append(await run(["restart", WORKFLOW, NEW_ORDER, "--from-step",
                            "payment approved-1", "--from-step-type", "waitForEvent"]))
    return codes


def _prose(console: Console, text: str) -> None:
    for line in wrapped(console, "", "", text, "dim"):
        console.print(line)


async def run_demo(console: Console, *, watch_interval: float = 0.25) -> int:
    """Serve the fake API on loopback and run each command against it; 0 when all passed."""
    api = UnfoldingWorkflowsAPI()
    states = fill_demo_api(api, datetime.now(UTC))
    parser = build_parser()
    p = console.paint
    async with api.serve() as base_url:
        _prose(console, f"cfwf demo: a fake Workflows API serves on {base_url} "
                        "(loopback only: no network, no credentials)")
        async with WorkflowsSession(api_token=api.api_token, account_id=api.account_id,
                                    base_url=base_url) as session:

            async def run(argv: list[str]) -> int:
                console.print()
                for line in command_lines(["cfwf", *argv], console.width):
                    console.print(p(line, "bold cyan"))
                console.stdout.flush()
                args = parser.parse_args(argv)
                code: int = await args.handler(session, args, console)
                console.stdout.flush()
                return code

            with tempfile.TemporaryDirectory(prefix="cfwf-demo-") as tmp:
                target = os.path.join(tmp, "ledger.csv")
                codes = [
                    await run(["describe", WORKFLOW, INSTANCE]),
                    await run(["step", WORKFLOW, INSTANCE, "--step", "load order-1"]),
                    await run(["step", WORKFLOW, INSTANCE, "--step", STREAM_STEP,
                               "--output", target]),
                ]
                saved = (await anyio.Path(target).stat()).st_size
                if saved != STREAM_SIZE:
                    console.error(f"the demo saved {saved} bytes, expected {STREAM_SIZE}")
                    return 1
            codes.append(await run(["list", WORKFLOW]))
            api.add_instance_states(WORKFLOW, INSTANCE, states)
            codes.append(await run(["watch", WORKFLOW, INSTANCE,
                                    "--interval", f"{watch_interval:g}"]))
            codes += await _control_section(api, console, run)
    console.print()
    _prose(console, "That was all offline. Against your account: export CLOUDFLARE_API_TOKEN "
                    "and CLOUDFLARE_ACCOUNT_ID, then run the same commands.")
    return max(codes)
