"""The stand-in's clock: API time runs `speed` times faster than the machine's (tests at 20,
benches at 1); at speed 0 it stands still and moves only when told (`advance`)."""

from __future__ import annotations

import time
from datetime import UTC, datetime


class Clock:
    def __init__(self, speed: float = 1.0, start: float | None = None) -> None:
        self._base = time.time() if start is None else start
        self._real = time.monotonic()
        self.speed = speed

    def now(self) -> float:
        """Seconds since the epoch, on the stand-in's time."""
        return self._base + (time.monotonic() - self._real) * self.speed

    def set_speed(self, speed: float) -> None:
        if speed < 0:
            raise ValueError("speed must be 0 or more")
        self._base = self.now()
        self._real = time.monotonic()
        self.speed = speed

    def advance(self, seconds: float) -> None:
        self._base += seconds

    def real_seconds(self, seconds: float) -> float:
        """How long `seconds` of the stand-in's time take on the machine's (inf when stopped)."""
        return seconds / self.speed if self.speed else float("inf")

    def stamp(self, at: float | None = None) -> str:
        """DigitalOcean's timestamp format: `2026-12-02T04:10:00Z`."""
        moment = self.now() if at is None else at
        return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
