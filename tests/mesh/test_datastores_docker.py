"""A Docker mesh runs its built-in datastores apart (`up --datastores process`, the default):
the host's own PostgreSQL and Redis beside the containers, no registry needed, healthy by
protocol, backed up and verified like on a process mesh; the rest in containers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.mesh.test_mesh_docker import containers
from tests.support.docker import example_context, new_mesh_name, remove_mesh_objects
from tests.support.mesh import local_mesh
from tests.support.waiting import wait_for


def test_a_docker_mesh_runs_its_datastores_as_host_servers_and_backs_them_up(
    tmp_path: Path, docker_engine: Any
) -> None:
    project = tmp_path / "project"
    example_context(project)
    services = {"backend": {"build_context": "app"}, "frontend": {"enabled": False}}
    (project / "deployment_config.json").write_text(
        json.dumps({"projects": {"shop": {"services": services}}})
    )
    csv = project / "projects.csv"
    csv.write_text("Project,Servers,MasterSpec,WebSpec\nshop,1,s-1vcpu-2gb,s-1vcpu-1gb\n")
    name = new_mesh_name()
    try:
        with local_mesh(tmp_path / "mesh", name=name, runtime="docker") as mesh:
            out = mesh.ok("publish", csv, "--wait", timeout=300)
            assert "Converged" in out
            running = containers(docker_engine, name)
            assert {k.split(".")[2] for k in running} == {"backend"}  # datastores: not here
            status = mesh.status()
            healthy = {
                (s["env"], s["service"]): s["healthy"]
                for s in status["services"]
                if s["service"] in ("database", "redis")
            }
            assert len(healthy) == 6 and all(healthy.values()), healthy
            taken = json.loads(mesh.ok("backup", "now", "shop", "prod", "--json", timeout=300))
            assert len(taken["taken"]) == 2
            drilled = mesh.ok("backup", "verify", "shop", "prod", "--json", timeout=300)
            assert all(json.loads(line)["ok"] for line in drilled.splitlines())
            wait_for(mesh.converged, timeout=60, what="still converged")
    finally:
        remove_mesh_objects(docker_engine, name)
