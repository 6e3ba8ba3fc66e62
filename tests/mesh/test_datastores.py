"""Real datastores on a real local mesh (process runtime): the example backend counts its
visits in its environment's PostgreSQL and Redis (the built-in ones, with the passwords the
mesh generated), both are healthy by their own protocol, and what they hold survives their
server being SIGKILLed: the agent starts it again on the same data."""

from __future__ import annotations

import html
import json
import os
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

from tests.support.mesh import LocalMesh, hello, http_get, local_mesh, write_project
from tests.support.waiting import wait_for

SERVICES: dict[str, Any] = {
    "backend": hello() | {"secrets": ["db_password", "redis_password"]},
    "frontend": {"enabled": False},
    # database and redis: the seed's defaults, nothing to run of their own
}
COUNTS = re.compile(r"visits: database (\d+), redis (\d+)")


def visits(url: str) -> tuple[int, int] | None:
    """One visit of the backend's page: the counts it shows, None when it counted nothing."""
    try:
        found = COUNTS.search(html.unescape(http_get(url, timeout=10)))
    except OSError:
        return None
    return (int(found[1]), int(found[2])) if found else None


def instance(mesh: LocalMesh, key: str) -> dict[str, Any] | None:
    """The agent's view of the instance `key` on master, once it runs healthy."""
    try:
        body = json.loads(http_get(f"http://{mesh.address('master')}:8080/health"))
    except OSError:
        return None
    for found in body["instances"]:
        if f"{found['project']}.{found['env']}.{found['service']}" == key and found["healthy"]:
            return dict(found)
    return None


def test_the_backend_counts_in_real_datastores_that_keep_their_data_when_killed(
    tmp_path: Path,
) -> None:
    csv, config = write_project(tmp_path, ["shop,1,s-1vcpu-2gb,s-1vcpu-1gb"], SERVICES)
    with local_mesh(tmp_path / "mesh") as mesh:
        mesh.ok("publish", csv, "--deploy-config", config, "--wait", timeout=240)
        status = mesh.status()
        ports = {(s["env"], s["service"]): s["port"] for s in status["services"]}
        url = f"http://{mesh.address('master')}:{ports['prod', 'backend']}/"
        first = wait_for(lambda: visits(url), timeout=60, what="a page that counted")
        assert visits(url) == (first[0] + 1, first[1] + 1)
        # Each environment has its own database: uat's counts start afresh.
        uat = f"http://{mesh.address('master')}:{ports['uat', 'backend']}/"
        assert wait_for(lambda: visits(uat), timeout=60, what="uat's page") == (1, 1)

        for key in ("shop.prod.database", "shop.prod.redis"):
            killed = wait_for(lambda k=key: instance(mesh, k), what=f"{key} healthy")
            os.kill(int(killed["runtime_id"]), signal.SIGKILL)
            wait_for(
                lambda k=key, pid=killed["runtime_id"]: (
                    (found := instance(mesh, k)) and found["runtime_id"] != pid
                ),
                timeout=60,
                what=f"{key} started again",
            )
        counted = wait_for(lambda: visits(url), timeout=60, what="a page that counted again")
        assert counted == (first[0] + 2, first[1] + 2)  # nothing written before was lost


