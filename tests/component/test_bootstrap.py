"""`bootstrap.py` over SSH on a droplet of the DigitalOcean stand-in (root): a bare droplet
becomes a mesh node running meshd's unit (its supervisor, nats-server and agent); a second
run changes nothing; a changed file restarts the unit; a step that fails says which; a node of
a TLS mesh serves NATS with the certificate its bootstrap wrote, and a second run the same day
changes nothing."""

from __future__ import annotations

import asyncio
import datetime
import json
import shlex
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import pytest
import pytest_asyncio

import bootstrap
from meshd.agent.certificates import tls_files
from meshd.agent.config import (
    LEAF_CERT_FILE,
    LEAF_KEY_FILE,
    CoreServer,
    MeshConfig,
    new_passwords,
)
from meshd.core.meshca import MeshCA, issue_leaf, make_ca
from plugins.providers import DropletRecord, DropletStatus
from tests.support import namespaces_allowed, unavailable
from tests.support.digitalocean import StandProcess, finished, run_over_ssh, start_process
from tests.support.waiting import until

pytestmark = [pytest.mark.component, pytest.mark.asyncio(loop_scope="module")]


@dataclass
class Droplet:
    stand: StandProcess
    key: asyncssh.SSHKey
    id: str
    public: str
    private: str

    def target(self, **options: Any) -> bootstrap.Target:
        return bootstrap.Target(self.public, self.key, python=options.pop("python", PYTHON),
                                **options)  # fmt: skip

    def node(self, runtime: str = "process", passwords: dict[str, str] | None = None,
             ca: MeshCA | None = None) -> bootstrap.Node:  # fmt: skip
        config = MeshConfig(
            mesh="boot",
            core=(CoreServer("boot-1", self.private),),
            passwords=passwords or PASSWORDS,
            runtime={"name": runtime},
            tls_ca=ca.cert_pem.decode() if ca else "",
        )
        identity = {"id": self.id, "name": "boot-1", "size": "s-1vcpu-1gb",
                    "address": self.private}  # fmt: skip
        files = {"droplet.json": json.dumps(identity).encode(),
                 "user_data": config.to_json().encode()}  # fmt: skip
        if ca is not None:
            record = DropletRecord(self.id, "boot-1", "s-1vcpu-1gb", self.private,
                                   DropletStatus.ACTIVE, (), 0.0, self.public)  # fmt: skip
            files.update(tls_files(ca, "boot", record))
        return bootstrap.Node("boot-1", files, runtime)

    async def sh(self, command: str) -> str:
        return await run_over_ssh(self.key, self.public, command)


PYTHON = str(Path(__import__("sys").executable))  # the droplet shares this machine's Python
PASSWORDS = new_passwords()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def droplet(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Droplet]:
    namespaces_allowed()
    for path in ("/usr/sbin/sshd", shutil.which("nginx") or "/usr/sbin/nginx"):
        if not Path(path).exists():
            unavailable(f"{path} not installed (Debian: openssh-server nginx-light)")
    stand = start_process(tmp_path_factory.mktemp("stand"), "--speed", "20")
    try:
        key = asyncssh.generate_private_key("ssh-ed25519")
        do = stand.client()
        try:
            await until(lambda: _ready(stand), "the stand-in is ready", timeout=30)
            uploaded = await do.ssh_keys.create(
                {"name": "boot", "public_key": key.export_public_key().decode().strip()}
            )
            made = await do.droplets.create(
                {"name": "boot-1", "region": "fra1", "size": "s-1vcpu-1gb",
                 "image": "debian-12-x64", "ssh_keys": [uploaded["ssh_key"]["id"]]}
            )  # fmt: skip
            await finished(do, made["links"]["actions"][0]["id"])
            found = (await do.droplets.get(made["droplet"]["id"]))["droplet"]
        finally:
            await do.close()
        v4 = {n["type"]: n["ip_address"] for n in found["networks"]["v4"]}
        yield Droplet(stand, key, str(found["id"]), v4["public"], v4["private"])
    finally:
        stand.stop()


async def _ready(stand: StandProcess) -> bool:
    return bool((await stand.control()).get("ready"))


async def test_a_bare_droplet_becomes_a_node_and_a_second_run_changes_nothing(
    droplet: Droplet,
) -> None:
    first = await bootstrap.bootstrap(droplet.target(), droplet.node())

    assert [s.name for s in first.steps] == [
        "connect", "system", "packages", "python", "code", "files", "unit"
    ]  # fmt: skip
    assert {s.name for s in first.steps if s.changed} == {"code", "files", "unit"}
    supervisor = await until(lambda: _supervisor(droplet), "meshd's unit runs, once")
    await until(lambda: _pids(droplet, "nats-server -c"), "its nats-server runs")
    modes = await droplet.sh("stat -c '%n %a' /var/lib/meshd /var/lib/meshd/droplet.json "
                             "/var/lib/meshd/user_data")  # fmt: skip
    assert modes.splitlines() == [
        "/var/lib/meshd 700", "/var/lib/meshd/droplet.json 600", "/var/lib/meshd/user_data 600"
    ]  # fmt: skip
    unit = await droplet.sh("cat /etc/systemd/system/meshd.service")
    assert f"ExecStart={PYTHON} -m meshd.agent droplet /var/lib/meshd" in unit
    assert "MemoryMax=" in unit

    second = await bootstrap.bootstrap(droplet.target(), droplet.node())

    assert not second.changed, second.steps
    assert await _pids(droplet, "meshd.agent droplet") == supervisor  # not restarted


