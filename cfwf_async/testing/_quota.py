"""The account quota behind ``FakeWorkflowsAPI.set_ratelimit``: Cloudflare's headers."""

from __future__ import annotations

import math
import time

from .._protocol import check_int, check_timeout

__all__ = ["SimulatedQuota"]


class SimulatedQuota:
    """A request quota over fixed windows; ``left`` is what the next answer reports."""

    def __init__(
        self, remaining: int, reset: float, quota: int, window: float, policy: str
    ) -> None:
        self.left = check_int("remaining", remaining)
        self.quota = check_int("quota", quota, minimum=1)
        self.reset_at = time.monotonic() + check_timeout("reset", reset)
        self.window = check_timeout("window", window)
        self.policy = policy.replace('"', "")

    def take(self, headers: dict[str, str]) -> int:
        """Count one request, add the headers that report it; 1 if it was over the quota."""
        now = time.monotonic()
        if now >= self.reset_at:
            windows = math.floor((now - self.reset_at) / self.window) + 1
            self.reset_at += windows * self.window
            self.left = self.quota - 1
        over = 1 if self.left < 0 else 0
        reset = max(1, math.ceil(self.reset_at - now))
        headers["Ratelimit"] = f'"{self.policy}";r={max(0, self.left)};t={reset}'
        headers["Ratelimit-Policy"] = f'"{self.policy}";q={self.quota};w={self.window:g}'
        self.left -= 1
        return over
