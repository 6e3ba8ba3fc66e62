"""The DigitalOcean stand-in's droplet boot: what it reads of systemd units."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from sim.digitalocean.boot import Supervisor, enabled_units, parse_environment_file, parse_unit
from tests.support.waiting import until


def test_a_unit_gives_its_command_environment_and_restart_policy() -> None:
    text = """\
[Unit]
Description=meshd agent
ExecStart=/not/this

[Service]
Environment=A=1 "B=two words"
Environment=C=3
EnvironmentFile=-/etc/meshd/env
WorkingDirectory=/var/lib/meshd
ExecStartPre=/bin/mkdir -p /run/meshd
ExecStart=-/opt/meshd/bin/agent --config \\
    /etc/meshd/agent.toml
Restart=on-failure
RestartSec=2s

[Install]
WantedBy=multi-user.target
"""
    unit = parse_unit("meshd.service", text)

    assert unit is not None
    assert unit.exec_start == ("/opt/meshd/bin/agent", "--config", "/etc/meshd/agent.toml")
    assert unit.exec_start_pre == (("/bin/mkdir", "-p", "/run/meshd"),)
    assert unit.environment == (("A", "1"), ("B", "two words"), ("C", "3"))
    assert unit.environment_files == ("-/etc/meshd/env",)
    assert unit.working_directory == "/var/lib/meshd"
    assert (unit.restart, unit.restart_sec) == ("on-failure", 2.0)


def test_a_unit_without_a_command_is_not_started() -> None:
    assert parse_unit("x.service", "[Service]\nType=oneshot\n") is None


def test_an_environment_file_reads_like_the_shell() -> None:
    text = '# comment\nA=1\nB="two words"\n\nC=\n'

    assert parse_environment_file(text) == {"A": "1", "B": "two words", "C": ""}


def test_only_units_linked_into_multi_user_wants_are_enabled(tmp_path: Path) -> None:
    wants = tmp_path / "multi-user.target.wants"
    wants.mkdir()
    for name in ("linked", "copied", "disabled"):
        (tmp_path / f"{name}.service").write_text(f"[Service]\nExecStart=/bin/{name}\n")
    (wants / "linked.service").symlink_to(tmp_path / "linked.service")
    (wants / "copied.service").write_text("[Service]\nExecStart=/bin/copied\n")
    (wants / "gone.service").symlink_to(tmp_path / "missing.service")
    (wants / "timer.timer").write_text("[Timer]\n")

    names = [unit.name for unit in enabled_units(tmp_path)]

    assert names == ["copied.service", "linked.service"]


async def test_a_reload_starts_new_units_restarts_changed_ones_and_stops_disabled_ones(
    tmp_path: Path,
) -> None:
    wants = tmp_path / "multi-user.target.wants"
    wants.mkdir()

    def enable(name: str, seconds: int) -> None:
        (tmp_path / name).write_text(f"[Service]\nExecStart=/bin/sleep {seconds}\n")
        if not (wants / name).is_symlink():
            (wants / name).symlink_to(tmp_path / name)

    enable("kept.service", 60)
    enable("changed.service", 60)
    enable("dropped.service", 60)
    supervisor = Supervisor({"PATH": "/bin:/usr/bin"}, tmp_path)
    supervisor.start_enabled()
    before = {name: pid for name, (_, pid) in supervisor.running.items()}
    try:
        enable("changed.service", 61)
        enable("new.service", 60)
        (wants / "dropped.service").unlink()

        supervisor.reload()
        await until(
            lambda: _reaped(supervisor, before["changed.service"], before["dropped.service"]),
            "the changed and the dropped unit's old processes ended",
        )

        after = {name: pid for name, (_, pid) in supervisor.running.items()}
        assert sorted(after) == ["changed.service", "kept.service", "new.service"]
        assert after["kept.service"] == before["kept.service"]
        assert after["changed.service"] != before["changed.service"]
        assert supervisor.due == []  # what a reload stopped is not restarted
    finally:
        for _, pid in supervisor.running.values():
            os.killpg(pid, signal.SIGKILL)
        await until(
            lambda: _reaped(supervisor, *(pid for _, pid in supervisor.running.values())),
            "every unit's process ended",
        )


def _reaped(supervisor: Supervisor, *pids: int) -> bool:
    supervisor.reap()
    return not any(pid in supervisor.children for pid in pids)
