"""A droplet's nats-server follows its `jetstream.json` (real nats-server): it runs while the
droplet is a JetStream server, restarts on a fresh store when a move asks for one (the old
store set aside, not deleted), comes back when it dies, and stops when the droplet is no
longer a server. On a TLS mesh the droplet renews its own certificate before it expires, and
nats-server serves the new one without a restart."""

from __future__ import annotations

import datetime
import json
import os
import signal
import socket
import ssl
import time
from pathlib import Path

from cryptography import x509

from meshd.agent.config import (
    CA_CERT_FILE,
    CA_KEY_FILE,
    LEAF_CERT_FILE,
    LEAF_KEY_FILE,
    CoreServer,
    MeshConfig,
    ServerPlacement,
    new_passwords,
)
from meshd.core.meshca import MeshCA, issue_leaf, make_ca
from meshd.local.droplet import NatsUnit
from tests.support.nats import loopback_addresses, wait_for_port
from tests.support.waiting import wait_for


def droplet(directory: Path, address: str, tls_ca: str = "") -> MeshConfig:
    directory.mkdir()
    config = MeshConfig(
        mesh="unit",
        core=(CoreServer("master", address),),
        passwords=new_passwords(),
        tls_ca=tls_ca,
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


def served_certificate_ends(address: str, ca: MeshCA) -> datetime.datetime:
    """When the certificate the server at `address` shows a TLS client ends."""
    context = ssl.create_default_context(cadata=ca.cert_pem.decode())
    with socket.create_connection((address, 4222), timeout=5) as sock:
        sock.recv(65536)  # INFO, in clear; TLS follows
        with context.wrap_socket(sock, server_hostname="nats.unit.meshd") as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).not_valid_after_utc


def old_certificate(
    tmp_path: Path, with_ca_key: bool
) -> tuple[Path, str, MeshCA, datetime.datetime]:
    """A TLS droplet whose certificate has 80 days left (and, on an older mesh, the CA's key
    as a file): its directory, address, CA and now."""
    (address,) = loopback_addresses(1)
    now = datetime.datetime.now(datetime.UTC)
    ca = make_ca("unit", now - datetime.timedelta(days=700))
    home = tmp_path / "master-1"
    droplet(home, address, tls_ca=ca.cert_pem.decode())
    cert, key = issue_leaf(ca, "unit", "master", address, now - datetime.timedelta(days=650))
    files = {CA_CERT_FILE: ca.cert_pem, LEAF_CERT_FILE: cert, LEAF_KEY_FILE: key}
    if with_ca_key:
        files[CA_KEY_FILE] = ca.key_pem
    for name, data in files.items():
        (home / name).parent.mkdir(exist_ok=True)
        (home / name).write_bytes(data)
    return home, address, ca, now


def test_a_droplet_renews_its_certificate_and_nats_server_serves_it_without_a_restart(
    tmp_path: Path,
) -> None:
    home, address, ca, now = old_certificate(tmp_path, with_ca_key=True)
    unit = NatsUnit(home)
    unit.next_certificate_check = float("inf")  # started with the old one, 80 days left
    try:
        ticked(unit)
        wait_for_port(address, 4222)
        server = unit.child.process
        assert served_certificate_ends(address, ca) - now < datetime.timedelta(days=90)

        unit.next_certificate_check = 0.0
        ticked(unit)

        renewed = wait_for(
            lambda: served_certificate_ends(address, ca) - now > datetime.timedelta(days=700),
            timeout=10,
            what="the renewed certificate served",
        )
        assert renewed and unit.child.process is server and server.poll() is None
        assert (home / LEAF_CERT_FILE).stat().st_mode & 0o777 == 0o600
    finally:
        unit.stop()


def test_a_certificate_written_by_the_provisioner_is_served_without_a_restart(
    tmp_path: Path,
) -> None:
    """A droplet without the CA's key (the mesh secret is on the trusted droplets only) gets
    its new certificate written over SSH; nats-server reloads it, keeping its process."""
    home, address, ca, now = old_certificate(tmp_path, with_ca_key=False)
    unit = NatsUnit(home)
    try:
        ticked(unit)
        wait_for_port(address, 4222)
        server = unit.child.process
        assert served_certificate_ends(address, ca) - now < datetime.timedelta(days=90)
        assert not (home / CA_KEY_FILE).exists()  # it renewed nothing itself

        cert, key = issue_leaf(ca, "unit", "master", address, now)  # as the provisioner does
        (home / LEAF_KEY_FILE).write_bytes(key)
        (home / LEAF_CERT_FILE).write_bytes(cert)
        ticked(unit)

        renewed = wait_for(
            lambda: served_certificate_ends(address, ca) - now > datetime.timedelta(days=700),
            timeout=10,
            what="the new certificate served",
        )
        assert renewed and unit.child.process is server and server.poll() is None
    finally:
        unit.stop()
