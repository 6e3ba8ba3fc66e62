"""Reading log files as they grow: whole lines only, from the start again after truncation or
replacement, the last lines only of a file met late, and offsets kept across a restart."""

from __future__ import annotations

from pathlib import Path

from meshd.agent.logtail import FIRST_READ_BYTES, Tails


def test_whole_lines_once_each_and_a_partial_line_waits(tmp_path: Path) -> None:
    log = tmp_path / "output.log"
    log.write_text("one\ntwo\nthr")
    tails = Tails(tmp_path / "offsets.json")
    assert tails.read(log) == ["one", "two"]
    assert tails.read(log) == []
    with log.open("a") as f:
        f.write("ee\nfour\n")
    assert tails.read(log) == ["three", "four"]


def test_a_truncated_or_replaced_file_is_read_from_its_start(tmp_path: Path) -> None:
    log = tmp_path / "output.log"
    log.write_text("a long first line\n")
    tails = Tails(tmp_path / "offsets.json")
    assert tails.read(log) == ["a long first line"]
    log.write_text("new\n")  # truncated: shorter than what was read
    assert tails.read(log) == ["new"]
    log.unlink()
    assert tails.read(log) == []
    log.write_text("again\n")
    assert tails.read(log) == ["again"]


def test_a_file_met_late_is_read_from_its_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "output.log"
    line = "z" * 99 + "\n"
    log.write_text(line * (3 * FIRST_READ_BYTES // len(line)))
    read = Tails(tmp_path / "offsets.json").read(log)
    assert 0 < len(read) <= FIRST_READ_BYTES // len(line) and set(read) == {"z" * 99}


def test_offsets_survive_a_restart(tmp_path: Path) -> None:
    log = tmp_path / "output.log"
    log.write_text("before\n")
    tails = Tails(tmp_path / "offsets.json")
    assert tails.read(log) == ["before"]
    tails.save()
    with log.open("a") as f:
        f.write("while the agent was away\n")
    assert Tails(tmp_path / "offsets.json").read(log) == ["while the agent was away"]
