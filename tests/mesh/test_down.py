"""`meshctl down` wins against the mesh's own leaders: with a recovery under way (the recovery
leader is about to rebuild a droplet), nothing of the mesh is left afterwards: no process, no
droplet in the provider's account, no state."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from tests.support.mesh import local_mesh
from tests.support.waiting import wait_for


def processes_under(directory: Path) -> list[str]:
    """Command lines of the processes that name `directory` (the mesh's own)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if str(directory) in argv:
            found.append(argv.replace("\0", " "))
    return found


def settled(status: dict[str, Any] | None) -> bool:
    if status is None or len(status["droplets"]) != 3:
        return False
    streams = status["jetstream"]["streams"].values()
    return bool(streams) and all(len(s["current"]) == 3 for s in streams)


def test_down_during_a_recovery_leaves_nothing_of_the_mesh(tmp_path: Path) -> None:
    home = tmp_path / "mesh"
    with local_mesh(home, droplets=3) as mesh:
        # Killed while its state moves to three servers (streams restored at one replica on
        # master first), master can take the failure records with it: CI's loaded machine
        # killed it two seconds after the move and no recovery came. `down` during a
        # recovery is the point here, so master dies once every stream is on all three.
        wait_for(lambda: settled(mesh.status_if_readable()), timeout=120,
                 what="three droplets, every stream current on three servers")  # fmt: skip
        killed = time.time()
        mesh.ok("chaos", "kill", "master")
        wait_for(
            lambda: any(
                e["name"] == "droplet_fenced" and e["at"] > killed
                for e in mesh.events_about("master") or []
            ),
            timeout=60,
            what="the recovery under way (master fenced)",
        )

        mesh.ok("down", "--context", mesh.name)

        time.sleep(2.0)  # a leader that had survived would act within this
        assert processes_under(home / "state") == []
        assert mesh.account["droplets"] == {}
        assert not (home / "state" / mesh.name).exists()
