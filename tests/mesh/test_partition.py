"""Partitions for real: droplets in network namespaces (root; required in CI), cut off with
iptables inside a droplet's namespace or by taking its cable down.

A droplet that loses a tenth of its packets, or that one of its three monitors cannot reach,
is not declared dead (a failure needs a majority of its monitors). Cut off from everyone, it
is confirmed by a majority, fenced, rebuilt once under its name on a new cable, and once the
partition is healed there is one droplet of that name, not two."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests.support import namespaces_allowed, nginx_binary
from tests.support.mesh import (
    BACKEND_ONLY,
    LocalMesh,
    http_get,
    local_mesh,
    write_project,
)
from tests.support.waiting import wait_for

VICTIM = "shop-web1"


def droplet(status: dict[str, Any], name: str) -> dict[str, Any]:
    return next(d for d in status["droplets"] if d["name"] == name)


def failures_during(mesh: LocalMesh, seconds: float) -> list[str]:
    """Every droplet with a failure record at some point in the next `seconds`."""
    seen: set[str] = set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        status = mesh.status_if_readable()
        seen |= {f["droplet"] for f in (status or {}).get("failures", [])}
        time.sleep(0.5)
    return sorted(seen)


def confirmations(mesh: LocalMesh, after: float) -> list[dict[str, Any]]:
    events = mesh.events_about(VICTIM) or []
    return [e for e in events if e["name"] == "failure_confirmed" and e["at"] > after]


def test_only_a_majority_confirms_a_partitioned_droplet_and_it_is_replaced_once(
    tmp_path: Path,
) -> None:
    namespaces_allowed()
    nginx_binary()
    csv, config = write_project(tmp_path, ["shop,3,s-1vcpu-2gb,s-1vcpu-1gb"], BACKEND_ONLY)
    with local_mesh(tmp_path / "mesh", droplets=3, netns=True) as mesh:
        mesh.ok("publish", csv, "--deploy-config", config, "--wait", timeout=180)
        before = mesh.status()
        monitors = droplet(before, VICTIM)["monitored_by"]
        assert len(monitors) == 3 and "master" in monitors
        assert before["entry_url"].startswith("http://10.213.")
        url = f"{before['entry_url']}/shop-prod/backend/"
        assert http_get(url)
        old_agent = mesh.pid_of(VICTIM, "agent")

        # A tenth of its packets lost, then cut off from one monitor: no failure.
        started = time.time()
        mesh.ok("chaos", "lose", VICTIM, "--probability", "0.1")
        assert failures_during(mesh, 10) == []
        mesh.ok("chaos", "partition", VICTIM, "--from", "master")
        assert failures_during(mesh, 10) == []
        mesh.ok("chaos", "heal", VICTIM)
        assert confirmations(mesh, started) == []
        assert mesh.pid_of(VICTIM, "agent") == old_agent

        # Cut off from everyone: a majority of its monitors confirms it, once; it is rebuilt.
        cut = time.time()
        mesh.ok("chaos", "partition", VICTIM)
        events = wait_for(lambda: mesh.recovered(VICTIM, cut), timeout=90, what="recovery")
        (confirmed,) = [e for e in events if e["name"] == "failure_confirmed" and e["at"] > cut]
        assert len(confirmed["detail"]["confirmed_by"]) >= 2
        assert set(confirmed["detail"]["confirmed_by"]) <= set(monitors)
        rebuilt = [e for e in events if e["name"] == "droplet_rebuilt" and e["at"] > cut]
        assert len(rebuilt) == 1

        # Healed: one droplet of that name, the new one; the cut-off one was fenced.
        mesh.ok("chaos", "heal", VICTIM)
        time.sleep(3)
        named = [d for d in mesh.account["droplets"].values() if d["name"] == VICTIM]
        assert len(named) == 1
        assert mesh.pid_of(VICTIM, "agent") != old_agent
        assert not Path(f"/proc/{old_agent}").exists()
        after = wait_for(
            lambda: (s := mesh.status_if_readable()) and not s["failures"] and s,
            timeout=60,
            what="no failure left",
        )
        reports = [d for d in after["droplets"] if d["name"] == VICTIM]
        assert len(reports) == 1
        assert reports[0]["incarnation"] > droplet(before, VICTIM)["incarnation"]
        wait_for(lambda: http_get(url), timeout=30, what="the entry address answering")
