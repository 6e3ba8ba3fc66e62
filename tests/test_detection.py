"""Failure detection on real local meshes with real faults (`meshctl chaos`): a droplet
paused for less than the suspicion window is never declared dead, a killed one is confirmed
by a majority of its monitors, recorded once, and rebuilt; with two droplets the provider is
the second opinion, so a long pause is not a failure there either."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.mesh import LocalMesh, local_mesh, wait_for

pytestmark = pytest.mark.integration


def droplet(mesh: LocalMesh, name: str) -> dict[str, Any]:
    return next(d for d in mesh.status()["droplets"] if d["name"] == name)


def failures(mesh: LocalMesh) -> list[dict[str, Any]] | None:
    status = mesh.status_if_readable()
    return status["failures"] if status else None


def all_reporting(mesh: LocalMesh, count: int) -> bool:
    droplets = mesh.status()["droplets"]
    return len(droplets) == count and all(d["healthy"] and d["incarnation"] for d in droplets)


def event_names(mesh: LocalMesh) -> list[str]:
    return [line.split()[1] for line in mesh.ok("events", "-n", "50").splitlines() if line]


def test_a_short_pause_is_survived_and_a_killed_droplet_is_confirmed_by_a_majority(
    tmp_path: Path,
) -> None:
    with local_mesh(tmp_path / "mesh", droplets=3) as mesh:
        wait_for(lambda: all_reporting(mesh, 3), what="three droplets reporting")
        target = droplet(mesh, "mesh-3")
        assert target["monitored_by"] == ["master", "mesh-2"]
        assert droplet(mesh, "master")["monitors"] == ["mesh-2", "mesh-3"]
        time.sleep(2)  # every monitor has heard every target

        for _ in range(2):  # shorter than the suspicion window: never a failure
            mesh.ok("chaos", "pause", "mesh-3")
            time.sleep(2.0)
            mesh.ok("chaos", "resume", "mesh-3")
            time.sleep(3.0)
            assert mesh.status()["failures"] == []

        mesh.ok("chaos", "kill", "mesh-3")
        (failure,) = wait_for(lambda: failures(mesh), timeout=30, what="the failure")
        assert failure["droplet"] == "mesh-3"
        assert failure["confirmed_by"] == ["master", "mesh-2"]  # both: 2 is the majority of 2
        assert failure["incarnation"] == target["incarnation"]
        names = wait_for(
            lambda: "failure_confirmed" in (found := event_names(mesh)) and found,
            what="the failure_confirmed event",
        )
        assert names.count("failure_confirmed") == 1  # recorded once, by one of the monitors
        assert "droplet_suspected" in names

        # Recovery: fenced, rebuilt in place (same name and address), monitored again.
        wait_for(lambda: failures(mesh) == [], timeout=90, what="the recovery")
        back = droplet(mesh, "mesh-3")
        assert back["incarnation"] > target["incarnation"]
        assert back["address"] == target["address"]
        assert back["monitored_by"] == ["master", "mesh-2"]
        names = event_names(mesh)
        for step in ("droplet_fenced", "droplet_rebuilt", "droplet_recovered"):
            assert names.count(step) == 1, step


def test_with_two_droplets_the_provider_is_the_second_opinion(tmp_path: Path) -> None:
    with local_mesh(tmp_path / "mesh", droplets=2) as mesh:
        wait_for(lambda: all_reporting(mesh, 2), what="two droplets reporting")
        time.sleep(2)

        mesh.ok("chaos", "pause", "mesh-2")  # silent far longer than the window, yet running
        time.sleep(6.0)
        mesh.ok("chaos", "resume", "mesh-2")
        time.sleep(2.0)
        assert mesh.status()["failures"] == []

        mesh.ok("chaos", "kill", "mesh-2")
        (failure,) = wait_for(lambda: failures(mesh), timeout=30, what="the failure")
        assert (failure["droplet"], failure["confirmed_by"]) == ("mesh-2", ["master"])
        wait_for(lambda: failures(mesh) == [], timeout=90, what="the recovery")


def test_drills_refuse_what_they_cannot_do(tmp_path: Path) -> None:
    with local_mesh(tmp_path / "mesh", droplets=1) as mesh:
        unknown = mesh.meshctl("chaos", "kill", "nope")
        assert unknown.returncode == 2 and "no droplet 'nope'" in unknown.stderr
        cut = mesh.meshctl("chaos", "partition", "master")
        assert cut.returncode == 1 and "network-namespace droplets" in cut.stderr
