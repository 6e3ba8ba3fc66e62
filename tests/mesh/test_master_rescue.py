"""A mesh of two droplets keeps JetStream on master alone: when master dies, the other droplet
has it rebuilt from its snapshot without the store, and the mesh comes back whole."""

from __future__ import annotations

import time
from pathlib import Path

from tests.mesh.test_recovery import whole_in_new_life
from tests.support.mesh import BACKEND_ONLY, local_mesh, write_project
from tests.support.waiting import wait_for


def test_a_dead_lone_master_is_rebuilt_from_its_snapshot_by_the_other_droplet(
    tmp_path: Path,
) -> None:
    csv, config = write_project(tmp_path, ["shop,2,s-1vcpu-2gb,s-1vcpu-1gb"], BACKEND_ONLY)
    with local_mesh(tmp_path / "mesh") as mesh:
        mesh.ok("publish", csv, "--deploy-config", config, "--wait", timeout=180)
        before = mesh.status()
        assert before["jetstream"]["servers"] == ["master"]
        wait_for(lambda: mesh.snapshotted("master"), timeout=60, what="master's snapshot")

        killed = time.time()
        mesh.ok("chaos", "kill", "master")
        rebuilt = wait_for(
            lambda: [
                e
                for e in mesh.events_about("master") or []
                if e["name"] == "droplet_rebuilt" and e["at"] > killed
            ],
            timeout=150,
            what="master rebuilt by shop-web1",
        )
        assert rebuilt[0]["actor"] == "shop-web1"
        assert rebuilt[0]["detail"]["without_store"] is True
        assert rebuilt[0]["detail"]["from"].startswith("master-deploy-")
        after = whole_in_new_life(mesh, "master", before, timeout=90)
        assert after["jetstream"]["servers"] == ["master"]
