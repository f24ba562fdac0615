"""``cfwf`` against a hostile server, a hostile disk, and answers richer than its models.

Server text reaches a terminal only with its control characters escaped; ``--output``
is checked before any request and never leaves a partial file; ``describe --json`` is
the API's own ``result`` object.
"""

from __future__ import annotations

import io
import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import msgspec
import pytest
from test_cli import assert_clean_error, cfwf, child_env

from cfwf_async import WorkflowsSession
from cfwf_async import _protocol as proto
from cfwf_async.cli._console import Console
from cfwf_async.cli._demo import demo_instance_states
from cfwf_async.cli._describe import render_describe
from cfwf_async.cli._parser import build_parser
from cfwf_async.models import Instance
from cfwf_async.testing import FakeWorkflowsAPI, Fault

pytestmark = pytest.mark.anyio

WORKFLOW = "checkout"
INSTANCE = "order-1"

# An OSC 52 clipboard write, a C1 CSI "clear screen", a cursor move up, blinking text
# (not a colour the CLI uses), DEL and a bell.
OSC52 = "\x1b]52;c;cm0gLXJmIH4=\x07"
C1_CLEAR = "\x9b2J"
UP = "\x1b[1A"
BLINK = "\x1b[5m"
HOSTILE = f"{OSC52}{C1_CLEAR}{UP}{BLINK}\x7f\x07"
# What each sequence looks like once escaped.
SHOWN = (r"\x1b]52;c;cm0gLXJmIH4=\x07", r"\u009b2J", r"\x1b[1A", r"\x1b[5m", r"\x7f")


def hostile_instance() -> dict[str, Any]:
    """The demo instance, with control sequences in every string the server controls."""
    running = demo_instance_states(datetime.now(UTC))[0]
    steps = [dict(s, name=f"{s['name']}{HOSTILE}") for s in running["steps"]]
    steps[3]["attempts"] = [
        dict(a, error={"name": f"Err{HOSTILE}", "message": f"gateway{HOSTILE}"})
        for a in steps[3]["attempts"][:2]
    ] + steps[3]["attempts"][2:]
    steps[0]["output"] = f"out{HOSTILE}"
    return dict(running, status="errored", end=running["start"], steps=steps,
                error={"name": f"Boom{HOSTILE}", "message": f"bad{HOSTILE}"},
                versionId=f"v{HOSTILE}", trigger={"source": f"api{HOSTILE}"})


@pytest.fixture
def hostile_api(fake_api: FakeWorkflowsAPI) -> FakeWorkflowsAPI:
    fake_api.add_instance(WORKFLOW, INSTANCE, hostile_instance())
    fake_api.add_step_output(WORKFLOW, INSTANCE, "load", f"text{HOSTILE}", status="errored",
                             error={"name": f"E{HOSTILE}", "message": f"m{HOSTILE}"},
                             type="waitForEvent")
    fake_api.add_step_output(WORKFLOW, INSTANCE, "stream", f"line{HOSTILE}\n".encode())
    fake_api.add_summary(WORKFLOW, f"order-2{HOSTILE}", {
        "status": f"complete{HOSTILE}", "created_on": "2026-10-30T08:00:00Z",
    })
    return fake_api


def assert_no_control_output(result: CompletedProcess[bytes]) -> str:
    """No ESC, no DEL, no C1 anywhere in stdout or stderr; return both as text."""
    raw = result.stdout + result.stderr
    assert b"\x1b" not in raw
    assert b"\x7f" not in raw
    text = raw.decode()
    assert not [c for c in text if 0x80 <= ord(c) <= 0x9F]
    assert not [c for c in text if ord(c) < 0x20 and c not in "\n\t"]
    return text


@pytest.mark.parametrize(
    "argv",
    [
        ["describe", WORKFLOW, INSTANCE],
        ["describe", WORKFLOW, INSTANCE, "--truncate", "0"],
        ["step", WORKFLOW, INSTANCE, "--step", "load", "--type", "waitForEvent"],
        ["step", WORKFLOW, INSTANCE, "--step", "stream"],
        ["list", WORKFLOW],
        ["watch", WORKFLOW, INSTANCE, "--interval", "0.05"],
    ],
    ids=["describe", "describe-untruncated", "step", "step-stream", "list", "watch"],
)
async def test_server_control_sequences_are_shown_escaped_never_emitted(
    hostile_api: FakeWorkflowsAPI, base_url: str, argv: list[str]
) -> None:
    result = await cfwf(*argv, "--base-url", base_url, env=child_env(hostile_api, NO_COLOR="1"))
    assert result.returncode in (0, 1), result.stderr.decode()  # watch: errored is 1
    assert "Traceback" not in result.stderr.decode()
    text = assert_no_control_output(result)
    assert r"\x1b]52;c;cm0gLXJmIH4=\x07" in text
    assert r"\u009b2J" in text


