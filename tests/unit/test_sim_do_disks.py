"""The DigitalOcean stand-in's droplet disks: copies for snapshots, root's keys."""

from __future__ import annotations

import socket
from pathlib import Path

from sim.digitalocean.disks import OWNED, add_keys, copy, reset, used_gb


def test_a_copy_keeps_links_and_skips_sockets(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    reset(disk, None)
    (disk / "etc/systemd/system/a.service").write_text("[Service]\n")
    wants = disk / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir()
    (wants / "a.service").symlink_to("../a.service")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(disk / "var/lib/meshd/agent.sock"))

        copy(disk, tmp_path / "snapshot")

    snapshot = tmp_path / "snapshot"
    assert (snapshot / "etc/systemd/system/multi-user.target.wants/a.service").is_symlink()
    assert not (snapshot / "var/lib/meshd/agent.sock").exists()
    assert all((snapshot / relative).is_dir() for relative in OWNED)
    assert not (tmp_path / ".snapshot.partial").exists()


def test_a_disk_reset_from_a_snapshot_drops_what_the_snapshot_lacks(tmp_path: Path) -> None:
    snapshot, disk = tmp_path / "snapshot", tmp_path / "disk"
    reset(snapshot, None)
    (snapshot / "var/lib/meshd/x").write_text("one\n")
    reset(disk, None)
    (disk / "var/lib/meshd/y").write_text("later\n")

    reset(disk, snapshot)

    assert (disk / "var/lib/meshd/x").read_text() == "one\n"
    assert not (disk / "var/lib/meshd/y").exists()


def test_keys_are_added_once_with_modes_sshd_accepts(tmp_path: Path) -> None:
    reset(tmp_path, None)
    add_keys(tmp_path, ["ssh-ed25519 AAAA one", "ssh-ed25519 BBBB two"])
    add_keys(tmp_path, ["ssh-ed25519 BBBB two", "ssh-ed25519 CCCC three"])

    keys = tmp_path / "root/.ssh/authorized_keys"
    assert keys.read_text().splitlines() == [
        "ssh-ed25519 AAAA one",
        "ssh-ed25519 BBBB two",
        "ssh-ed25519 CCCC three",
    ]
    assert keys.stat().st_mode & 0o777 == 0o600
    assert keys.parent.stat().st_mode & 0o777 == 0o700


def test_a_size_is_in_gigabytes_and_never_zero(tmp_path: Path) -> None:
    assert used_gb(tmp_path) == 0.01
    (tmp_path / "big").write_bytes(b"\0" * 30_000_000)
    assert used_gb(tmp_path) == 0.03
