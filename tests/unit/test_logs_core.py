"""The pure parts of the logs: the byte budget, Docker's json-file lines, batches of a bounded
size, a gap shown where the shipper dropped lines, and `--since`."""

from __future__ import annotations

import datetime

import pytest

from meshd.core.logs import (
    MAX_LINE_CHARS,
    ByteBudget,
    batches,
    docker_json_line,
    parse_since,
    plain_line,
    rows,
)
from protocol.logs import LogBatch, LogLine


def test_the_budget_lets_a_burst_through_then_its_rate() -> None:
    budget = ByteBudget(rate=100, burst=1000)
    assert budget.take("noisy", 900, now=0.0)
    assert not budget.take("noisy", 200, now=0.0)  # 100 left
    assert budget.take("quiet", 900, now=0.0)  # each project has its own
    assert budget.take("noisy", 200, now=1.0)  # 100 + 100 a second
    assert not budget.take("noisy", 50, now=1.0)
    assert budget.take("noisy", 1000, now=100.0)  # saved up to the burst, no more
    assert not budget.take("noisy", 1, now=100.0)


def test_a_docker_json_line_keeps_its_time_and_stream() -> None:
    raw = '{"log":"boom\\n","stream":"stderr","time":"2026-12-01T09:00:00.123456789Z"}'
    line = docker_json_line(raw, fallback_at=5.0)
    expected = datetime.datetime(2026, 12, 1, 9, 0, 0, 123456, tzinfo=datetime.UTC).timestamp()
    assert line == LogLine(at=expected, text="boom", stream="err")
    assert docker_json_line('{"log":"x","time":"soon"}', fallback_at=5.0) == LogLine(
        at=5.0, text="x"
    )
    assert docker_json_line("not json", fallback_at=5.0) is None


def test_a_very_long_line_is_cut() -> None:
    line = plain_line("x" * (MAX_LINE_CHARS * 2), at=1.0)
    assert len(line.text) < MAX_LINE_CHARS + 5 and line.text.endswith("…")


def test_batches_stay_near_their_size_and_keep_the_order() -> None:
    lines = [LogLine(at=float(i), text="y" * 100) for i in range(50)]
    groups = batches(lines, max_bytes=1000)
    assert [line for group in groups for line in group] == lines
    assert all(sum(len(line.text) for line in group) <= 1100 for group in groups)
    assert len(groups) > 1


def test_dropped_lines_show_as_a_gap_before_the_batch() -> None:
    batch = LogBatch(
        droplet="web1",
        project="shop",
        env="prod",
        service="backend",
        slot=1,
        lines=(LogLine(at=3.0, text="after"),),
        dropped=12,
    )
    gap, line = rows(batch)
    assert gap.stream == "meta" and "12 lines dropped" in gap.text
    assert (line.source, line.text, line.droplet) == ("backend.1", "after", "web1")


def test_since_is_a_duration_or_a_time() -> None:
    assert parse_since("10m", now=1000.0) == 400.0
    assert parse_since("2h", now=10_000.0) == 10_000.0 - 7200
    assert (
        parse_since("2026-12-01T09:00+00:00", now=0.0)
        == datetime.datetime(2026, 12, 1, 9, tzinfo=datetime.UTC).timestamp()
    )
    with pytest.raises(ValueError, match="neither a duration"):
        parse_since("yesterday", now=0.0)
