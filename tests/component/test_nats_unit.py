"""A droplet's nats-server follows its `jetstream.json` (real nats-server): it runs while the
droplet is a JetStream server, restarts on a fresh store when a move asks for one (the old
store set aside, not deleted), comes back when it dies, and stops when the droplet is no
longer a server."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from meshd.agent.config import CoreServer, MeshConfig, ServerPlacement, new_passwords
from meshd.local.droplet import NatsUnit
from tests.support.nats import loopback_addresses, wait_for_port
from tests.support.waiting import wait_for


def droplet(directory: Path, address: str) -> MeshConfig:
    directory.mkdir()
    config = MeshConfig(
        mesh="unit", core=(CoreServer("master", address),), passwords=new_passwords()
    )
    (directory / "user_data").write_text(config.to_json())
    identity = {"id": "1", "name": "master", "size": "s-1vcpu-1gb", "address": address}
    (directory / "droplet.json").write_text(json.dumps(identity))
    return config


def ticked(unit: NatsUnit, seconds: float = 0.5) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        unit.tick(time.monotonic())
        time.sleep(0.05)


def test_nats_server_follows_the_placement_file(tmp_path: Path) -> None:
    (address,) = loopback_addresses(1)
    home = tmp_path / "master-1"
    config = droplet(home, address)
    unit = NatsUnit(home)
    try:
        ticked(unit)  # no file yet: user_data's core servers, master among them
        wait_for_port(address, 4222)
        first = unit.child.process
        assert first is not None and first.poll() is None
        wait_for((home / "jetstream").exists, timeout=10, what="a store")

        ServerPlacement(1, config.core, fresh_store=True).save(home)
        ticked(unit)
        wait_for_port(address, 4222)
        second = unit.child.process
        assert second is not None and second is not first and first.poll() is not None
        assert (home / "jetstream.1").is_dir()  # set aside, not deleted

        os.kill(second.pid, signal.SIGKILL)  # it comes back, as under systemd
        wait_for(
            lambda: ticked(unit, 0.2) or (unit.child.process not in (None, second)),
            timeout=10,
            what="nats-server restarted",
        )

        other = CoreServer("web1", "127.0.0.9")
        ServerPlacement(2, (other,)).save(home)
        ticked(unit)
        assert unit.child.process is None and unit.running_text is None
    finally:
        unit.stop()


def test_a_rebuilt_clustered_server_starts_empty_and_a_lone_one_keeps_its_store(
    tmp_path: Path,
) -> None:
    addresses = loopback_addresses(3)
    for clustered in (False, True):
        home = tmp_path / f"master-{clustered}"
        config = droplet(home, addresses[0])
        servers = (
            CoreServer("master", addresses[0]),
            CoreServer("web1", addresses[1]),
            CoreServer("web2", addresses[2]),
        )
        ServerPlacement(3, servers if clustered else config.core).save(home)
        (home / "jetstream").mkdir()  # as the snapshot of an earlier droplet left it
        (home / "jetstream" / "old-log").write_text("rolled back")
        (home / "jetstream.owner").write_text("earlier-droplet")
        unit = NatsUnit(home)
        try:
            ticked(unit)
            set_aside = home / "jetstream.rebuilt-earlier-droplet" / "old-log"
            assert set_aside.exists() == clustered
            assert (home / "jetstream" / "old-log").exists() == (not clustered)
            assert (home / "jetstream.owner").read_text() == "1"
        finally:
            unit.stop()


def test_a_droplet_rebuilt_from_an_older_snapshot_joins_the_servers_of_its_user_data(
    tmp_path: Path,
) -> None:
    """The snapshot was taken when master ran JetStream alone (epoch 0); JetStream has moved
    to three servers since (epoch 2), and the recovery leader made the replacement's
    user_data then. Following the snapshot's file would start a lone server on the stale
    store beside the cluster: two meshes."""
    addresses = loopback_addresses(3)
    home = tmp_path / "master-1"
    config = droplet(home, addresses[0])
    servers = (
        CoreServer("master", addresses[0]),
        CoreServer("web1", addresses[1]),
        CoreServer("web2", addresses[2]),
    )
    ServerPlacement(0, config.core).save(home)  # the snapshot's day
    (home / "user_data").write_text(config.with_servers(servers, 2).to_json())
    (home / "jetstream").mkdir()
    (home / "jetstream" / "old-log").write_text("rolled back")
    (home / "jetstream.owner").write_text("earlier-droplet")
    unit = NatsUnit(home)
    try:
        ticked(unit)
        placement = ServerPlacement.load(
            home, MeshConfig.from_json((home / "user_data").read_text())
        )
        assert (placement.epoch, placement.servers) == (2, servers)
        conf = (home / "nats-server.conf").read_text()
        assert addresses[1] in conf and addresses[2] in conf  # routes to the other two
        assert (home / "jetstream.rebuilt-earlier-droplet" / "old-log").exists()

        # A later move (epoch 3) written to the file wins over user_data again.
        ServerPlacement(3, config.core).save(home)
        assert ServerPlacement.load(home, config.with_servers(servers, 2)).epoch == 3
    finally:
        unit.stop()
