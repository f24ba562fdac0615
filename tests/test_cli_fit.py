"""``cfwf`` output fits the terminal's width; ``--wide``, ``--json`` and pipes keep it whole."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import msgspec
import pytest

from cfwf_async.cli._console import Console, Glyphs
from cfwf_async.cli._demo import INSTANCE, WORKFLOW, UnfoldingWorkflowsAPI, fill_demo_api
from cfwf_async.cli._describe import ATTEMPTS_LEGEND, render_describe
from cfwf_async.cli._step import binary_speed_column
from cfwf_async.cli._width import cells, cut, wrap
from cfwf_async.models import Instance
from tests.test_cli import cfwf, child_env

pytestmark = pytest.mark.anyio

LONG_NAME = "reconcile the ledger with the payment provider's settlement report-1"
LONG_ERROR = ("the settlement report for merchant account acct_1Q2w3E4r5T6y7U8i was "
              "rejected because its checksum does not match the one announced")
UUIDS = [str(uuid.UUID(int=i * 0x1234567890ABCDEF1234567890ABCDEF)) for i in (1, 2, 3)]


def wide_lines(text: str, width: int = 80) -> list[str]:
    return [line for line in text.splitlines() if cells(line) > width]


@pytest.fixture
def fake_api() -> UnfoldingWorkflowsAPI:
    """The demo's instance plus one with a long step name and error, and UUID-named runs."""
    api = UnfoldingWorkflowsAPI()
    now = datetime.now(UTC)
    fill_demo_api(api, now)
    t = (now - timedelta(minutes=3)).isoformat()
    api.add_instance(WORKFLOW, "long-one", {
        "status": "errored", "queued": t, "start": t, "end": t, "output": None,
        "error": {"name": "Error", "message": LONG_ERROR}, "params": {}, "trigger": None,
        "steps": [{"type": "step", "name": LONG_NAME, "start": t, "end": t, "success": False,
                   "output": None, "config": {"retries": {"limit": 0, "delay": 1000}},
                   "attempts": [{"start": t, "end": t, "success": False,
                                 "error": {"name": "Error", "message": LONG_ERROR}}]}],
    })
    for i, ident in enumerate(UUIDS):
        created = now - timedelta(minutes=10 * i + 5)
        api.add_summary(WORKFLOW, ident, {
            "status": "complete", "created_on": created.isoformat(),
            "started_on": (created + timedelta(seconds=1)).isoformat(),
            "ended_on": (created + timedelta(seconds=90)).isoformat(),
        })
    return api


async def test_demo_fits_80_columns_and_wraps_errors_between_words() -> None:
    result = await cfwf("demo", env=child_env(None, COLUMNS="80"))
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    assert wide_lines(out) == []
    assert "ATTEMPTS" in out
    assert ATTEMPTS_LEGEND in out
    # The error text wrapped between words, under its attempt.
    assert "failed: Error: payment" in out
    assert "gateway timed out (HTTP 504)" in out
    assert "greylisted, try again" in out or "greylisted, try again later" in out
    # Every instance id of `cfwf list` is whole.
    for suffix in ("96", "97", "98", "99", "9c"):
        assert f"order-7f3a{suffix}" in out


async def test_describe_fits_80_columns_and_wide_keeps_everything(
    fake_api: UnfoldingWorkflowsAPI, base_url: str
) -> None:
    env = child_env(fake_api, COLUMNS="80")
    narrow = await cfwf("describe", WORKFLOW, "long-one", "--base-url", base_url, env=env)
    text = narrow.stdout.decode()
    assert narrow.returncode == 0, narrow.stderr.decode()
    assert wide_lines(text) == []
    assert LONG_NAME not in text.split("Timeline")[0].splitlines()[-1]
    assert "--wide" in text  # says how to see what was cut
    # The long error is all there, wrapped between words.
    words = " ".join(text.split())
    assert LONG_ERROR in words

    wide = await cfwf("describe", WORKFLOW, "long-one", "--wide", "--base-url", base_url,
                      env=env)
    assert wide.returncode == 0
    assert LONG_NAME in wide.stdout.decode()
    assert f"failed: Error: {LONG_ERROR}" in wide.stdout.decode()
    assert "START" in wide.stdout.decode()

    as_json = await cfwf("describe", WORKFLOW, "long-one", "--json", "--base-url", base_url,
                         env=env)
    assert json.loads(as_json.stdout)["steps"][0]["name"] == LONG_NAME


