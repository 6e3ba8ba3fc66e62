"""The mesh runs: real local droplets (nats-server + agent process groups on their own
loopback addresses), publishing, healing of instances, leases across droplets."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import yaml

from tests.support import freeze
from tests.support.mesh import (
    WEB_ONLY,
    LocalMesh,
    hello,
    http_get,
    local_mesh,
    service,
    write_project,
)
from tests.support.waiting import wait_for


def instances(mesh: LocalMesh, droplet: str) -> dict[str, Any]:
    """The droplet agent's own view (/health): instance key -> details with pid."""
    body = http_get(f"http://{mesh.address(droplet)}:8080/health")

    return {f"{i['project']}.{i['env']}.{i['service']}": i for i in json.loads(body)["instances"]}


def test_publish_starts_every_instance_and_each_answers_on_its_droplet(tmp_path: Path) -> None:
    csv, config = write_project(tmp_path, ["shop,1,s-1vcpu-2gb,s-1vcpu-1gb"], WEB_ONLY)
    with local_mesh(tmp_path / "mesh") as mesh:
        out = mesh.ok("publish", csv, "--deploy-config", config, "--wait")
        assert "Converged: 6/6 instances healthy" in out
        status = mesh.status()
        backend = service(status, "shop", "prod", "backend")
        assert backend["droplets"] == ["master"] and backend["healthy"] == 1
        # The provisioner resized master to the CSV's MasterSpec, and the agent reports it.
        assert {d["name"]: d["size"] for d in status["droplets"]}["master"] == "s-1vcpu-2gb"
        page = http_get(f"http://{mesh.address('master')}:{backend['port']}/")
        assert "shop-prod-backend" in page
        names = [e["name"] for e in _events(mesh)]
        assert "published" in names and "scheduled" in names
        again = mesh.ok("publish", csv, "--deploy-config", config, "--wait", "--timeout", "30")
        assert "Converged: 6/6" in again  # an unchanged republish is scheduled, not ignored


def test_republish_with_a_change_restarts_only_what_changed(tmp_path: Path) -> None:
    csv, config = write_project(tmp_path, ["shop,1,s-1vcpu-2gb,s-1vcpu-1gb"], WEB_ONLY)
    with local_mesh(tmp_path / "mesh") as mesh:
        mesh.ok("publish", csv, "--deploy-config", config, "--wait")
        before = instances(mesh, "master")
        _, config = write_project(
            tmp_path,
            ["shop,1,s-1vcpu-2gb,s-1vcpu-1gb"],
            {**WEB_ONLY, "frontend": hello("--port-from", "SERVICE_PORT")},
        )
        mesh.ok("publish", csv, "--deploy-config", config, "--wait")
        wait_for(mesh.converged, what="convergence after republish")
        after = instances(mesh, "master")
        for key, instance in after.items():
            if key.endswith(".backend"):
                assert instance["runtime_id"] == before[key]["runtime_id"], key
            else:
                assert instance["runtime_id"] != before[key]["runtime_id"], key


def test_a_new_generation_that_crashes_is_not_counted_healthy(tmp_path: Path) -> None:
    csv, config = write_project(tmp_path, ["shop,1,s-1vcpu-2gb,s-1vcpu-1gb"], WEB_ONLY)
    with local_mesh(tmp_path / "mesh") as mesh:
        mesh.ok("publish", csv, "--deploy-config", config, "--wait")
        broken = {**WEB_ONLY, "frontend": hello("--no-such-flag")}
        _, config = write_project(tmp_path, ["shop,1,s-1vcpu-2gb,s-1vcpu-1gb"], broken)
        result = mesh.meshctl("publish", csv, "--deploy-config", config, "--wait", "--timeout", "8")
        assert result.returncode == 1 and "not converged" in result.stderr
        frontend = service(mesh.status(), "shop", "prod", "frontend")
        assert frontend["healthy"] == 0
        assert any("unrecognized arguments" in e for e in frontend["errors"])
        assert service(mesh.status(), "shop", "prod", "backend")["healthy"] == 1


