"""DigitalOcean's rate limits, per token, on the machine's own time: 5,000 requests an hour,
250 a minute (the burst limit, whose 429 alone carries `retry-after`), and 10 SSH-key listings
a minute. Every answer carries `ratelimit-limit`, `-remaining` and `-reset`."""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from dataclasses import dataclass, field

HOUR = 3600.0
MINUTE = 60.0


@dataclass(slots=True)
class Limits:
    per_hour: int = 5000
    per_minute: int = 250
    key_listings_per_minute: int = 10


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    headers: dict[str, str]
    message: str = ""


@dataclass(slots=True)
class RateLimiter:
    limits: Limits = field(default_factory=Limits)
    _seen: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    _key_listings: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def check(self, token: str, now: float, lists_keys: bool = False) -> Verdict:
        """Count the request if it is allowed; a refused request is not counted."""
        seen = self._seen[token]
        del seen[: bisect.bisect_right(seen, now - HOUR)]
        in_minute = len(seen) - bisect.bisect_right(seen, now - MINUTE)
        if len(seen) >= self.limits.per_hour:
            return Verdict(False, self._headers(seen, now), "API Rate limit exceeded.")
        if in_minute >= self.limits.per_minute:
            oldest = seen[len(seen) - in_minute]
            headers = self._headers(seen, now)
            headers["retry-after"] = str(max(1, math.ceil(oldest + MINUTE - now)))
            return Verdict(False, headers, "Too many requests: the burst limit is reached.")
        if lists_keys:
            listings = self._key_listings[token]
            del listings[: bisect.bisect_right(listings, now - MINUTE)]
            if len(listings) >= self.limits.key_listings_per_minute:
                headers = self._headers(seen, now)
                headers["retry-after"] = str(max(1, math.ceil(listings[0] + MINUTE - now)))
                return Verdict(False, headers, "Too many requests listing SSH keys.")
            listings.append(now)
        seen.append(now)
        return Verdict(True, self._headers(seen, now))

    def _headers(self, seen: list[float], now: float) -> dict[str, str]:
        reset = math.ceil(seen[0] + HOUR) if seen else math.ceil(now)
        return {
            "ratelimit-limit": str(self.limits.per_hour),
            "ratelimit-remaining": str(max(0, self.limits.per_hour - len(seen))),
            "ratelimit-reset": str(reset),
        }

    def headers_for(self, token: str, now: float) -> dict[str, str]:
        """The headers of an answer to an allowed request (counted already)."""
        seen = self._seen[token]
        del seen[: bisect.bisect_right(seen, now - HOUR)]
        return self._headers(seen, now)

    def reset(self) -> None:
        self._seen.clear()
        self._key_listings.clear()