async def test_a_changed_file_restarts_the_unit(droplet: Droplet) -> None:
    await bootstrap.bootstrap(droplet.target(), droplet.node())
    before = await until(lambda: _supervisor(droplet), "meshd's unit runs, once")

    report = await bootstrap.bootstrap(droplet.target(), droplet.node(passwords=new_passwords()))

    assert {s.name for s in report.steps if s.changed} == {"files", "unit"}
    after = await until(
        lambda: _changed_pids(droplet, before), "meshd's unit restarted with the new files"
    )
    assert after and after != before


async def test_a_failing_step_names_itself_and_keeps_the_droplet(droplet: Droplet) -> None:
    with pytest.raises(bootstrap.BootstrapFailed) as failed:
        await bootstrap.bootstrap(droplet.target(python="/opt/none/bin/python"), droplet.node())

    assert failed.value.step == "python"
    assert "/opt/none/bin/python lacks meshd's dependencies" in str(failed.value)
    assert await droplet.sh("echo still here") == "still here"


async def test_a_refused_key_fails_at_once(droplet: Droplet) -> None:
    stranger = asyncssh.generate_private_key("ssh-ed25519")
    target = bootstrap.Target(droplet.public, stranger, python=PYTHON, connect_timeout_s=60)

    with pytest.raises(bootstrap.BootstrapFailed) as failed:
        await asyncio.wait_for(bootstrap.bootstrap(target, droplet.node()), 30)

    assert failed.value.step == "connect"
    assert "the key was refused" in str(failed.value)


# Run on the droplet: what its nats-server says to a client speaking no TLS.
PLAIN_INFO = """
import json, socket, sys
with socket.create_connection((sys.argv[1], 4222), timeout=5) as sock:
    print(json.loads(sock.recv(65536).decode().removeprefix("INFO ").strip())["tls_required"])
"""


async def test_a_tls_node_serves_nats_with_its_certificate_and_a_second_run_changes_nothing(
    droplet: Droplet,
) -> None:
    ca = make_ca("boot", datetime.datetime.now(datetime.UTC))
    await bootstrap.bootstrap(droplet.target(), droplet.node(ca=ca))
    supervisor = await until(lambda: _supervisor(droplet), "meshd's unit runs, once")
    modes = await droplet.sh("stat -c '%n %a' /var/lib/meshd/secrets/*")
    assert modes.splitlines() == [
        f"/var/lib/meshd/secrets/{name} 600"
        for name in ("mesh-ca.crt", "nats.crt", "nats.key")  # never the CA's key
    ]
    ask = shlex.join([PYTHON, "-c", PLAIN_INFO, droplet.private])
    assert await until(lambda: _quietly(droplet, ask), "nats-server requires TLS") == "True"

    second = await bootstrap.bootstrap(droplet.target(), droplet.node(ca=ca))

    assert not second.changed, second.steps  # the same certificate, issued again
    assert await _pids(droplet, "meshd.agent droplet") == supervisor

    # A renewal writes the certificate files only, and nothing restarts (the supervisor has
    # nats-server reload them); nor does a full bootstrap that brings another certificate.
    yesterday = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
    cert, key = issue_leaf(ca, "boot", "boot-1", droplet.private, yesterday)
    leaf = bootstrap.Node("boot-1", {LEAF_CERT_FILE: cert, LEAF_KEY_FILE: key})
    renewed = await bootstrap.write_files(droplet.target(), leaf)
    assert [s.name for s in renewed.steps] == ["connect", "files"] and renewed.changed
    assert await droplet.sh(f"cat /var/lib/meshd/{LEAF_CERT_FILE}") == cert.decode().strip()
    third = await bootstrap.bootstrap(droplet.target(), droplet.node(ca=ca))
    assert {s.name: s.changed for s in third.steps}["files"]  # today's certificate again
    assert not {s.name: s.changed for s in third.steps}["unit"]
    assert await _pids(droplet, "meshd.agent droplet") == supervisor


async def _quietly(droplet: Droplet, command: str) -> str:
    return await droplet.sh(f"{command} 2>/dev/null || true")


async def _pids(droplet: Droplet, marker: str) -> str:
    pattern = f"[{marker[0]}]{marker[1:]}"  # which the shell running pgrep does not match
    return await droplet.sh(f"pgrep -f {json.dumps(pattern)} | sort || true")


async def _supervisor(droplet: Droplet) -> str:
    """The supervisor's pid once exactly one runs: a unit restarted by an earlier test (the
    droplet is shared) shows the old one and the new one for a moment."""
    found = await _pids(droplet, "meshd.agent droplet")
    return found if found and "\n" not in found else ""


async def _changed_pids(droplet: Droplet, before: str) -> str:
    now = await _supervisor(droplet)
    return now if now and now != before else ""
