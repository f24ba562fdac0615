"""The benchmark script still runs end to end (tiny configuration; no timing asserted)."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "benchmarks" / "run.py"


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc for RSS")
def test_quick_benchmark_prints_every_table(tmp_path: Path) -> None:
    png = tmp_path / "scaling.png"
    markdown = tmp_path / "results.md"
    done = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--png", str(png), "--markdown", str(markdown)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    for heading in (
        "### 1. get_instance throughput",
        "### 2. Latency at concurrency 1",
        "### 3. Scaling",
        "### 4. Decode only",
        "### 5. Streaming",
    ):
        assert heading in out
    # Every client that ran got a row, and the official SDK only when it is installed.
    assert "| cfwf_async | " in out
    assert "| bare aiohttp | " in out
    assert "| cfwf_async StepStream | " in out
    # The TLS streaming rows run wherever the openssl command can make a certificate.
    if shutil.which("openssl"):
        assert out.count("| cfwf_async StepStream | ") == 2
    else:
        assert "Over TLS: skipped" in out
    official_row = re.search(r"^\| official \| [0-9]", out, re.MULTILINE)
    assert (official_row is not None) == _have("cloudflare")
    assert markdown.read_text().strip().splitlines()[-1].startswith("Load average")
    assert png.exists() == _have("matplotlib")