def test_scale_out_from_one_to_three_servers_and_back(tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "three").mkdir()
    one, config = write_project(tmp_path / "one", ["shop,1,s-1vcpu-2gb,s-1vcpu-1gb"], WEB_ONLY)
    three, _ = write_project(tmp_path / "three", ["shop,3,s-1vcpu-2gb,s-1vcpu-1gb"], WEB_ONLY)
    with local_mesh(tmp_path / "mesh") as mesh:
        mesh.ok("publish", one, "--deploy-config", config, "--wait")
        mesh.ok("publish", three, "--deploy-config", config, "--wait", "--timeout", "90")
        backend = service(mesh.status(), "shop", "prod", "backend")
        assert backend["droplets"] == ["shop-web1", "shop-web2"]
        assert backend["healthy"] == 2
        for droplet in ("shop-web1", "shop-web2"):
            assert "shop-prod-backend" in http_get(
                f"http://{mesh.address(droplet)}:{backend['port']}/"
            )
        refused = mesh.meshctl("publish", one, "--deploy-config", config)
        assert refused.returncode == 1 and "--force" in refused.stderr
        mesh.ok("publish", one, "--deploy-config", config, "--force", "--wait")
        wait_for(
            lambda: (
                (s := mesh.status_if_readable())
                and {d["name"] for d in s["droplets"]} == {"master"}
            ),
            timeout=120,  # JetStream moves back to master first (a while under load)
            what="scale-in to master alone",
        )
        assert {d["name"] for d in mesh.account["droplets"].values()} == {"master"}


def test_agent_restart_keeps_instances_running_with_the_same_pids(tmp_path: Path) -> None:
    csv, config = write_project(tmp_path, ["shop,1,s-1vcpu-2gb,s-1vcpu-1gb"], WEB_ONLY)
    with local_mesh(tmp_path / "mesh") as mesh:
        mesh.ok("publish", csv, "--deploy-config", config, "--wait")
        before = {k: v["runtime_id"] for k, v in instances(mesh, "master").items()}
        agent = mesh.pid_of("master", "agent")
        os.kill(agent, signal.SIGKILL)
        wait_for(lambda: mesh.agent_replaced("master", agent), what="the agent to be restarted")
        wait_for(mesh.converged, what="convergence after agent restart")
        # Convergence can be read from the old agent's last report: ask the new one itself
        # until it lists every instance, then compare what runs.
        wait_for(
            lambda: (found := _try_instances(mesh)) is not None and found.keys() == before.keys(),
            what="the new agent to list every instance",
        )
        after = {k: v["runtime_id"] for k, v in instances(mesh, "master").items()}
        assert after == before


def test_an_instance_that_hangs_is_restarted(tmp_path: Path) -> None:
    hang = {"command": hello()["command"].replace("hello.py", "hello.py --hang")}
    services = {**WEB_ONLY, "frontend": hang}
    csv, config = write_project(tmp_path, ["shop,1,s-1vcpu-2gb,s-1vcpu-1gb"], services)
    with local_mesh(tmp_path / "mesh") as mesh:
        mesh.meshctl("publish", csv, "--deploy-config", config, "--wait", "--timeout", "5")

        def restarted() -> bool:
            mine = instances(mesh, "master")["shop.prod.frontend"]
            return bool(mine["restarts"] >= 1 and mine["state"] in ("starting", "unhealthy"))

        wait_for(restarted, timeout=60, what="the hung frontend to be restarted")
        frontend = instances(mesh, "master")["shop.prod.frontend"]
        assert "health check failed" in (frontend["last_error"] or "")
        assert instances(mesh, "master")["shop.prod.backend"]["restarts"] == 0


def test_instances_keep_serving_and_heal_with_every_nats_server_down(tmp_path: Path) -> None:
    csv, config = write_project(tmp_path, ["shop,1,s-1vcpu-2gb,s-1vcpu-1gb"], WEB_ONLY)
    with local_mesh(tmp_path / "mesh") as mesh:
        mesh.ok("publish", csv, "--deploy-config", config, "--wait")
        port = service(mesh.status(), "shop", "prod", "backend")["port"]
        url = f"http://{mesh.address('master')}:{port}/"
        nats = mesh.pid_of("master", "nats-server")
        freeze(nats)  # the only JetStream server: no quorum, no answers
        try:
            os.kill(mesh.pid_of("master", "agent"), signal.SIGKILL)
            time.sleep(1)
            assert "shop-prod-backend" in http_get(url)
            victim = instances_when_up(mesh)["shop.prod.backend"]["runtime_id"]
            os.kill(int(victim), signal.SIGKILL)
            wait_for(
                lambda: _serving(url), timeout=30, what="the backend restarted from the local copy"
            )
            assert instances_when_up(mesh)["shop.prod.backend"]["runtime_id"] != victim
            unreachable = mesh.meshctl("status", timeout=30)
            assert unreachable.returncode == 1
        finally:
            os.kill(nats, signal.SIGCONT)
        wait_for(mesh.converged, what="convergence once NATS is back")