async def test_error_messages_from_the_server_are_escaped(
    hostile_api: FakeWorkflowsAPI, base_url: str
) -> None:
    hostile_api.inject(Fault.http(404, errors=[(10001, f"no such thing{HOSTILE}")]))
    result = await cfwf("describe", WORKFLOW, INSTANCE, "--base-url", base_url,
                        env=child_env(hostile_api))
    line = assert_clean_error(result, 1)
    assert_no_control_output(result)
    assert "no such thing" + "".join(SHOWN) in line


def strings(value: Any) -> list[str]:
    """Every string in a decoded JSON document."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return [s for item in value for s in strings(item)]
    return []


@pytest.mark.parametrize(
    "argv",
    [
        ["describe", WORKFLOW, INSTANCE, "--json"],
        ["step", WORKFLOW, INSTANCE, "--step", "load", "--type", "waitForEvent", "--json"],
        ["step", WORKFLOW, INSTANCE, "--step", "stream", "--json"],
    ],
    ids=["describe", "step", "step-stream"],
)
async def test_json_output_is_valid_and_carries_the_exact_strings_escaped(
    hostile_api: FakeWorkflowsAPI, base_url: str, argv: list[str]
) -> None:
    result = await cfwf(*argv, "--base-url", base_url, env=child_env(hostile_api))
    assert result.returncode == 0, result.stderr.decode()
    assert_no_control_output(result)
    assert any(HOSTILE in text for text in strings(json.loads(result.stdout)))


async def test_list_json_lines_are_valid_with_control_characters(
    hostile_api: FakeWorkflowsAPI, base_url: str
) -> None:
    result = await cfwf("list", WORKFLOW, "--json", "--base-url", base_url,
                        env=child_env(hostile_api))
    assert result.returncode == 0, result.stderr.decode()
    assert_no_control_output(result)
    ids = [json.loads(line)["id"] for line in result.stdout.decode().splitlines()]
    assert f"order-2{HOSTILE}" in ids


# Every escape sequence a colour console may write: its own SGR codes, nothing else.
CLI_SGR = re.compile(r"\x1b\[((?:[0-9]+;)*[0-9]+)m")
CLI_CODES = {"0", "1", "2", "31", "32", "33", "34", "35", "36"}


def assert_only_cli_colour(text: str) -> None:
    for m in re.finditer("\x1b", text):
        sgr = CLI_SGR.match(text, m.start())
        assert sgr is not None, repr(text[m.start():m.start() + 12])
        assert set(sgr.group(1).split(";")) <= CLI_CODES, sgr.group()
    assert not [c for c in text if 0x7F <= ord(c) <= 0x9F]


def test_with_colour_the_only_escape_sequences_are_the_cli_colours() -> None:
    inst = msgspec.convert(hostile_instance(), Instance)
    console = Console(io.StringIO(), io.StringIO(), colour=True, err_colour=True)
    for line in render_describe(console, WORKFLOW, INSTANCE, inst):
        console.print(line)
    console.error(f"server said{HOSTILE}")
    console.note(f"note{HOSTILE}")
    out = console.stdout.getvalue()  # type: ignore[attr-defined]
    err = console.stderr.getvalue()  # type: ignore[attr-defined]
    assert "\x1b[31m" in out  # colour is on: the errored status is red
    for text in (out, err):
        assert_only_cli_colour(text)
        for shown in SHOWN:
            assert shown in text


@pytest.mark.parametrize(("limit", "count", "shown"), [
    (2.5, 4.0, ("retries 2.5,", "1/3.5\n", "steps         4\n")),
    (3.0, 4, ("retries 3,", "1/4\n", "steps         4\n")),
])
def test_describe_shows_numbers_as_sent_and_whole_ones_without_a_fraction(
    limit: float, count: float, shown: tuple[str, ...]
) -> None:
    running = demo_instance_states(datetime.now(UTC))[0]
    steps = [dict(s) for s in running["steps"]]
    steps[0]["config"] = {"retries": {"limit": limit, "delay": 1000}, "timeout": 5000}
    inst = proto.decode_instance(msgspec.json.encode({
        "success": True, "errors": [], "messages": [],
        "result": dict(running, steps=steps, step_count=count),
    }))
    console = Console(io.StringIO(), io.StringIO(), colour=False, err_colour=False)
    text = "\n".join(render_describe(console, WORKFLOW, INSTANCE, inst))
    for part in shown:
        assert part in text, part


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_live_watch_line_on_a_terminal_keeps_only_cli_sequences(
    hostile_api: FakeWorkflowsAPI, base_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    hostile_api.add_instance(WORKFLOW, INSTANCE, dict(hostile_instance(),
                                                      status=f"errored{HOSTILE}"))
    console = Console.for_streams(_Terminal(), _Terminal())
    assert console.colour
    args = build_parser().parse_args(["watch", WORKFLOW, INSTANCE, "--timeout", "5"])
    async with WorkflowsSession(api_token=hostile_api.api_token,
                                account_id=hostile_api.account_id, base_url=base_url) as s:
        code = await args.handler(s, args, console)
    out = console.stdout.getvalue()  # type: ignore[attr-defined]
    assert code == 1
    # The console's own line rewrite, then only its colours.
    assert out.startswith("\r\x1b[2K")
    assert_only_cli_colour(out.replace("\r\x1b[2K", ""))
    assert r"errored\x1b]52;c;" in out


# -- --output: checked before any request, written whole or not at all ----------------


async def test_output_directory_is_refused_before_any_request(
    fake_api: FakeWorkflowsAPI, base_url: str, tmp_path: Path
) -> None:
    result = await cfwf("step", WORKFLOW, INSTANCE, "--step", "load", "--output",
                        str(tmp_path), "--base-url", base_url, env=child_env(fake_api))
    line = assert_clean_error(result, 2)
    assert "--output" in line
    assert str(tmp_path) in line
    assert "directory" in line
    assert fake_api.requests == []


async def test_output_in_a_missing_directory_is_refused_before_any_request(
    fake_api: FakeWorkflowsAPI, base_url: str, tmp_path: Path
) -> None:
    target = tmp_path / "no-such-dir" / "out.json"
    result = await cfwf("step", WORKFLOW, INSTANCE, "--step", "load", "--output",
                        str(target), "--base-url", base_url, env=child_env(fake_api))
    line = assert_clean_error(result, 2)
    assert "--output" in line
    assert str(target.parent) in line
    assert "does not exist" in line
    assert fake_api.requests == []


# The child may write at most this many bytes to any file: like a disk that fills up.
FULL_DISK = """
import resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
"""


async def test_json_output_on_a_full_disk_leaves_no_partial_file(
    fake_api: FakeWorkflowsAPI, base_url: str, tmp_path: Path
) -> None:
    (tmp_path / "sitecustomize.py").write_text(FULL_DISK)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    fake_api.add_step_output(WORKFLOW, INSTANCE, "load", {"rows": ["x" * 100] * 200})
    env = child_env(fake_api, PYTHONPATH=str(tmp_path), PYTHONDONTWRITEBYTECODE="1")
    result = await cfwf("step", WORKFLOW, INSTANCE, "--step", "load", "--output",
                        str(out_dir / "out.json"), "--base-url", base_url, env=env)
    line = assert_clean_error(result, 1)
    assert "too large" in line.lower()
    assert os.listdir(out_dir) == []


async def test_json_output_is_written_whole(
    fake_api: FakeWorkflowsAPI, base_url: str, tmp_path: Path
) -> None:
    value = {"rows": ["x" * 100] * 200}
    fake_api.add_step_output(WORKFLOW, INSTANCE, "load", value)
    target = tmp_path / "out.json"
    result = await cfwf("step", WORKFLOW, INSTANCE, "--step", "load", "--output",
                        str(target), "--base-url", base_url, env=child_env(fake_api))
    assert result.returncode == 0, result.stderr.decode()
    assert json.loads(target.read_bytes()) == value
    assert os.listdir(tmp_path) == ["out.json"]


# -- describe --json: the API's own result ----------------------------------------------


async def test_describe_json_keeps_nulls_and_unknown_fields(
    fake_api: FakeWorkflowsAPI, base_url: str
) -> None:
    running = demo_instance_states(datetime.now(UTC))[0]
    result = dict(
        running,
        futureField={"nested": [1, None]},
        error=None,
        schedule=None,
        steps=[dict(s, addedLater=None) for s in running["steps"]]
        + [{"type": "checkpoint", "name": "cp-1", "extra": None}],
    )
    fake_api.add_instance(WORKFLOW, INSTANCE, result)
    out = await cfwf("describe", WORKFLOW, INSTANCE, "--json", "--base-url", base_url,
                     env=child_env(fake_api))
    assert out.returncode == 0, out.stderr.decode()
    assert json.loads(out.stdout) == json.loads(json.dumps(result))
    assert fake_api.requests[-1].query == {"order": "asc"}


async def test_describe_json_of_a_broken_answer_fails_like_describe(
    fake_api: FakeWorkflowsAPI, base_url: str
) -> None:
    fake_api.add_instance(WORKFLOW, INSTANCE, b'{"success": true, "result": {"steps": 5}}')
    out = await cfwf("describe", WORKFLOW, INSTANCE, "--json", "--base-url", base_url,
                     env=child_env(fake_api))
    line = assert_clean_error(out, 1)
    assert "instance" in line