def test_rows_committed_before_their_droplet_is_killed_are_there_after_its_recovery(
    tmp_path: Path,
) -> None:
    # Three droplets: prod's database and redis on shop-web1, a backend on each web droplet.
    csv, config = write_project(tmp_path, ["shop,3,s-1vcpu-2gb,s-1vcpu-1gb"], SERVICES)
    with local_mesh(tmp_path / "mesh") as mesh:
        mesh.ok("publish", csv, "--deploy-config", config, "--wait", timeout=240)
        database = next(
            s for s in mesh.status()["services"] if (s["env"], s["service"]) == ("prod", "database")
        )
        assert database["droplets"] == ["shop-web1"]
        backend = next(
            s for s in mesh.status()["services"] if (s["env"], s["service"]) == ("prod", "backend")
        )
        url = f"http://{mesh.address('shop-web2')}:{backend['port']}/"  # survives the kill
        wait_for(lambda: visits(url), timeout=60, what="a page that counted")
        acknowledged = [counts for _ in range(20) if (counts := visits(url))]
        assert len(acknowledged) == 20

        killed = time.time()
        mesh.ok("chaos", "kill", "shop-web1")
        wait_for(lambda: mesh.recovered("shop-web1", killed), timeout=180, what="web1 rebuilt")
        after = wait_for(lambda: visits(url), timeout=120, what="the database back")
        # Every acknowledged visit is still counted (a lost store would count from 1 again).
        assert after[0] > acknowledged[-1][0] and after[1] > acknowledged[-1][1]
        # ... because the volume followed its droplet: detached once it was fenced, then
        # attached to the replacement, with the recovery leader's fence.
        name = f"{mesh.name}-shop-web1"  # the droplet's one volume
        (volume,) = [v for v in mesh.account["volumes"].values() if v["name"] == name]
        replacement = next(d for d in mesh.account["droplets"].values() if d["name"] == "shop-web1")
        assert volume["droplet_id"] == replacement["id"]
        steps = [
            (e["name"], e["detail"].get("droplet_id"))
            for e in sorted(mesh.events_about(name) or [], key=lambda e: e["at"])
            if e["at"] > killed
        ]
        assert (
            steps[:2]
            == [
                ("volume_detached", steps[0][1]),
                ("volume_attached", replacement["id"]),
            ]
            and steps[0][1] != replacement["id"]
        )
        actions = (mesh.home / "state" / mesh.name / "provider" / "actions.log").read_text()
        powered_off = [
            a["time"]
            for a in map(json.loads, actions.splitlines())
            if a["action"] == "power_off" and a["name"] == "shop-web1" and a["time"] > killed
        ]
        detached = next(e["at"] for e in mesh.events_about(name) or [] if e["at"] > killed)
        assert powered_off and powered_off[0] <= detached  # never from one that might write


def test_rotating_datastore_passwords_changes_them_in_place_and_refuses_no_visit(
    tmp_path: Path,
) -> None:
    csv, config = write_project(tmp_path, ["shop,1,s-1vcpu-2gb,s-1vcpu-1gb"], SERVICES)
    with local_mesh(tmp_path / "mesh") as mesh:
        mesh.ok("publish", csv, "--deploy-config", config, "--wait", timeout=240)
        url = mesh.status()["entry_url"] + "/shop-prod/backend/"
        wait_for(lambda: visits(url), timeout=60, what="a page that counted")
        refused: list[str] = []
        counted: list[tuple[int, int]] = []
        done = threading.Event()

        def visit() -> None:  # a visitor all along: each page must count in both stores
            while not done.is_set():
                try:
                    page = html.unescape(http_get(url, timeout=10))
                except OSError as err:
                    refused.append(str(err))
                    continue
                found = COUNTS.search(page)
                if found:
                    counted.append((int(found[1]), int(found[2])))
                else:
                    refused.append(page[-300:])
                time.sleep(0.02)

        visitor = threading.Thread(target=visit, daemon=True)
        visitor.start()
        try:
            for name in ("db_password", "redis_password"):
                rotated = json.loads(mesh.ok("secret", "rotate", "shop", "prod", name, "--json"))
                kind = "database" if name == "db_password" else "redis"
                assert rotated["changed_in_place"] == [f"shop.prod.{kind}"]
                assert rotated["rolled"] == ["shop.prod.backend"]
            wait_for(mesh.converged, timeout=120, what="the backend rolled onto both")
            time.sleep(2)  # new instances, new sessions: with the new passwords
        finally:
            done.set()
            visitor.join(timeout=30)
        assert refused == [] and len(counted) > 50, (refused[:3], len(counted))
        changed = [e for e in mesh.events_about("shop.prod.database") or []
                   if e["name"] == "datastore_password_changed"]  # fmt: skip
        assert [e["detail"]["secret"] for e in changed] == ["db_password"]
