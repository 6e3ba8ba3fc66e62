"""The DigitalOcean stand-in's droplets as real machines (root only): two droplets in
namespaces of this machine, driven through `NamespaceMachines` without the HTTP API, reached
over SSH like DigitalOcean droplets."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import pytest
import pytest_asyncio

from sim.digitalocean.hosts import NamespaceMachines
from sim.digitalocean.machines import FirewallPolicy, FirewallRule, MachineSpec
from sim.digitalocean.namespaces import Layout
from tests.support import namespaces_allowed, unavailable
from tests.support.digitalocean import (
    fetch,
    host_pids_running,
    reachable,
    run_over_ssh,
)
from tests.support.waiting import until

pytestmark = pytest.mark.asyncio(loop_scope="module")

UNIT_USER_DATA = """\
#!/bin/sh
echo ran >> /var/lib/meshd/user-data-runs
cat > /etc/systemd/system/marker.service <<'EOF'
[Service]
Environment=GREETING=hello
ExecStart=/bin/sh -c 'echo "$GREETING $METADATA_URL" >> /var/lib/meshd/unit-runs; exec sleep 4102.5'
Restart=always
RestartSec=0.2
EOF
mkdir -p /etc/systemd/system/multi-user.target.wants
ln -s ../marker.service /etc/systemd/system/multi-user.target.wants/marker.service
"""


@dataclass
class Lab:
    machines: NamespaceMachines
    key: asyncssh.SSHKey
    state: Path
    a: MachineSpec  # a plain droplet
    b: MachineSpec  # one whose user data installs and enables a unit

    def disk(self, spec: MachineSpec) -> Path:
        return self.state / "droplets" / str(spec.id) / "disk"


def document(spec: MachineSpec) -> dict[str, Any]:
    return {
        "droplet_id": spec.id,
        "hostname": spec.name,
        "interfaces": {
            "public": [{"ipv4": {"ip_address": spec.public_ip}, "type": "public"}],
            "private": [{"ipv4": {"ip_address": spec.private_ip}, "type": "private"}],
        },
    }


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def lab(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Lab]:
    namespaces_allowed()
    for tool in ("unshare", "ssh-keygen"):
        if shutil.which(tool) is None:
            unavailable(f"{tool} not installed (Debian: util-linux, openssh-client)")
    if not os.path.exists("/usr/sbin/sshd"):
        unavailable("sshd not installed (Debian: apt-get install openssh-server)")
    state = tmp_path_factory.mktemp("do-machines")
    documents: dict[str, dict[str, Any]] = {}
    machines = NamespaceMachines(state, documents.get)
    key = asyncssh.generate_private_key("ssh-ed25519")
    public_key = key.export_public_key().decode().strip()
    net = machines.networks
    a = MachineSpec(101, "alpha", f"{net.public}.2", f"{net.private}.2", (public_key,))
    b = MachineSpec(
        102, "bravo", f"{net.public}.3", f"{net.private}.3", (public_key,), UNIT_USER_DATA
    )
    for spec in (a, b):
        documents[spec.public_ip] = documents[spec.private_ip] = document(spec)
    await machines.start()
    try:
        await asyncio.gather(machines.create(a, None), machines.create(b, None))
        yield Lab(machines, key, state, a, b)
    finally:
        await machines.close()
        assert_nothing_left(Layout(net))


def assert_nothing_left(layout: Layout) -> None:
    """No namespace, interface, route or FORWARD rule of these droplets is left; whatever
    is, is removed before the test fails."""
    left = [
        name
        for name in run("ip", "netns", "list").split()
        if name.startswith(f"do-{layout.number}-")
    ]
    for name in left:
        run("ip", "netns", "del", name)
    links = [
        name
        for name in (
            line.split(":")[1].strip().split("@")[0] for line in run_lines("ip", "-o", "link")
        )
        if name in (layout.public_bridge, layout.private_bridge)
        or name.startswith(f"d{layout.number}p")
        or name.startswith(f"d{layout.number}q")
    ]
    for name in links:
        run("ip", "link", "del", name)
    rules = [
        line for line in run_lines("iptables", "-S", "FORWARD") if layout.public_bridge in line
    ]
    routes = run("ip", "route", "show", "match", f"{layout.networks.public}.200")
    assert (left, links, rules) == ([], [], [])
    assert f"{layout.networks.public}.200" not in routes


def run(*command: str) -> str:
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def run_lines(*command: str) -> list[str]:
    return [line for line in run(*command).splitlines() if line.strip()]


async def ssh(lab: Lab, address: str, command: str) -> str:
    return await run_over_ssh(lab.key, address, command)


def jumps(lab: Lab, spec: MachineSpec) -> list[str]:
    """The droplet's INPUT rules (its firewall's jump, if it has one)."""
    namespace = Layout(lab.machines.networks).namespace(spec.id)
    return run_lines("ip", "netns", "exec", namespace, "iptables", "-S", "INPUT")[1:]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in "ZXx"


async def test_a_droplet_answers_ssh_with_its_key_and_reads_its_metadata(lab: Lab) -> None:
    url = lab.machines.metadata_url
    assert url is not None
    private_url = url.replace(lab.machines.networks.gateway, lab.machines.networks.private_gateway)

    output = await ssh(
        lab,
        lab.a.public_ip,
        f"hostname; {fetch(f'{url}id', f'{private_url}hostname', f'{url}nothing')}",
    )

    assert output.splitlines() == ["alpha", "101", "alpha", "404"]


async def test_power_off_kills_every_process_and_power_on_brings_ssh_back(lab: Lab) -> None:
    marker = f"1000.{secrets.randbelow(10**9)}"
    await ssh(lab, lab.a.public_ip, f"setsid nohup sleep {marker} >/dev/null 2>&1 </dev/null &")
    # `sleep` NUL marker: the sleep itself, not the shell that started it (which matched too,
    # and was gone a moment later)
    [pid] = await until(lambda: host_pids_running(f"sleep\x00{marker}"), "the sleep running")

    await lab.machines.power_off(lab.a.id)

    assert not alive(pid)
    assert not await reachable(lab.a.public_ip, 22)
    with pytest.raises(OSError):
        await ssh(lab, lab.a.public_ip, "true")

    await lab.machines.power_on(lab.a.id)

    assert await ssh(lab, lab.a.public_ip, "echo back") == "back"
    assert host_pids_running(marker) == []


async def test_files_stay_on_the_disk_and_a_rebuild_restores_the_snapshot(lab: Lab) -> None:
    await ssh(lab, lab.a.public_ip, "echo one > /var/lib/meshd/x")
    on_disk = lab.disk(lab.a) / "var/lib/meshd/x"
    assert on_disk.read_text() == "one\n"
    host_file = Path("/var/lib/meshd/x")
    assert not host_file.exists() or host_file.read_text() != "one\n"

    size = await lab.machines.snapshot(lab.a.id, 901)
    await ssh(lab, lab.a.public_ip, "echo two > /var/lib/meshd/x")
    await lab.machines.rebuild(lab.a.id, 901)

    output = await ssh(lab, lab.a.public_ip, "cat /var/lib/meshd/x; ip -4 -o addr show eth0")
    assert output.splitlines()[0] == "one"
    assert f" {lab.a.public_ip}/24 " in output.splitlines()[1]
    assert size >= 0.01
    await lab.machines.delete_snapshot(901)
    assert not (lab.state / "snapshots" / "901").exists()


async def test_a_firewall_allowing_only_ssh_from_the_gateway_blocks_other_ports(lab: Lab) -> None:
    server = await ssh(
        lab,
        lab.b.public_ip,
        "setsid nohup python3 -m http.server 8080 --bind 0.0.0.0 >/dev/null 2>&1 </dev/null & "
        "echo $!",
    )
    try:
        await until(lambda: reachable(lab.b.public_ip, 8080), "reachable(lab.b.public_ip, 8080)")
        ssh_only = FirewallRule("tcp", "22", (lab.machines.networks.gateway,))

        await lab.machines.apply_firewalls({lab.b.id: FirewallPolicy(inbound=(ssh_only,))})
        await lab.machines.apply_firewalls({lab.b.id: FirewallPolicy(inbound=(ssh_only,))})

        assert not await reachable(lab.b.public_ip, 8080)
        assert jumps(lab, lab.b) == ["-A INPUT -j DO-FIREWALL-IN"]
        url = lab.machines.metadata_url
        assert await ssh(lab, lab.b.public_ip, fetch(f"{url}id")) == "102"

        await lab.machines.apply_firewalls({})

        assert await reachable(lab.b.public_ip, 8080)
        assert jumps(lab, lab.b) == []
    finally:
        await lab.machines.apply_firewalls({})
        await ssh(lab, lab.b.public_ip, f"kill {server}")


async def test_a_reserved_ip_answers_ssh_on_its_holder_and_moves(lab: Lab) -> None:
    reserved = f"{lab.machines.networks.public}.200"

    await lab.machines.assign_reserved_ip(reserved, lab.a.id)
    assert await ssh(lab, reserved, "hostname") == "alpha"

    await lab.machines.assign_reserved_ip(reserved, lab.b.id)
    assert await ssh(lab, reserved, "hostname") == "bravo"
    assert reserved not in await ssh(lab, lab.a.public_ip, "ip -4 -o addr show lo")

    await lab.machines.assign_reserved_ip(reserved, None)
    assert reserved not in run("ip", "route", "show", "match", reserved)


async def test_a_volume_moves_between_droplets_and_stays_after_a_reboot(lab: Lab) -> None:
    await lab.machines.attach_volume("vol-1", "data", lab.a.id)
    await ssh(lab, lab.a.public_ip, "echo kept > /mnt/data/f")

    await lab.machines.detach_volume("vol-1", lab.a.id)
    assert await ssh(lab, lab.a.public_ip, "test -e /mnt/data/f && echo yes || echo no") == "no"

    await lab.machines.attach_volume("vol-1", "data", lab.b.id)
    assert await ssh(lab, lab.b.public_ip, "cat /mnt/data/f") == "kept"

    await lab.machines.power_off(lab.b.id)
    await lab.machines.power_on(lab.b.id)
    assert await ssh(lab, lab.b.public_ip, "cat /mnt/data/f") == "kept"

    await lab.machines.detach_volume("vol-1", lab.b.id)
    await lab.machines.delete_volume("vol-1")
    assert not (lab.state / "volumes" / "vol-1").exists()


async def test_user_data_runs_once_and_enabled_units_start_at_every_boot_and_restart(
    lab: Lab,
) -> None:
    units = lab.disk(lab.b) / "var/lib/meshd/unit-runs"
    await until(units.exists, "units.exists")
    runs = units.read_text().splitlines()
    assert runs[0] == f"hello {lab.machines.metadata_url}"

    await lab.machines.power_off(lab.b.id)
    await lab.machines.power_on(lab.b.id)

    await until(
        lambda: len(units.read_text().splitlines()) == len(runs) + 1,
        "the unit to run once more",
    )
    user_data = lab.disk(lab.b) / "var/lib/meshd/user-data-runs"
    assert user_data.read_text() == "ran\n"
    await until(lambda: host_pids_running("sleep\x004102.5"), "host_pids_running('sleep 4102.5')")
    [unit] = host_pids_running("sleep\x004102.5")

    os.kill(unit, signal.SIGKILL)

    await until(
        lambda: len(units.read_text().splitlines()) == len(runs) + 2,
        "the unit to run again",
    )
    await until(
        lambda: host_pids_running("sleep\x004102.5") not in ([], [unit]),
        "the unit restarted",
    )
