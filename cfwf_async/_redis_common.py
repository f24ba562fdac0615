"""What both Redis-backed classes need: describing a server and keeping secrets out.

A Redis URL or error text can carry a password; everything shown to people or logs
goes through :func:`scrub` first.
"""

from __future__ import annotations

import re
from typing import Any, Final

try:
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        'cfwf_async.redis needs redis-py: pip install "cfwf_async[redis]"'
    ) from exc

__all__ = ["as_text", "client_from_url", "describe", "host_port", "scrub", "url_password"]

_URL_CREDENTIALS: Final = re.compile(r"(?i)([a-z][a-z0-9+.-]*://)[^@/\s]*@")


def as_text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) and value else None


def host_port(kwargs: dict[str, Any]) -> tuple[str, int | None]:
    path = kwargs.get("path")
    if path:
        return str(path), None
    port = kwargs.get("port", 6379)
    return str(kwargs.get("host", "localhost")), int(port) if port is not None else None


def describe(kwargs: dict[str, Any]) -> str:
    """``host:port/db`` (or ``unix:path/db``), never credentials."""
    host, port = host_port(kwargs)
    db = kwargs.get("db", 0)
    if port is None:
        return f"unix:{host}/{db}"
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port}/{db}"


def url_password(url: str) -> str | None:
    match = re.match(r"(?i)[a-z][a-z0-9+.-]*://([^@/\s]*)@", url)
    if match is None:
        return None
    userinfo = match.group(1)
    return userinfo.split(":", 1)[1] if ":" in userinfo else userinfo or None


def scrub(text: str, password: str | None) -> str:
    """Remove a password and any URL credentials from a text meant for people."""
    text = _URL_CREDENTIALS.sub(r"\1***@", text)
    if password:
        text = text.replace(password, "***")
    return text


def client_from_url(url: object, options: dict[str, Any]) -> aioredis.Redis:
    """A client for the Redis at ``url`` that gives up on a dead server quickly.

    By default a call fails within about 2 seconds (connect and read timeouts of 1 s,
    one reconnect), so a process falls back or skips the cache instead of hanging;
    ``options`` go to :func:`redis.asyncio.from_url` and override those defaults.
    Nothing is connected yet when this returns.
    """
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, got {type(url).__name__}")
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("url must start with redis://, rediss:// or unix://")
    settings: dict[str, Any] = {
        "socket_connect_timeout": 1.0,
        "socket_timeout": 1.0,
        "retry": Retry(NoBackoff(), 1),
        **options,
    }
    try:
        return aioredis.from_url(url, **settings)
    except (ValueError, TypeError) as exc:
        # redis-py's message may quote the URL, password included.
        raise ValueError(
            f"url is not a usable Redis URL: {scrub(str(exc), url_password(url))}"
        ) from None
