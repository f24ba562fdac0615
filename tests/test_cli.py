"""The ``cfwf`` command, run as a real subprocess against the fake API this test serves.

The fake API runs in the test's event loop, and the command in a child process started
with ``anyio.run_process``, so the server keeps answering while the command runs.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import anyio
import msgspec
import pytest

from cfwf_async.cli._console import Console
from cfwf_async.cli._demo import (
    INSTANCE,
    WORKFLOW,
    UnfoldingWorkflowsAPI,
    demo_instance_states,
    fill_demo_api,
)
from cfwf_async.cli._describe import render_describe
from cfwf_async.cli._timeline import render_timeline
from cfwf_async.models import Instance
from cfwf_async.testing import FakeWorkflowsAPI

pytestmark = pytest.mark.anyio

CFWF_SCRIPT = Path(sys.executable).with_name("cfwf")


@pytest.fixture
def fake_api() -> UnfoldingWorkflowsAPI:
    """The demo's running checkout instance (overrides conftest's empty fake API)."""
    api = UnfoldingWorkflowsAPI()
    fill_demo_api(api, datetime.now(UTC))
    return api


def child_env(api: FakeWorkflowsAPI | None, **extra: str) -> dict[str, str]:
    """The test's environment without any Cloudflare settings, plus the fake's credentials."""
    env = {
        k: v
        for k, v in os.environ.items()
        # COLUMNS and LINES would fit the output to the shell (or test runner) that ran
        # the tests: a test that wants a width says so.
        if not k.startswith("CLOUDFLARE_")
        and k not in ("NO_COLOR", "CFWF_DEBUG", "COLUMNS", "LINES")
    }
    if api is not None:
        env["CLOUDFLARE_API_TOKEN"] = api.api_token
        env["CLOUDFLARE_ACCOUNT_ID"] = api.account_id
    # The assertions look for the block glyphs, which need a UTF-8 stdout.
    env["PYTHONIOENCODING"] = "utf-8"
    env.update(extra)
    return env


async def cfwf(
    *args: str, env: dict[str, str], script: bool = False
) -> CompletedProcess[bytes]:
    """Run ``python -m cfwf_async ARGS`` (or the installed ``cfwf`` script)."""
    if script and CFWF_SCRIPT.exists():
        cmd = [str(CFWF_SCRIPT), *args]
    else:
        cmd = [sys.executable, "-m", "cfwf_async", *args]
    with anyio.fail_after(20):
        return await anyio.run_process(cmd, env=env, check=False)


def assert_clean_error(result: CompletedProcess[bytes], code: int) -> str:
    """One error line on stderr, nothing on stdout, no traceback; return the line."""
    err = result.stderr.decode()
    assert result.returncode == code, err
    assert "Traceback" not in err
    assert result.stdout == b""
    lines = err.strip().splitlines()
    # One error line, optionally followed by one "hint:" line saying what to try.
    assert len(lines) in (1, 2), err
    assert lines[0].startswith("cfwf: error: ")
    assert all(line.startswith("hint: ") for line in lines[1:]), err
    return lines[0]


async def test_describe_prints_summary_steps_retries_and_timeline(
    fake_api: UnfoldingWorkflowsAPI, base_url: str
) -> None:
    result = await cfwf("describe", WORKFLOW, INSTANCE, "--base-url", base_url,
                        env=child_env(fake_api), script=True)
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr == b""
    assert "\x1b[" not in out  # not a terminal: no colour
    assert out.startswith(f"{WORKFLOW} / {INSTANCE}  running")
    assert "last ok step  export ledger-1" in out
    for name in ("load order-1", "settle-1", "payment approved-1", "charge card-1",
                 "export ledger-1", "notify customer-1"):
        assert out.count(name) >= 2, name  # once in the step table, once in the timeline
    assert "attempt 2" in out
    assert "failed: Error: payment gateway timed out (HTTP 504)" in out
    assert "delay dynamic" in out
    assert "[REDACTED] (sensitive: redacted by Cloudflare)" in out
    assert "next retry: " in out  # notify customer-1 waits 15 s after its failed attempt
    timeline = out[out.index("Timeline"):]
    assert "▓" in timeline  # a failed attempt
    assert "█" in timeline  # a successful one
    assert "3 attempts" in timeline

    brief = await cfwf("describe", WORKFLOW, INSTANCE, "--order", "desc", "--truncate", "12",
                       "--base-url", base_url, env=child_env(fake_api))
    text = brief.stdout.decode()
    assert brief.returncode == 0
    assert fake_api.requests[-1].query["order"] == "desc"
    rows = [line.split() for line in text.splitlines() if line[:3].strip().isdigit()]
    assert [r[0] for r in rows] == ["6", "5", "4", "3", "2", "1"]
    assert 'output: {"approver":…' in text
    assert "(+" in text


async def test_describe_json_is_exactly_the_instance(
    fake_api: UnfoldingWorkflowsAPI, base_url: str
) -> None:
    result = await cfwf("describe", WORKFLOW, INSTANCE, "--json", "--base-url", base_url,
                        env=child_env(fake_api))
    assert result.returncode == 0, result.stderr.decode()
    data = json.loads(result.stdout)  # the whole of stdout is one JSON document
    assert data["status"] == "running"
    assert data["versionId"] == "5c1e2f4a-8b9d-4c3e-a1f0-7d6b2e9c4a18"
    assert [s["type"] for s in data["steps"]] == [
        "step", "sleep", "waitForEvent", "step", "step", "step"
    ]
    charge = data["steps"][3]
    assert len(charge["attempts"]) == 3
    assert charge["config"]["retries"]["delay"] == "[dynamic]"
    assert data["steps"][2]["event_type"] == "payment-approved"


async def test_step_json_to_stdout(fake_api: UnfoldingWorkflowsAPI, base_url: str) -> None:
    result = await cfwf("step", WORKFLOW, INSTANCE, "--step", "load order-1", "--json",
                        "--base-url", base_url, env=child_env(fake_api))
    assert result.returncode == 0, result.stderr.decode()
    data = json.loads(result.stdout)
    assert data["status"] == "complete"
    assert data["output"]["total"] == 129.5
    assert data["output"]["lines"][0]["sku"] == "SKU-0042"
    assert fake_api.requests[-1].query == {"name": "load order-1", "type": "step"}


async def test_streamed_output_saved_byte_identical_and_refused_on_stdout(
    fake_api: UnfoldingWorkflowsAPI, base_url: str, tmp_path: Path
) -> None:
    payload = os.urandom(5 << 20)
    fake_api.add_step_output(WORKFLOW, INSTANCE, "export blob-1", payload)
    target = tmp_path / "blob.bin"
    result = await cfwf("step", WORKFLOW, INSTANCE, "--step", "export blob-1", "--output",
                        str(target), "--base-url", base_url, env=child_env(fake_api))
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr == b""  # stderr is not a terminal: no progress bar
    assert result.stdout.decode().startswith(f"saved {5 << 20:,} bytes")
    assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(payload).digest()
    assert not target.with_name("blob.bin.part").exists()

    refused = await cfwf("step", WORKFLOW, INSTANCE, "--step", "export blob-1",
                         "--base-url", base_url, env=child_env(fake_api))
    line = assert_clean_error(refused, 2)
    assert "display cap" in line
    assert "--output FILE" in line


async def test_not_found_is_one_line_with_message_and_cf_ray(
    fake_api: UnfoldingWorkflowsAPI, base_url: str
) -> None:
    result = await cfwf("describe", WORKFLOW, "no-such-order", "--base-url", base_url,
                        env=child_env(fake_api))
    line = assert_clean_error(result, 1)
    assert "404" in line
    assert "instance.not_found" in line
    assert "cf-ray" in line
    assert "-FAKE" in line


async def test_missing_token_names_the_variable(
    fake_api: UnfoldingWorkflowsAPI, base_url: str
) -> None:
    env = child_env(None, CLOUDFLARE_ACCOUNT_ID=fake_api.account_id)
    result = await cfwf("describe", WORKFLOW, INSTANCE, "--base-url", base_url, env=env)
    line = assert_clean_error(result, 2)
    assert "CLOUDFLARE_API_TOKEN" in line
    assert "Workers Scripts Read" in line  # the permission the token needs
    assert fake_api.requests == []


async def test_watch_follows_until_complete_then_exits_0(
    fake_api: UnfoldingWorkflowsAPI, base_url: str
) -> None:
    states = demo_instance_states(datetime.now(UTC))
    fake_api.add_instance_states(WORKFLOW, INSTANCE, states)  # one state per poll
    result = await cfwf("watch", WORKFLOW, INSTANCE, "--interval", "0.05", "--base-url",
                        base_url, env=child_env(fake_api))
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stdout.decode().splitlines()
    assert "running" in lines[0]
    assert "complete" in lines[-1]
    assert len(fake_api.requests) == len(states)
    assert all(r.query == {"simple": "true"} for r in fake_api.requests)


async def test_watch_timeout_gives_up_with_exit_1_and_the_last_status(
    fake_api: UnfoldingWorkflowsAPI, base_url: str
) -> None:
    # The demo instance stays running: only --timeout ends the watch.
    result = await cfwf("watch", WORKFLOW, INSTANCE, "--interval", "0.05", "--timeout", "0.3",
                        "--base-url", base_url, env=child_env(fake_api))
    assert result.returncode == 1
    err = result.stderr.decode().strip().splitlines()
    assert err == ["cfwf: error: timed out after 0.3 s; the instance is still running"]
    lines = result.stdout.decode().splitlines()
    assert len(lines) == 1  # off a terminal, a line only when something changes
    assert "running" in lines[0]
    assert len(fake_api.requests) >= 2
    assert all(r.query == {"simple": "true"} for r in fake_api.requests)


async def test_missing_account_names_the_option_and_variable(
    fake_api: UnfoldingWorkflowsAPI, base_url: str
) -> None:
    env = child_env(None, CLOUDFLARE_API_TOKEN=fake_api.api_token)
    result = await cfwf("list", WORKFLOW, "--base-url", base_url, env=env)
    line = assert_clean_error(result, 2)
    assert "--account-id" in line
    assert "CLOUDFLARE_ACCOUNT_ID" in line
    assert fake_api.requests == []


async def test_watch_exits_1_when_errored(
    fake_api: UnfoldingWorkflowsAPI, base_url: str
) -> None:
    running, *_ = demo_instance_states(datetime.now(UTC))
    errored = dict(running, status="errored", end=running["start"], success=False,
                   error={"name": "NonRetryableError", "message": "card declined"})
    fake_api.add_instance_states(WORKFLOW, INSTANCE, [running, errored])
    result = await cfwf("watch", WORKFLOW, INSTANCE, "--interval", "0.05", "--base-url",
                        base_url, env=child_env(fake_api))
    assert result.returncode == 1
    out = result.stdout.decode()
    assert "errored" in out
    assert "NonRetryableError: card declined" in out


async def test_works_without_rich(
    fake_api: UnfoldingWorkflowsAPI, base_url: str, tmp_path: Path
) -> None:
    # rich is the optional `cli` extra: with it unimportable, the SDK and the command
    # (off a terminal, where no progress bar is drawn) work the same.
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['rich'] = None\n")
    env = child_env(fake_api, PYTHONPATH=str(tmp_path))
    result = await cfwf("step", WORKFLOW, INSTANCE, "--step", "export ledger-1", "--output",
                        str(tmp_path / "ledger.csv"), "--base-url", base_url, env=env)
    assert result.returncode == 0, result.stderr.decode()
    assert (tmp_path / "ledger.csv").stat().st_size == 4 << 20


# Refuses every connection and name lookup that is not loopback, and records what the
# process tried, so the demo test can show that it used no network.
NETWORK_GUARD = '''
import atexit, json, os, sys

_LOCAL = {"127.0.0.1", "::1", "localhost"}
_seen = {"loopback": 0, "refused": []}

def _guard(event, args):
    if event == "socket.connect":
        address = args[1]
        if not isinstance(address, tuple):
            return  # a Unix socket
        if address[0] in _LOCAL:
            _seen["loopback"] += 1
            return
        _seen["refused"].append(str(address[0]))
        raise OSError("network access blocked by the test: %s" % (address[0],))
    if event == "socket.getaddrinfo":
        host = args[0]
        if isinstance(host, bytes):
            host = host.decode()
        if host is not None and host not in _LOCAL:
            _seen["refused"].append(str(host))
            raise OSError("name lookup blocked by the test: %s" % (host,))

def _report():
    with open(os.environ["CFWF_NETWORK_REPORT"], "w") as f:
        json.dump(_seen, f)

sys.addaudithook(_guard)
atexit.register(_report)
'''


async def test_demo_runs_offline_and_exits_0(tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text(NETWORK_GUARD)
    report = tmp_path / "network.json"
    env = child_env(
        None,
        PYTHONPATH=str(tmp_path),
        CFWF_NETWORK_REPORT=str(report),
        # A demo that read these would try a real, unroutable address (and be refused).
        CLOUDFLARE_BASE_URL="https://192.0.2.1/client/v4",
        CLOUDFLARE_API_TOKEN="not-a-real-token",
    )
    result = await cfwf("demo", env=env)
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    assert "Traceback" not in result.stderr.decode()
    for command in ("$ cfwf describe", "$ cfwf step", "$ cfwf watch"):
        assert command in out
    assert f"saved {4 << 20:,} bytes" in out
    assert "Timeline" in out
    watched = out[out.index("$ cfwf watch"):].splitlines()
    assert "running" in watched[1]
    assert any("complete" in line and "took" in line for line in watched)
    assert "triggered checkout / order-8b21d0 (queued)\n" in out
    assert "sent event 'payment-approved' to checkout / order-8b21d0\n" in out
    released = out[out.index("$ cfwf describe checkout order-8b21d0"):]
    assert "payment approved-1  complete" in released
    assert "restarted checkout / order-8b21d0 (now running)\n" in out
    seen = json.loads(report.read_text())
    assert seen["refused"] == []
    assert seen["loopback"] >= 1  # the guard was active and saw the demo's connections


async def test_list_json_lines_stop_at_limit_without_next_page(
    fake_api: UnfoldingWorkflowsAPI, base_url: str
) -> None:
    result = await cfwf("list", WORKFLOW, "--json", "--limit", "3", "--base-url", base_url,
                        env=child_env(fake_api))
    assert result.returncode == 0, result.stderr.decode()
    items = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert [i["id"] for i in items] == ["order-7f3a96", "order-7f3a97", "order-7f3a98"]
    assert [i["status"] for i in items] == ["complete", "errored", "terminated"]
    assert items[0]["created_on"].endswith("Z")
    # The first page (3 of 5) named a next page; --limit 3 never asked for it.
    assert len(fake_api.requests) == 1
    assert fake_api.requests[0].query["per_page"] == "3"
    assert "cursor" not in fake_api.requests[0].query


async def test_list_table_with_filters(fake_api: UnfoldingWorkflowsAPI, base_url: str) -> None:
    result = await cfwf("list", WORKFLOW, "--status", "errored", "--since", "2000-01-01",
                        "--base-url", base_url, env=child_env(fake_api))
    assert result.returncode == 0, result.stderr.decode()
    header, *rows = result.stdout.decode().splitlines()
    assert header.split() == ["ID", "STATUS", "CREATED", "STARTED", "ENDED", "DURATION",
                              "MODIFIED", "VERSION"]
    assert [r.split()[:2] for r in rows] == [["order-7f3a97", "errored"]]
    assert "  2m 12s  " in rows[0]
    assert rows[0].endswith("5c1e2f4a-8b9d-4c3e-a1f0-7d6b2e9c4a18")
    query = fake_api.requests[0].query
    assert query["status"] == "errored"
    assert query["date_start"] == "2000-01-01T00:00:00.000Z"


async def test_usage_error_is_one_line_exit_2_before_any_request(
    fake_api: UnfoldingWorkflowsAPI, base_url: str
) -> None:
    result = await cfwf("list", WORKFLOW, "--since", "last monday", "--base-url", base_url,
                        env=child_env(fake_api))
    line = assert_clean_error(result, 2)
    assert "--since" in line
    assert fake_api.requests == []


# -- the rendering itself, in-process (no subprocess needed) -------------------------


def render(inst_result: dict[str, Any], now: datetime) -> str:
    inst = msgspec.convert(inst_result, Instance)
    console = Console(io.StringIO(), io.StringIO())
    return "\n".join(render_describe(console, WORKFLOW, INSTANCE, inst, now=now))


def test_next_retry_is_last_attempt_end_plus_delay_or_dynamic() -> None:
    now = datetime(2026, 10, 30, 8, 10, tzinfo=UTC)
    running = demo_instance_states(now)[0]
    out = render(running, now)
    # The demo starts 4m30s before now; the failed attempt ended 259.3 s in; delay 15 s.
    base = now - timedelta(minutes=4, seconds=30)
    expected = base + timedelta(seconds=259.3 + 15)
    assert f"next retry: {expected:%H:%M:%S}.{expected.microsecond // 1000:03d} (in 4.30s)" in out

    notify = dict(running["steps"][-1])
    notify["config"] = {"retries": {"delay": "[dynamic]", "limit": 5}}
    out = render(dict(running, steps=[*running["steps"][:-1], notify]), now)
    assert "next retry: dynamic" in out

    notify["config"] = {"retries": {"delay": 2000, "limit": 5, "backoff": "exponential"}}
    notify["attempts"] = [*notify["attempts"], *notify["attempts"]]  # two failures: 2 s * 2
    out = render(dict(running, steps=[*running["steps"][:-1], notify]), now)
    end = datetime.fromisoformat(notify["attempts"][-1]["end"]) + timedelta(seconds=4)
    assert f"next retry: ≈ {end:%H:%M:%S}." in out


def test_timeline_marks_slow_step_and_retries() -> None:
    now = datetime(2026, 10, 30, 8, 10, tzinfo=UTC)
    inst = msgspec.convert(demo_instance_states(now)[3], Instance)  # complete
    lines = render_timeline(Console(io.StringIO(), io.StringIO()), inst, now=now, width=50)
    bars = {line[2:26].strip(): line[27:77] for line in lines[1:-1]}
    assert bars["export ledger-1"].count("█") > 20  # the slow step: 125 of 275 s
    assert bars["charge card-1"].count("▓") == 2  # two failed attempts
    assert "·" in bars["charge card-1"]  # the waits between them
    assert set(bars["settle-1"].strip()) == {"░"}
