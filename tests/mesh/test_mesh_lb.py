"""The `lb` role on a real local mesh with real nginx: the entry address reaches every
instance of a replicated service, an unhealthy instance leaves the upstream and comes back,
a JetStream election (the leases stream's leader paused) does not take the entry point down,
and killing the lb holder moves the entry point to another droplet."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support import freeze, nginx_binary
from tests.support.mesh import (
    BACKEND_ONLY,
    LocalMesh,
    http_get,
    local_mesh,
    requests_to,
    write_project,
)
from tests.support.waiting import wait_for

SERVICES = BACKEND_ONLY


@pytest.fixture(autouse=True)
def nginx_installed() -> None:
    nginx_binary()


def backend(mesh: LocalMesh) -> dict[str, Any]:
    status = mesh.status()
    return next(s for s in status["services"] if (s["env"], s["service"]) == ("prod", "backend"))


def lb_holder(mesh: LocalMesh) -> str | None:
    result = mesh.meshctl("status", "--json")
    return json.loads(result.stdout)["lb"] if result.returncode == 0 else None


def served_from(url: str) -> str | None:
    try:
        page = http_get(url)
    except OSError:
        return None
    found = re.search(r"served from ([0-9.]+)", page)
    return found.group(1) if found else None


def instance_pid(mesh: LocalMesh, droplet: str, key: str) -> int:
    body = http_get(f"http://{mesh.address(droplet)}:8080/health")
    (found,) = [
        i
        for i in json.loads(body)["instances"]
        if f"{i['project']}.{i['env']}.{i['service']}" == key
    ]
    return int(found["runtime_id"])


def test_the_entry_point_balances_follows_health_and_moves_with_its_holder(
    tmp_path: Path,
) -> None:
    csv, config = write_project(tmp_path, ["shop,3,s-1vcpu-2gb,s-1vcpu-1gb"], SERVICES)
    with local_mesh(tmp_path / "mesh", droplets=3) as mesh:
        mesh.ok("publish", csv, "--deploy-config", config, "--wait", timeout=180)
        status = mesh.status()
        entry = status["entry_url"]
        holder = wait_for(
            lambda: (s := mesh.status_if_readable()) and s["lb"], what="an lb holder"
        )  # master, usually
        url = f"{entry}/shop-prod/backend/"
        members = backend(mesh)["upstream"]
        assert len(members) == 2
        addresses = {m.split(":")[0] for m in members}

        # Through the entry point, every instance answers.
        seen = wait_for(
            lambda: {served_from(url) for _ in range(8)} >= addresses or None,
            what="both instances behind the entry point",
        )
        assert seen
        assert http_get(f"{entry}/health") == "healthy\n"

        # A paused instance fails its health checks, leaves the upstream, comes back.
        droplet = next(d for d in backend(mesh)["droplets"] if mesh.address(d) in addresses)
        pid = instance_pid(mesh, droplet, "shop.prod.backend")
        freeze(pid)
        try:
            wait_for(lambda: len(backend(mesh)["upstream"]) == 1, timeout=60, what="it to leave")
            remaining = backend(mesh)["upstream"][0].split(":")[0]
            assert {served_from(url) for _ in range(4)} == {remaining}
        finally:
            os.kill(pid, signal.SIGCONT)
        wait_for(lambda: len(backend(mesh)["upstream"]) == 2, timeout=60, what="it to return")

        # The holder hands the leases stream's leadership to another server; pausing that
        # server costs an election, during which the holder cannot renew: it serves on.
        leader = wait_for(
            lambda: (found := mesh.bucket_leader("mesh_leases")) not in (None, holder) and found,
            what="the leases stream led by another droplet than the lb holder",
        )
        paused = mesh.pid_of(leader, "nats-server")
        with requests_to(url) as load:
            freeze(paused)
            time.sleep(8)
            os.kill(paused, signal.SIGCONT)
            time.sleep(2)
        assert load.sent > 100
        # Without lingering, the whole election (about 5 s of 10) would fail.
        assert len(load.failed) <= load.sent // 20, load.failed[:5]
        wait_for(lambda: lb_holder(mesh) is not None, what="an lb holder after the election")
        holder = wait_for(
            lambda: (s := mesh.status_if_readable()) and s["lb"], what="the lb holder"
        )

        # The holder dies: another droplet takes the lease and the entry address.
        group = next(d["pgid"] for d in mesh.account["droplets"].values() if d["name"] == holder)
        os.killpg(group, signal.SIGKILL)
        wait_for(lambda: served_from(url) in addresses, timeout=30, what="the entry to serve again")
        # JetStream elects new leaders after a core droplet's death: status may time out a while.
        wait_for(lambda: lb_holder(mesh) not in (None, holder), what="a new lb holder")
