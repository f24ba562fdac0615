"""Start a loopback answer server in a child process, for the benchmark scripts.

The child prints ``PORT <n>`` once it listens and exits when its stdin closes, so a
benchmark's server never shares the client's event loop or outlives the benchmark.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator


@contextlib.contextmanager
def server_process(cmd: list[str], what: str) -> Iterator[str]:
    """Run ``cmd``; yield ``http://127.0.0.1:<port>/client/v4`` from its ``PORT`` line."""
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        if not line.startswith("PORT "):
            raise RuntimeError(f"{what} did not start: {line!r}")
        yield f"http://127.0.0.1:{int(line.split()[1])}/client/v4"
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
