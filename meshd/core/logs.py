"""Log lines as plain data: the shipper's byte budget, Docker's json-file lines, batches of a
bounded size, and the merged view `meshctl logs` prints (docs/logs.md)."""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from protocol.logs import LogBatch, LogLine

MAX_LINE_CHARS = 8192  # a longer line is cut: one line must not fill a batch


@dataclass(slots=True)
class ByteBudget:
    """A token bucket of bytes per project: `rate` a second, at most `burst` saved up. A line
    over the budget is dropped (and counted) by the shipper, so that one noisy project cannot
    fill the stream and evict the others' lines."""

    rate: float
    burst: float
    _level: dict[str, float] = field(default_factory=dict)
    _at: dict[str, float] = field(default_factory=dict)

    def take(self, project: str, size: int, now: float) -> bool:
        level = self._level.get(project, self.burst)
        level = min(self.burst, level + (now - self._at.get(project, now)) * self.rate)
        self._at[project] = now
        if size > level:
            self._level[project] = level
            return False
        self._level[project] = level - size
        return True


def docker_json_line(raw: str, fallback_at: float) -> LogLine | None:
    """One line of Docker's json-file log; None when it is not one."""
    try:
        entry = json.loads(raw)
        text = str(entry["log"]).rstrip("\n")
    except (ValueError, KeyError, TypeError):
        return None
    stream = "err" if entry.get("stream") == "stderr" else "out"
    return LogLine(
        at=_rfc3339(str(entry.get("time", ""))) or fallback_at, text=_cut(text), stream=stream
    )


def plain_line(raw: str, at: float) -> LogLine:
    return LogLine(at=at, text=_cut(raw.rstrip("\r")))


def _cut(text: str) -> str:
    return text if len(text) <= MAX_LINE_CHARS else text[:MAX_LINE_CHARS] + " …"


def _rfc3339(value: str) -> float | None:
    """Docker writes nanoseconds, which `fromisoformat` does not read: cut to microseconds."""
    head, dot, rest = value.partition(".")
    if dot:
        digits = "".join(c for c in rest if c.isdigit())
        zone = rest[len(digits) :]
        value = f"{head}.{digits[:6]}{'+00:00' if zone in ('Z', '') else zone}"
    try:
        return datetime.datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def batches(lines: Iterable[LogLine], max_bytes: int) -> list[tuple[LogLine, ...]]:
    """Consecutive groups of at most about `max_bytes` of text each."""
    groups: list[tuple[LogLine, ...]] = []
    group: list[LogLine] = []
    size = 0
    for line in lines:
        if group and size + len(line.text) > max_bytes:
            groups.append(tuple(group))
            group, size = [], 0
        group.append(line)
        size += len(line.text) + 16
    if group:
        groups.append(tuple(group))
    return groups


@dataclass(frozen=True, slots=True)
class LogRow:
    """One line as `meshctl logs` shows it."""

    at: float
    droplet: str
    source: str  # `<service>` or `<service>.1` (second slot), or a mesh component
    stream: str
    text: str
    project: str = ""
    env: str = ""

    def to_json(self) -> dict[str, object]:
        return {
            "at": self.at,
            "droplet": self.droplet,
            "project": self.project or None,
            "env": self.env or None,
            "source": self.source,
            "stream": self.stream,
            "text": self.text,
        }


def rows(batch: LogBatch) -> list[LogRow]:
    """A batch's lines as rows; a gap the shipper left is a row of its own, before them."""
    source = batch.component or (f"{batch.service}.1" if batch.slot else batch.service)
    found = []
    if batch.dropped and batch.lines:
        gap = f"[{batch.dropped} lines dropped by the shipper]"
        found.append(
            LogRow(batch.lines[0].at, batch.droplet, source, "meta", gap, batch.project, batch.env)
        )
    found += [
        LogRow(line.at, batch.droplet, source, line.stream, line.text, batch.project, batch.env)
        for line in batch.lines
    ]
    return found


def wanted(row: LogRow, grep: str | None, since: float | None) -> bool:
    return (since is None or row.at >= since) and (not grep or grep in row.text)


def prefix(row: LogRow, many_envs: bool) -> str:
    """`<droplet> <env>/<source> |`: like `docker compose logs`, who said it first."""
    source = f"{row.env}/{row.source}" if many_envs and row.env else row.source
    return f"{row.droplet} {source}"


def parse_since(text: str, now: float) -> float:
    """`10m`, `2h`, `30s`, `1d` ago, or an ISO time; ValueError with what would be right."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text and text[-1] in units and text[:-1].isdigit():
        return now - int(text[:-1]) * units[text[-1]]
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ValueError(
            f"--since {text!r} is neither a duration (30s, 10m, 2h, 1d) nor an ISO time "
            "(2026-12-01T09:00)"
        ) from None
