"""The DigitalOcean stand-in from end to end, as a provider will use it (root only): its own
process at speed 20, driven through pydo; its droplets answer SSH with the account's key, read
their metadata, run their user data, really stop when powered off, come back from their
snapshots, sit behind their firewalls and answer on their reserved IP. Every answer the
stand-in gave is checked against the API description."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncssh
import pytest
import pytest_asyncio

from sim.digitalocean.machines import Networks
from sim.digitalocean.namespaces import Layout
from tests.support import namespaces_allowed, unavailable
from tests.support.digitalocean import (
    StandProcess,
    fetch,
    finished,
    host_pids_running,
    reachable,
    run_over_ssh,
    start_process,
)
from tests.support.waiting import until

pytestmark = pytest.mark.asyncio(loop_scope="module")

USER_DATA = """\
#!/bin/sh
echo "first boot of $(hostname)" > /var/lib/meshd/hello
"""


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandProcess]:
    namespaces_allowed()
    if shutil.which("unshare") is None or not os.path.exists("/usr/sbin/sshd"):
        unavailable("unshare or sshd missing (Debian: util-linux, openssh-server)")
    running = start_process(tmp_path_factory.mktemp("do"), "--speed", "20")
    try:
        yield running
    finally:
        status = running.stop()
        errors = running.stderr.read_text()
        assert status == 0, errors[-3000:]
        assert "Traceback" not in errors, errors[-3000:]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def droplet(stand_in: StandProcess) -> AsyncIterator[dict[str, Any]]:
    """One droplet made through the API with the account's key and user data; with `key`
    (the private key) and `settings` (the stand-in's, from its control endpoint)."""
    key = asyncssh.generate_private_key("ssh-ed25519")
    async with stand_in.client() as do:
        public = key.export_public_key().decode().strip()
        made_key = await do.ssh_keys.create({"name": "operator", "public_key": public})
        answer = await do.droplets.create(
            {
                "name": "web-1",
                "region": "nyc3",
                "size": "s-1vcpu-1gb",
                "image": "debian-12-x64",
                "ssh_keys": [made_key["ssh_key"]["fingerprint"]],
                "tags": ["mesh"],
                "user_data": USER_DATA,
            }
        )
        await finished(do, answer["links"]["actions"][0]["id"])
        made = (await do.droplets.get(answer["droplet"]["id"]))["droplet"]
        yield {**made, "key": key, "settings": await stand_in.control()}


async def act(stand_in: StandProcess, droplet_id: int, body: dict[str, Any]) -> None:
    async with stand_in.client() as do:
        action = (await do.droplet_actions.post(droplet_id, body))["action"]
        await finished(do, action["id"])


def public_ip(droplet: dict[str, Any]) -> str:
    return next(n["ip_address"] for n in droplet["networks"]["v4"] if n["type"] == "public")


async def ssh(droplet: dict[str, Any], command: str, address: str | None = None) -> str:
    """SSH as root with the account's key; "active" is not SSH-ready, so try for a while."""
    target = address or public_ip(droplet)
    for _ in range(50):
        try:
            return await run_over_ssh(droplet["key"], target, command)
        except (OSError, asyncssh.Error):
            await asyncio.sleep(0.2)
    return await run_over_ssh(droplet["key"], target, command)


async def test_a_created_droplet_answers_ssh_with_the_accounts_key_and_its_metadata(
    droplet: dict[str, Any],
) -> None:
    url = droplet["settings"]["metadata_url"]
    output = await ssh(droplet, f"cat /var/lib/meshd/hello; {fetch(url + 'id', url + 'tags/')}")
    assert output.splitlines() == ["first boot of web-1", str(droplet["id"]), "mesh"]
    with pytest.raises((asyncssh.PermissionDenied, asyncssh.DisconnectError)):
        stranger = asyncssh.generate_private_key("ssh-ed25519")
        await run_over_ssh(stranger, public_ip(droplet), "true")


async def test_power_off_through_the_api_stops_its_processes(
    stand_in: StandProcess, droplet: dict[str, Any]
) -> None:
    marker = f"2000.{secrets.randbelow(10**9)}"
    await ssh(droplet, f"setsid nohup sleep {marker} >/dev/null 2>&1 </dev/null &")
    await until(lambda: host_pids_running(marker), "host_pids_running(marker)")

    await act(stand_in, droplet["id"], {"type": "power_off"})

    assert host_pids_running(marker) == []
    assert not await reachable(public_ip(droplet), 22)
    await until(
        lambda: droplet_status(stand_in, droplet["id"], "off"),
        "the droplet to read off",
    )
    await act(stand_in, droplet["id"], {"type": "power_on"})
    assert await ssh(droplet, "echo back") == "back"


async def droplet_status(stand_in: StandProcess, droplet_id: int, status: str) -> bool:
    async with stand_in.client() as do:
        return bool((await do.droplets.get(droplet_id))["droplet"]["status"] == status)


async def test_a_rebuild_from_a_snapshot_restores_its_files_and_keeps_its_address(
    stand_in: StandProcess, droplet: dict[str, Any]
) -> None:
    await ssh(droplet, "echo before > /var/lib/meshd/state")
    await act(stand_in, droplet["id"], {"type": "snapshot", "name": "web-1-gold"})
    await ssh(droplet, "echo after > /var/lib/meshd/state")
    async with stand_in.client() as do:
        [snapshot] = (await do.snapshots.list(resource_type="droplet"))["snapshots"]
        assert snapshot["name"] == "web-1-gold"

    await act(stand_in, droplet["id"], {"type": "rebuild", "image": int(snapshot["id"])})

    assert await ssh(droplet, "cat /var/lib/meshd/state") == "before"
    async with stand_in.client() as do:
        rebuilt = (await do.droplets.get(droplet["id"]))["droplet"]
    assert public_ip(rebuilt) == public_ip(droplet)
    assert rebuilt["image"]["id"] == int(snapshot["id"])


async def test_a_firewall_blocks_what_it_does_not_allow(
    stand_in: StandProcess, droplet: dict[str, Any]
) -> None:
    address = public_ip(droplet)
    await ssh(droplet, "setsid nohup python3 -m http.server 8080 >/dev/null 2>&1 </dev/null &")
    await until(lambda: reachable(address, 8080), "reachable(address, 8080)")
    gateway = droplet["settings"]["networks"]["public"] + ".1"
    async with stand_in.client() as do:
        firewall = (
            await do.firewalls.create(
                {
                    "name": "ssh-only",
                    "tags": ["mesh"],
                    "inbound_rules": [
                        {"protocol": "tcp", "ports": "22", "sources": {"addresses": [gateway]}}
                    ],
                    "outbound_rules": [
                        {
                            "protocol": "tcp",
                            "ports": "all",
                            "destinations": {"addresses": ["0.0.0.0/0"]},
                        },
                    ],  # fmt: skip
                }
            )
        )["firewall"]
        try:
            await until(lambda: not_reachable(address, 8080), "not_reachable(address, 8080)")
            assert await ssh(droplet, "echo still") == "still"
        finally:
            await do.firewalls.delete(firewall["id"])
    await until(lambda: reachable(address, 8080), "reachable(address, 8080)")
    await ssh(droplet, "pkill -f 'http[.]server 8080' || true")


async def not_reachable(address: str, port: int) -> bool:
    return not await reachable(address, port)


async def test_a_reserved_ip_reaches_the_droplet_it_is_assigned_to(
    stand_in: StandProcess, droplet: dict[str, Any]
) -> None:
    async with stand_in.client() as do:
        made = await do.reserved_ips.create({"droplet_id": droplet["id"]})
        ip = made["reserved_ip"]["ip"]
        await finished(do, made["links"]["actions"][0]["id"])
        try:
            assert await ssh(droplet, "hostname", address=ip) == "web-1"
        finally:
            await do.reserved_ips.delete(ip)


async def test_stopping_the_stand_in_leaves_nothing_of_its_droplets_behind(
    stand_in: StandProcess, droplet: dict[str, Any]
) -> None:
    """Runs last in this module: SIGTERM powers every droplet off and removes what it made."""
    assert (await stand_in.control(path="/violations"))["violations"] == []
    layout = Layout(Networks(**droplet["settings"]["networks"]))
    marker = f"3000.{secrets.randbelow(10**9)}"
    await ssh(droplet, f"setsid nohup sleep {marker} >/dev/null 2>&1 </dev/null &")
    await until(lambda: host_pids_running(marker), "host_pids_running(marker)")
    assert layout.namespace(droplet["id"]) in namespace_names()

    assert stand_in.stop() == 0

    assert host_pids_running(marker) == []
    assert [n for n in namespace_names() if n.startswith(f"do-{layout.number}-")] == []
    links = output_of("ip", "-o", "link")
    assert layout.public_bridge not in links and layout.private_bridge not in links


def output_of(*command: str) -> str:
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


def namespace_names() -> list[str]:
    return [line.split()[0] for line in output_of("ip", "netns", "list").splitlines() if line]
