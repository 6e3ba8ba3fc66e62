"""JetStream follows the mesh's droplets on a real local mesh: a CSV of two droplets keeps it
on master alone (one replica), one of three grows it to three servers (three replicas), one of
one shrinks it back, and three again grow it again; every event written before is still there,
and no instance restarts. A move whose mover is killed midway is resumed; the seed CSV makes
exactly its droplets, billed as its plan says."""

from __future__ import annotations

import json
import os
import signal
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from meshd.agent.config import AGENT_HTTP_PORT
from meshd.core.sizes import SIZES
from tests.support.mesh import BACKEND_ONLY, LocalMesh, local_mesh, write_project
from tests.support.waiting import wait_for


def events(mesh: LocalMesh) -> list[tuple[float, str, str]]:
    lines = mesh.ok("events", "-n", "2000", "--json").splitlines()
    return [(e["at"], e["name"], e["subject"]) for e in map(json.loads, lines)]


def instances_on(mesh: LocalMesh, droplet: str) -> dict[tuple[str, int], str]:
    """The process of each instance on `droplet` (its runtime id), by service and generation,
    as its agent tells them."""
    address = next(d["address"] for d in mesh.status()["droplets"] if d["name"] == droplet)
    with urllib.request.urlopen(f"http://{address}:{AGENT_HTTP_PORT}/health", timeout=5) as r:
        found = json.load(r)["instances"]
    return {
        (f"{i['project']}.{i['env']}.{i['service']}", i["generation"]): i["runtime_id"]
        for i in found
    }


def projects(tmp_path: Path) -> tuple[tuple[Path, Path], tuple[Path, Path]]:
    """A CSV of one droplet (master) and one of three, each with its deployment config."""
    return project(tmp_path, 1), project(tmp_path, 3)


def project(tmp_path: Path, servers: int) -> tuple[Path, Path]:
    """A CSV of `servers` droplets (master included) and its deployment config."""
    directory = tmp_path / f"servers-{servers}"
    directory.mkdir(exist_ok=True)
    row = f"shop,{servers},s-1vcpu-2gb,s-1vcpu-1gb"
    return write_project(directory, [row], BACKEND_ONLY)


def jetstream(mesh: LocalMesh) -> dict[str, Any]:
    return dict(mesh.status()["jetstream"])


def test_jetstream_grows_to_three_servers_and_shrinks_back_losing_nothing(
    tmp_path: Path,
) -> None:
    one, three = projects(tmp_path)
    two = project(tmp_path, 2)
    with local_mesh(tmp_path / "mesh") as mesh:
        mesh.ok("publish", one[0], "--deploy-config", one[1], "--wait", timeout=180)
        alone = jetstream(mesh)
        assert alone["servers"] == ["master"] and alone["replicas"] == 1
        # Two droplets: two servers would stop at either's death; master stays alone.
        mesh.ok("publish", two[0], "--deploy-config", two[1], "--wait", timeout=180)
        assert jetstream(mesh) | {"streams": None} == alone | {"streams": None}
        before = events(mesh)
        running = instances_on(mesh, "master")

        mesh.ok("publish", three[0], "--deploy-config", three[1], "--wait", "--timeout", "200",
                timeout=240)  # fmt: skip
        grown = jetstream(mesh)
        assert grown["servers"][0] == "master" and len(grown["servers"]) == 3
        assert grown["replicas"] == 3
        assert {s["replicas"] for s in grown["streams"].values()} == {3}
        assert {s["leader"] for s in grown["streams"].values()} <= set(grown["servers"])
        after = events(mesh)
        assert set(before) <= set(after)  # every event from before the move
        moved = [e for e in after if e[1] == "jetstream_grown"]
        assert len(moved) == 1
        # The instances master ran before and still runs are the same processes.
        kept = {k: v for k, v in instances_on(mesh, "master").items() if k in running}
        assert kept and kept.items() <= running.items()

        mesh.ok("publish", one[0], "--deploy-config", one[1], "--wait", "--force",
                "--timeout", "200", timeout=240)  # fmt: skip
        wait_for(
            lambda: jetstream(mesh)["servers"] == ["master"],
            timeout=60,
            what="JetStream back on master alone",
        )
        shrunk = jetstream(mesh)
        assert shrunk["replicas"] == 1
        assert set(after) <= set(events(mesh))
        assert [e[1] for e in events(mesh)].count("jetstream_shrunk") == 1

        # And back: three droplets again, three servers again, nothing lost on the way.
        before_again = events(mesh)
        mesh.ok("publish", three[0], "--deploy-config", three[1], "--wait", "--timeout", "200",
                timeout=240)  # fmt: skip
        again = jetstream(mesh)
        assert again["replicas"] == 3 and len(again["servers"]) == 3
        assert set(before_again) <= set(events(mesh))
        assert [e[1] for e in events(mesh)].count("jetstream_grown") == 2


def test_a_growth_whose_mover_is_killed_midway_is_resumed_and_loses_nothing(
    tmp_path: Path,
) -> None:
    one, three = projects(tmp_path)
    with local_mesh(tmp_path / "mesh") as mesh:
        mesh.ok("publish", one[0], "--deploy-config", one[1], "--wait", timeout=180)
        # An agent restarted on a busy machine may stay silent longer than the 2.8 s that
        # mean death; this test is about the move, not the detector: master is held.
        mesh.ok("hold", "master", "--for", "10m", "--reason", "agent killed by the test")
        before = events(mesh)
        mesh.ok("publish", three[0], "--deploy-config", three[1])  # no --wait: kill midway

        # The move's journal on master's disk: killed while it exists, the agent is killed
        # midway through the move (which takes a second or two).
        journal = mesh.droplet_dir("master") / "agent" / "jetstream-move.json"
        wait_for(journal.exists, timeout=120, every=0.01, what="the move under way")
        os.kill(mesh.pid_of("master", "agent"), signal.SIGKILL)  # its supervisor restarts it
        assert journal.exists()

        wait_for(
            lambda: (
                (s := mesh.status_if_readable())
                and len(s["jetstream"]["servers"]) == 3
                and s["jetstream"]["replicas"] == 3
            ),
            timeout=120,
            what="JetStream on three servers after the restart",
        )
        after = events(mesh)
        assert set(before) <= set(after)
        assert [e[1] for e in after].count("jetstream_grown") == 1
        assert not journal.exists()  # resumed and finished
        assert "droplet_rebuilt" not in {e[1] for e in after}  # the same master throughout


@pytest.mark.alone
def test_the_seed_csv_makes_exactly_its_droplets_at_the_cost_its_plan_says(
    tmp_path: Path,
) -> None:
    with local_mesh(tmp_path / "mesh") as mesh:
        plan = json.loads(mesh.ok("publish", "examples/projects.csv", "--dry-run", "--json"))
        mesh.ok("publish", "examples/projects.csv", "--wait", "--timeout", "240", timeout=300)
        droplets = {d["name"]: d["size"] for d in mesh.account["droplets"].values()}
        assert set(droplets) == {"master", "hostomatic-web1", "hostomatic-web2", "hostomatic-web3"}
        bill = sum(SIZES[size].monthly_usd for size in droplets.values())
        assert bill == plan["cost"]["monthly_usd"] == 168.0  # no droplet the plan does not show
        grown = jetstream(mesh)
        assert grown["replicas"] == 3 and set(grown["servers"]) <= set(droplets)
