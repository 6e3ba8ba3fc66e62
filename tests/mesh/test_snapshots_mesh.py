"""Post-deployment snapshots: when a droplet has settled and needs one, which ones go (pure),
and on a real local mesh: every deployment a droplet finishes is snapshotted, the last three
are kept, and a killed droplet is rebuilt from the newest."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from protocol.messages import (
    Allocation,
    InstanceState,
    InstanceStatus,
    NodeStatus,
    Snapshot,
)
from tests.support.mesh import BACKEND_ONLY, local_mesh, write_project
from tests.support.reconciling import allocation
from tests.support.waiting import wait_for


def instance(service: str, generation: int, **more: Any) -> InstanceStatus:
    values: dict[str, Any] = {
        "project": "shop",
        "env": "prod",
        "service": service,
        "state": InstanceState.RUNNING,
        "healthy": True,
        "restarts": 0,
        "generation": generation,
    }
    return InstanceStatus(**{**values, **more})


def node(*instances: InstanceStatus) -> NodeStatus:
    return NodeStatus(
        droplet="web1",
        address="10.0.0.1",
        incarnation=1,
        size="s-1vcpu-1gb",
        roles=(),
        instances=instances,
        updated_at=0.0,
    )


def snapshot(generations: dict[str, int], number: int = 1) -> Snapshot:
    return Snapshot(
        id=str(number),
        name=f"web1-deploy-{number}",
        droplet_id="3",
        created_at=float(number),
        generations=generations,
        fence=1,
    )


ALLOCATIONS: dict[str, Allocation] = {
    "shop.prod.backend": allocation(service="backend", generation=2, droplets=("web1", "web2")),
    "shop.prod.worker": allocation(service="worker", generation=5, droplets=("web1",)),
    "shop.prod.other": allocation(service="other", generation=1, droplets=("web2",)),
}


def snapshots_on_disk(mesh_dir: Path, droplet: str) -> list[str]:
    """The names of the snapshots of `droplet` that the local provider's account keeps."""
    accounts = list(mesh_dir.glob("state/*/provider/account.json"))
    assert len(accounts) == 1, accounts
    data = json.loads(accounts[0].read_text())
    names = (s["name"] for s in data.get("snapshots", {}).values())
    return sorted(n for n in names if n.startswith(f"{droplet}-deploy-"))


def test_each_finished_deployment_is_snapshotted_the_last_three_kept_and_rebuilt_from(
    tmp_path: Path,
) -> None:
    csv, config = write_project(tmp_path, ["shop,1,s-1vcpu-2gb,s-1vcpu-1gb"], BACKEND_ONLY)
    with local_mesh(tmp_path / "mesh", droplets=3) as mesh:
        mesh.ok("publish", csv, "--deploy-config", config, "--wait", timeout=180)

        def taken() -> list[str]:
            events = mesh.events_about("master") or []
            return [e["detail"]["snapshot"] for e in events if e["name"] == "snapshot_taken"]

        def deployed() -> dict[str, Any] | None:
            """Master's newest snapshot once it holds the project (one may come before the
            publish reached master: a droplet with nothing to run is snapshotted too)."""
            found = mesh.status_if_readable() or {"droplets": []}
            master = next((d for d in found["droplets"] if d["name"] == "master"), None)
            newest = master and master["snapshot"]
            return newest if newest and "shop.prod.backend" in newest["generations"] else None

        def wait_for_snapshots(count: int) -> None:
            try:
                wait_for(lambda: len(taken()) == count, timeout=120, what=f"snapshot {count}")
            except AssertionError as err:  # what the snapshots role said meanwhile
                told = [
                    (e["name"], e["detail"])
                    for e in mesh.events_about("master") or []
                    if e["name"].startswith("snapshot_")
                ]
                raise AssertionError(f"{err}; master's snapshot events: {told}") from None

        first = wait_for(deployed, timeout=120, what="master's snapshot with the project")
        before = wait_for(lambda: (names := taken()) and first["name"] in names and names)
        for count in range(len(before) + 1, len(before) + 5):
            mesh.ok("restart", "shop", "prod", "backend", timeout=120)
            wait_for_snapshots(count)
        names = taken()
        wait_for(
            lambda: snapshots_on_disk(mesh.home, "master") == sorted(names[-3:]),
            timeout=30,
            what="all but the last three snapshots deleted",
        )
        deleted = [e for e in mesh.events_about("master") or [] if e["name"] == "snapshot_deleted"]
        assert sorted(e["detail"]["snapshot"] for e in deleted) == sorted(names[:-3])
        status = mesh.status()
        master = next(d for d in status["droplets"] if d["name"] == "master")
        assert master["snapshot"]["name"] == names[-1]

        # A rebuild starts from the newest snapshot.
        killed = time.time()
        mesh.ok("chaos", "kill", "master")
        wait_for(lambda: mesh.recovered("master", killed), timeout=120, what="master rebuilt")
        rebuilt = [
            e
            for e in mesh.events_about("master") or []
            if e["name"] == "droplet_rebuilt" and e["at"] > killed
        ]
        assert [e["detail"]["from"] for e in rebuilt] == [names[-1]]
