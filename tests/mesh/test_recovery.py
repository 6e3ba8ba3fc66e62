"""Recovery on a real local mesh behind real nginx: a killed project droplet is fenced and
rebuilt while the entry address keeps answering from the other instance; a killed master
loses its roles to the others (the entry address moves) and is rebuilt too."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from protocol.subjects import Role
from tests.support import nginx_binary
from tests.support.mesh import (
    BACKEND_ONLY,
    LocalMesh,
    http_get,
    local_mesh,
    requests_to,
    write_project,
)
from tests.support.waiting import wait_for

STEPS = [
    "failure_confirmed",
    "droplet_fenced",
    "instances_displaced",
    "droplet_rebuilt",
    "droplet_recovered",
]

SERVICES = BACKEND_ONLY


def recovered(mesh: LocalMesh) -> dict[str, Any] | None:
    """The status once no failure is left and every service is whole again."""
    status = mesh.status_if_readable()
    if status is None or status["failures"]:
        return None
    whole = all(s["healthy"] == s["desired"] for s in status["services"])
    return status if whole else None


def whole_in_new_life(
    mesh: LocalMesh, name: str, before: dict[str, Any], timeout: float
) -> dict[str, Any]:
    """The status once every service is whole and `name` reports a newer life than in
    `before` (a droplet rebuilt from a snapshot may first be read in its former life)."""
    return dict(
        wait_for(
            lambda: (
                (found := recovered(mesh))
                and incarnation(found, name) > incarnation(before, name)
                and found
            ),
            timeout=timeout,
            what=f"every service whole, and {name}'s new life reported",
        )
    )


def incarnation(status: dict[str, Any], name: str) -> int:
    return int(next(d["incarnation"] for d in status["droplets"] if d["name"] == name))


def instances_on(status: dict[str, Any] | None, name: str) -> int | None:
    """How many instances droplet `name` reports (None while the status cannot be read)."""
    if status is None:
        return None
    return int(next(d["instances"] for d in status["droplets"] if d["name"] == name))


def test_killed_droplets_are_fenced_rebuilt_and_serve_again(tmp_path: Path) -> None:
    nginx_binary()
    csv, config = write_project(tmp_path, ["shop,3,s-1vcpu-2gb,s-1vcpu-1gb"], SERVICES)
    with local_mesh(tmp_path / "mesh", droplets=3) as mesh:
        mesh.ok("publish", csv, "--deploy-config", config, "--wait", timeout=180)
        before = mesh.status()
        on_master = instances_on(before, "master")
        assert on_master is not None
        url = f"{before['entry_url']}/shop-prod/backend/"
        time.sleep(2)

        # A project droplet: its backend's other instance serves meanwhile.
        with requests_to(url) as load:
            killed = time.time()
            mesh.ok("chaos", "kill", "shop-web1")
            # Master, the survivor without a prod backend, runs one until shop-web1 is back
            # (and drains it for a few seconds after).
            wait_for(
                lambda: instances_on(mesh.status_if_readable(), "master") == on_master + 1,
                timeout=60,
                what="a backend displaced to master",
            )
            wait_for(lambda: mesh.recovered("shop-web1", killed), timeout=90, what="recovery")
            wait_for(lambda: recovered(mesh), timeout=90, what="shop-web1 serving")
        assert load.sent > 100
        assert load.failed == [], load.failed[:3]
        after = mesh.status()
        assert incarnation(after, "shop-web1") > incarnation(before, "shop-web1")
        events = sorted(mesh.events_about("shop-web1") or [], key=lambda e: e["at"])
        assert [e["name"] for e in events if e["at"] > killed and e["name"] in STEPS] == STEPS
        # The backend displaced to master is gone again.
        displaced = next(e for e in events if e["name"] == "instances_displaced")
        assert displaced["detail"]["displaced"] == {"shop.prod.backend": "master"}
        wait_for(
            lambda: instances_on(mesh.status_if_readable(), "master") == on_master,
            timeout=30,
            what="the displaced backend to leave master",
        )

        # The master: its roles move (the entry address with the lb role), it is rebuilt.
        holders = {role for d in after["droplets"] if d["name"] == "master" for role in d["roles"]}
        killed = time.time()
        mesh.ok("chaos", "kill", "master")
        wait_for(
            lambda: (s := mesh.status_if_readable()) and s["lb"] not in (None, "master"),
            timeout=60,
            what="the lb role on another droplet",
        )
        wait_for(lambda: http_get(url), timeout=30, what="the entry address answering")
        wait_for(lambda: mesh.recovered("master", killed), timeout=120, what="master rebuilt")
        whole_in_new_life(mesh, "master", before, timeout=60)
        assert holders and holders <= {role.value for role in Role}  # what master held: roles


def recovery_holder(status: dict[str, Any]) -> str:
    return str(next(d["name"] for d in status["droplets"] if "recovery" in d["roles"]))


def step_of(status: dict[str, Any] | None, name: str) -> str | None:
    found = [f["state"] for f in (status or {}).get("failures", []) if f["droplet"] == name]
    return found[0] if found else None


def test_a_recovery_leader_killed_mid_recovery_is_followed_and_nothing_is_done_twice(
    tmp_path: Path,
) -> None:
    nginx_binary()
    csv, config = write_project(tmp_path, ["shop,3,s-1vcpu-2gb,s-1vcpu-1gb"], SERVICES)
    with local_mesh(tmp_path / "mesh", droplets=3) as mesh:
        mesh.ok("publish", csv, "--deploy-config", config, "--wait", timeout=180)
        before = mesh.status()
        leader = recovery_holder(before)
        victim = next(n for n in ("shop-web1", "shop-web2") if n != leader)
        wait_for(
            lambda: mesh.snapshotted(victim, leader),
            timeout=60,
            what=f"snapshots of {victim} and {leader}",
        )

        # The victim dies; once its replacement is on the way, the recovery leader dies too.
        killed = time.time()
        mesh.ok("chaos", "kill", victim)
        wait_for(
            lambda: step_of(mesh.status_if_readable(), victim) == "recovering",
            timeout=60,
            what=f"{victim}'s recovery under way",
        )
        mesh.ok("chaos", "kill", leader)
        leader_killed = time.time()  # dead by now; it may have finished a step just before

        # Another leader finishes the victim's recovery, and the dead leader's.
        events = wait_for(lambda: mesh.recovered(victim, killed), timeout=120, what=victim)
        wait_for(lambda: mesh.recovered(leader, killed), timeout=120, what=leader)
        final = whole_in_new_life(mesh, leader, before, timeout=90)
        rebuilt = [e for e in events if e["name"] == "droplet_rebuilt" and e["at"] > killed]
        assert len(rebuilt) == 1, rebuilt
        finished = [e for e in events if e["name"] == "droplet_recovered" and e["at"] > killed]
        assert len(finished) == 1, finished
        if finished[0]["at"] > leader_killed:  # else the leader finished just before it died
            assert finished[0]["fence"] > rebuilt[0]["fence"]  # a newer leader's term
        assert incarnation(final, leader) > incarnation(before, leader)
        assert incarnation(final, victim) > incarnation(before, victim)
        # Each came back from a snapshot, the leader too though it runs nothing: a core
        # droplet's JetStream store must not come back empty.
        for name in (victim, leader):
            built = [e for e in mesh.events_about(name) or [] if e["name"] == "droplet_rebuilt"]
            assert [e["detail"]["from"].startswith(f"{name}-deploy-") for e in built] == [True]
