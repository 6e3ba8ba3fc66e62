"""One rate budget per token, from what DigitalOcean says on every answer: `ratelimit-remaining`
of `ratelimit-limit` until `ratelimit-reset`, and `retry-after` on a burst 429. Pure: the caller
asks how long to wait before its next request and tells what each answer said.

The budget keeps a reserve (`RESERVE`) for the operator's own commands and for recovery: below
it, requests are spread over the time left to the reset instead of spent at once.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

RESERVE = 100  # requests of the hourly 5,000 kept for whoever needs them most
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0


@dataclass(slots=True)
class RateBudget:
    remaining: int | None = None
    reset_at: float = 0.0
    blocked_until: float = 0.0

    def note(self, headers: Mapping[str, object], now: float) -> None:
        """What an answer said: its `ratelimit-*` headers, and `retry-after` on a 429."""
        headers = _lowered(headers)
        remaining = _number(headers.get("ratelimit-remaining"))
        reset = _number(headers.get("ratelimit-reset"))
        if remaining is not None:
            self.remaining = int(remaining)
        if reset is not None:
            self.reset_at = reset
        retry_after = _number(headers.get("retry-after"))
        if retry_after is not None:
            self.blocked_until = max(self.blocked_until, now + retry_after)

    def note_refused(self, headers: Mapping[str, object], now: float) -> None:
        """A 429: without `retry-after` it is the hourly limit, spent until the reset."""
        self.note(headers, now)
        if _number(_lowered(headers).get("retry-after")) is None:
            self.remaining = 0
            self.blocked_until = max(self.blocked_until, self.reset_at, now + 1)

    def wait_s(self, now: float) -> float:
        """How long to wait before the next request."""
        if now < self.blocked_until:
            return self.blocked_until - now
        if self.remaining is None or self.remaining > RESERVE:
            return 0.0
        left = max(0.0, self.reset_at - now)
        return left / max(1, self.remaining)  # spread what is left over the time left


def backoff_s(attempt: int, rng: random.Random | None = None) -> float:
    """Full jitter: a random wait up to an exponentially growing cap (attempt from 1)."""
    cap = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (attempt - 1))
    return (rng or random).uniform(0, cap)


def _lowered(headers: Mapping[str, object]) -> dict[str, object]:
    return {key.lower(): value for key, value in headers.items()}


def _number(value: object) -> float | None:
    if value is None:
        return None
    try:
        return float(str(value))
    except ValueError:
        return None