async def test_list_fits_80_columns_with_uuid_ids_whole(
    fake_api: UnfoldingWorkflowsAPI, base_url: str
) -> None:
    narrow = await cfwf("list", WORKFLOW, "--base-url", base_url,
                        env=child_env(fake_api, COLUMNS="80"))
    text = narrow.stdout.decode()
    assert narrow.returncode == 0, narrow.stderr.decode()
    assert wide_lines(text) == []
    for ident in UUIDS:
        assert ident in text  # the id, what one copies, is never cut at 80 columns
    assert "STARTED" not in text
    assert "--wide" in narrow.stderr.decode()

    # --wide, and a pipe without COLUMNS, print every column.
    for extra, env in ((["--wide"], child_env(fake_api, COLUMNS="80")),
                       ([], child_env(fake_api))):
        full = await cfwf("list", WORKFLOW, *extra, "--base-url", base_url, env=env)
        head = full.stdout.decode().splitlines()[0].split()
        assert head == [
            "ID", "STATUS", "CREATED", "STARTED", "ENDED", "DURATION", "MODIFIED", "VERSION"
        ]
        assert full.stderr == b""


async def test_a_narrower_terminal_cuts_ids_with_an_ellipsis(
    fake_api: UnfoldingWorkflowsAPI, base_url: str
) -> None:
    result = await cfwf("list", WORKFLOW, "--base-url", base_url,
                        env=child_env(fake_api, COLUMNS="40"))
    text = result.stdout.decode()
    assert wide_lines(text, 40) == []
    assert "…" in text


def test_wide_characters_count_as_two_cells() -> None:
    inst_now = datetime(2026, 10, 30, 8, 5, tzinfo=UTC)
    name = "注文を処理して請求書を送る手順" * 3
    t = "2026-10-30T08:00:00Z"
    inst = msgspec.json.decode(msgspec.json.encode({
        "status": "running", "start": t, "steps": [
            {"type": "step", "name": name, "start": t, "end": None, "success": None,
             "attempts": [{"start": t, "end": None, "success": None, "error": None}]}]}),
        type=Instance)
    glyphs = Glyphs.for_stream(SimpleNamespace(encoding="utf-8"))  # type: ignore[arg-type]
    console = Console(None, None, glyphs=glyphs, width=80)  # type: ignore[arg-type]
    lines = render_describe(console, WORKFLOW, INSTANCE, inst, now=inst_now)
    assert [line for line in lines if cells(line) > 80] == []
    assert cells("注文") == 4
    assert cells(cut("注文を処理", 5)) <= 5


def test_wrap_breaks_between_words_and_only_splits_a_word_longer_than_a_line() -> None:
    text = "alpha beta gamma delta epsilon " + "x" * 30
    lines = wrap(text, 20, indent="  ", hang="    ")
    assert all(cells(line) <= 20 for line in lines)
    assert lines[0] == "  alpha beta gamma"
    assert lines[1] == "    delta epsilon"
    assert "".join(line.strip() for line in lines[2:]) == "x" * 30
    assert wrap(text, None) == [text]


def test_rich_speed_uses_binary_units_like_the_sizes() -> None:
    pytest.importorskip("rich")
    column = binary_speed_column()
    task = SimpleNamespace(finished_speed=None, speed=963_700_000.0)
    assert str(column.render(task)) == "919.1 MiB/s"
