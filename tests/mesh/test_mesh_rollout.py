"""`meshctl restart` on a real local mesh behind real nginx: under a continuous request loop
through the entry address no request fails, droplets take turns, and every instance ends up
replaced on its other port."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support import nginx_binary
from tests.support.mesh import (
    BACKEND_ONLY,
    LocalMesh,
    http_get,
    local_mesh,
    requests_to,
    write_project,
)

SERVICES = BACKEND_ONLY


@dataclass
class Turns:
    """When each droplet first reported the new generation of a service running (not waiting
    for its turn), and when healthy."""

    mesh: LocalMesh
    droplets: list[str]
    generation: int
    appeared: dict[str, float] = field(default_factory=dict)
    healthy: dict[str, float] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            for droplet in self.droplets:
                try:
                    body = http_get(f"http://{self.mesh.address(droplet)}:8080/health")
                except OSError:
                    continue
                for i in json.loads(body)["instances"]:
                    if (i["env"], i["service"]) != ("prod", "backend"):
                        continue
                    if i["generation"] >= self.generation and i["runtime_id"]:
                        now = time.monotonic()
                        self.appeared.setdefault(droplet, now)
                        if i["healthy"]:
                            self.healthy.setdefault(droplet, now)
            time.sleep(0.05)


def service(mesh: LocalMesh, env: str) -> dict[str, Any]:
    return next(
        s for s in mesh.status()["services"] if (s["env"], s["service"]) == (env, "backend")
    )


def test_a_rolling_restart_loses_no_request_and_takes_turns(tmp_path: Path) -> None:
    nginx_binary()
    csv, config = write_project(tmp_path, ["shop,3,s-1vcpu-2gb,s-1vcpu-1gb"], SERVICES)
    with local_mesh(tmp_path / "mesh", droplets=3) as mesh:
        mesh.ok("publish", csv, "--deploy-config", config, "--wait", timeout=180)
        entry = mesh.status()["entry_url"]
        prod, uat = service(mesh, "prod"), service(mesh, "uat")
        assert len(prod["upstream"]) == 2 and len(uat["upstream"]) == 1

        # Bad requests change nothing.
        unknown = mesh.meshctl("restart", "nope", "prod")
        assert unknown.returncode == 2 and "no project environment 'nope'" in unknown.stderr
        missing = mesh.meshctl("restart", "shop", "prod", "nosuch")
        assert missing.returncode == 2 and "has no service 'nosuch'" in missing.stderr

        turns = Turns(mesh, prod["droplets"], prod["generation"] + 1)
        watcher = threading.Thread(target=turns.run, daemon=True)
        watcher.start()
        urls = [f"{entry}/shop-prod/backend/", f"{entry}/shop-uat/backend/"]
        with requests_to(*urls) as load:
            time.sleep(1.0)
            done = json.loads(mesh.ok("restart", "shop", "prod", "--json", timeout=200))
            single = json.loads(mesh.ok("restart", "shop", "uat", "backend", "--json"))
            time.sleep(1.0)
        turns.stop.set()
        watcher.join(timeout=10)

        assert load.failed == [], f"{len(load.failed)} of {load.sent} requests failed"
        assert load.sent > 200
        (restarted,) = done["services"]
        assert restarted["service"] == "shop.prod.backend" and restarted["done"]
        assert sorted(restarted["replaced"]) == sorted(prod["droplets"])
        assert single["services"][0]["done"]

        # One droplet after the other: the second started once the first one's was healthy.
        first, second = prod["droplets"]
        assert turns.appeared[second] >= turns.healthy[first]

        after = service(mesh, "prod")
        assert after["generation"] == prod["generation"] + 1
        assert after["healthy"] == 2
        old_ports = {m.split(":")[1] for m in prod["upstream"]}
        new_ports = {m.split(":")[1] for m in after["upstream"]}
        assert len(after["upstream"]) == 2 and not old_ports & new_ports
        names = [e["name"] for e in mesh.status()["events"]]
        assert "restart_requested" in names
