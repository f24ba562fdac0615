"""A real, throwaway ``redis-server`` for tests: loopback, a password, no persistence.

``running_redis(workdir)`` starts one on a free port, waits until it answers ``PING``
(readiness, with a deadline) and stops it on exit. Tests skip when the binary is absent
(``apt-get install redis-server``; ``.ci/run`` installs it).
"""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis

REDIS_SERVER = shutil.which("redis-server") or (
    "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
)


@dataclass(frozen=True)
class RedisServer:
    """Where the test server listens and how to log in."""

    host: str
    port: int
    password: str

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@{self.host}:{self.port}/0"


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(server: RedisServer, proc: subprocess.Popen[bytes], deadline: float) -> None:
    client = redis.Redis(
        host=server.host, port=server.port, password=server.password,
        socket_connect_timeout=0.5, socket_timeout=0.5,
    )
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {proc.returncode} at start")
            try:
                if client.ping():
                    return
            except redis.exceptions.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not answer PING within 10 s")
            time.sleep(0.02)
    finally:
        client.close()


@contextmanager
def running_redis(
    workdir: Path, *, port: int | None = None, password: str | None = None
) -> Iterator[RedisServer]:
    """Run ``redis-server`` (on ``port`` if given, else a free one) until the block ends."""
    if REDIS_SERVER is None:
        raise RuntimeError("redis-server is not installed")
    password = password or "pw-" + secrets.token_hex(12)
    last: Exception | None = None
    for _ in range(3):  # another process may grab the free port before the server binds it
        server = RedisServer("127.0.0.1", port or free_port(), password)
        log = (workdir / f"redis-{server.port}.log").open("wb")
        proc = subprocess.Popen(
            [
                REDIS_SERVER,
                "--bind", server.host,
                "--port", str(server.port),
                "--requirepass", password,
                "--save", "",
                "--appendonly", "no",
                "--dir", str(workdir),
                "--daemonize", "no",
                "--logfile", "",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_ready(server, proc, time.monotonic() + 10.0)
        except RuntimeError as exc:
            last = exc
            _stop(proc)
            log.close()
            continue
        try:
            yield server
        finally:
            _stop(proc)
            log.close()
        return
    raise RuntimeError(f"could not start redis-server: {last}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