def instances_when_up(mesh: LocalMesh) -> dict[str, Any]:
    return wait_for(lambda: _try_instances(mesh), what="the agent's /health")  # type: ignore[no-any-return]


def _try_instances(mesh: LocalMesh) -> dict[str, Any] | None:
    try:
        found = instances(mesh, "master")
    except OSError:
        return None
    return found if found and all(i["runtime_id"] for i in found.values()) else None


def _serving(url: str) -> bool:
    try:
        return "shop-prod-backend" in http_get(url, timeout=1)
    except OSError:
        return False


def test_a_killed_scheduler_holder_is_followed_by_a_term_with_a_higher_fence(
    tmp_path: Path,
) -> None:
    with local_mesh(tmp_path / "mesh", droplets=3) as mesh:
        holder = wait_for(lambda: _holder(mesh, "scheduler"), what="a scheduler")
        first = _terms(mesh, "scheduler")[-1]
        os.kill(mesh.pid_of(holder, "agent"), signal.SIGKILL)
        # Any agent may win the next term, the restarted one on the same droplet included.
        later = wait_for(
            lambda: [t for t in _terms(mesh, "scheduler") if t["fence"] > first["fence"]],
            timeout=30,
            what="a new scheduler term",
        )
        assert later[0]["fence"] > first["fence"]


def test_a_paused_scheduler_holder_is_replaced_by_another_droplet(tmp_path: Path) -> None:
    # Two droplets: the provider, seeing the paused one still running, keeps the detector from
    # declaring it dead (with three, it would be fenced and rebuilt; tests/mesh/test_detection.py).
    with local_mesh(tmp_path / "mesh", droplets=2) as mesh:
        holder = wait_for(lambda: _holder(mesh, "scheduler"), what="a scheduler")
        agent = mesh.pid_of(holder, "agent")
        freeze(agent)
        try:
            successor = wait_for(
                lambda: (h := _holder(mesh, "scheduler")) and h != holder and h,
                timeout=30,
                what="another droplet to take the scheduler role",
            )
        finally:
            os.kill(agent, signal.SIGCONT)
        terms = {t["actor"]: t["fence"] for t in _terms(mesh, "scheduler")}
        assert terms[successor] > terms[holder]
        # Resumed, the old holder knows its term is over: it neither renews nor acts.
        time.sleep(3)
        assert _holder(mesh, "scheduler") == successor


def _terms(mesh: LocalMesh, role: str) -> list[dict[str, Any]]:
    return [e for e in _events(mesh) if e["name"] == "lease_taken" and e["subject"] == role]


def _holder(mesh: LocalMesh, role: str) -> str | None:
    for droplet in (mesh.status_if_readable() or {"droplets": []})["droplets"]:
        if role in droplet["roles"]:
            return str(droplet["name"])
    return None


def _events(mesh: LocalMesh) -> list[dict[str, Any]]:
    return [json.loads(line) for line in mesh.ok("events", "--json", "-n", "100").splitlines()]


def test_meshctl_says_in_one_line_when_the_mesh_is_unreachable(tmp_path: Path) -> None:
    with local_mesh(tmp_path / "mesh") as mesh:
        freeze(mesh.pid_of("master", "nats-server"))
        nats = mesh.pid_of("master", "nats-server")
        try:
            started = time.monotonic()
            result = mesh.meshctl("status", timeout=30)
            elapsed = time.monotonic() - started
        finally:
            os.kill(nats, signal.SIGCONT)
        assert result.returncode == 1
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith(f"meshctl: mesh '{mesh.name}' is not reachable")
        assert elapsed < 15  # generous; the CLI's own budget is a few seconds


def test_a_converged_mesh_reads_alike_in_status_events_and_compose(seed_mesh: LocalMesh) -> None:
    status = seed_mesh.status()
    assert status["services"] and all(s["healthy"] == s["desired"] for s in status["services"])
    events = [json.loads(line) for line in seed_mesh.ok("events", "--json").splitlines()]
    assert {"published", "scheduled", "lease_taken"} <= {e["name"] for e in events}
    assert all(e["fence"] for e in events if e["name"] == "scheduled")  # leaders sign their acts
    compose = seed_mesh.ok("compose", "shop", "prod")
    # The services run as processes (no image): the file says so rather than inventing one.
    assert "# not shown, backend:" in compose and "# not shown, frontend:" in compose
    assert yaml.safe_load(compose)["name"] == f"meshd-{seed_mesh.name}-master-shop-prod"
