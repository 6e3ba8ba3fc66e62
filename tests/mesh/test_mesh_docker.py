"""A local mesh on the docker runtime, end to end against the real Docker Engine: publish
builds the image and runs containers, secrets set in the mesh or generated reach them as files
and never `docker inspect`, the engine's restarts are reported, an agent restart
adopts the same containers, republishing removes what is no longer wanted, meshes sharing
the engine leave each other alone, and `meshctl down` leaves nothing behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import yaml

from plugins.runtimes import mesh_data_root
from tests.support.docker import example_context, mesh_objects, new_mesh_name, remove_mesh_objects
from tests.support.mesh import LocalMesh, http_get, local_mesh
from tests.support.waiting import wait_for

SECRETS = {"DB_PASSWORD": "db-pw-never-in-env", "JWT_SECRET": "jwt-never-in-env"}
JWT = "jwt-canary-" + os.urandom(8).hex()


def docker_project(directory: Path, *, worker: bool = True, broken: bool = False) -> Path:
    """One project on one droplet: a backend and a stand-in database built from the
    examples' busybox image, and a worker; the CSV's path."""
    example_context(directory)
    services: dict[str, Any] = {
        "backend": {"build_context": "app", "secrets": ["jwt_secret"]},
        "frontend": {"enabled": False},
        "database": {
            "build_context": "app",
            "command": "serve DB_PORT",
            "health_path": "/health",
            "data_path": "/data",
            "secrets": ["db_password"],
        },
        "redis": {"enabled": False},
        "mailer": {"type": "worker", "build_context": "app", "command": "work"},
    }
    if not worker:
        del services["mailer"]
    if broken:
        services["mailer"] = {"type": "worker", "image": "nosuch/image:1"}
    config = {"projects": {"shop": {"services": services}}}
    (directory / "deployment_config.json").write_text(json.dumps(config))
    csv = directory / "projects.csv"
    csv.write_text("Project,Servers,MasterSpec,WebSpec\nshop,1,s-1vcpu-2gb,s-1vcpu-1gb\n")
    return csv


def containers(engine: Any, mesh: str) -> dict[str, Any]:
    """Running and stopped containers of the mesh by instance key."""
    import docker.errors

    while True:
        try:  # the SDK lists, then inspects each: one may go in between
            found = engine.containers.list(all=True, filters={"label": [f"meshd.mesh={mesh}"]})
        except docker.errors.NotFound:
            continue
        keys = ("project", "env", "service")
        return {".".join(c.labels[f"meshd.{k}"] for k in keys): c for c in found}


def service(status: dict[str, Any], env: str, name: str) -> dict[str, Any]:
    return next(s for s in status["services"] if (s["env"], s["service"]) == (env, name))


def test_a_docker_mesh_runs_heals_adopts_and_cleans_up_its_containers(
    tmp_path: Path, docker_engine: Any
) -> None:
    name = new_mesh_name()
    csv = docker_project(tmp_path / "project")
    try:
        with local_mesh(tmp_path / "mesh", name=name, runtime="docker") as mesh:
            # jwt_secret set in the mesh (the backend waits for it), db_password generated.
            mesh.ok("publish", csv)
            wait_for(
                lambda: (
                    mesh.meshctl(
                        "secret", "set", "shop", "jwt_secret", "--no-restart", input=JWT
                    ).returncode
                    == 0
                ),
                what="the secret set once the mesh key exists",
            )
            wait_for(mesh.converged, timeout=180, what="every container with its secrets")
            address = mesh.address("master")
            running = containers(docker_engine, name)
            assert sorted(running) == sorted(
                f"shop.{env}.{s}"
                for env in ("prod", "uat", "test")
                for s in ("backend", "database", "mailer")
            )

            backend = running["shop.prod.backend"]
            assert backend.labels["meshd.local.droplet"] == "master"
            assert backend.labels["meshd.generation"] == "1"
            port = service(mesh.status(), "prod", "backend")["port"]
            assert backend.attrs["HostConfig"]["PortBindings"] == {
                f"{port}/tcp": [{"HostIp": address, "HostPort": str(port)}]
            }
            assert "shop-prod-backend" in http_get(f"http://{address}:{port}/")
            env = dict(v.split("=", 1) for v in backend.attrs["Config"]["Env"])
            assert (env["PROJECT"], env["ENVIRONMENT"], env["SERVICE_PORT"]) == (
                "shop",
                "prod",
                str(port),
            )
            assert env["DB_HOST"] == address
            assert env["JWT_SECRET_FILE"] == "/run/secrets/jwt_secret"
            assert_secrets_are_files_only(backend, database := running["shop.prod.database"])
            code, _ = database.exec_run(["sh", "-c", "echo x > /run/secrets/db_password"])
            assert code != 0
            assert database.exec_run(["sh", "-c", "echo kept > /data/mark"])[0] == 0

            assert_compose_shows(mesh, running)

            # Killed from outside: Docker restarts it, the mesh reports the restart.
            os.kill(backend.attrs["State"]["Pid"], signal.SIGKILL)
            wait_for(
                lambda: service(mesh.status(), "prod", "backend")["restarts"] >= 1,
                what="the restart to be reported",
            )
            wait_for(mesh.converged, what="the restarted backend to be healthy")

            # A new agent adopts every container as it is.
            ids = {k: c.id for k, c in containers(docker_engine, name).items()}
            agent = mesh.pid_of("master", "agent")
            os.kill(agent, signal.SIGKILL)
            wait_for(lambda: mesh.agent_replaced("master", agent), what="the agent to be restarted")
            wait_for(mesh.converged, what="convergence after the agent restart")
            assert {k: c.id for k, c in containers(docker_engine, name).items()} == ids

            # Republished without the worker: its containers go (after a grace period).
            docker_project(tmp_path / "project", worker=False)
            mesh.ok("publish", csv, "--wait", timeout=180)
            wait_for(
                lambda: not [k for k in containers(docker_engine, name) if k.endswith(".mailer")],
                what="the worker's containers to go",
            )
            assert (
                containers(docker_engine, name)["shop.prod.backend"].id == ids["shop.prod.backend"]
            )

            mesh.ok("down", "--context", name)
            # Its data stays on the provider's volumes (bind-mounted at its data_path), not
            # in Docker volumes: those would stay on a droplet that dies.
            assert mesh_objects(docker_engine, name) == {
                "containers": [],
                "networks": [],
                "volumes": [],
            }
            kept = mesh_data_root(name) / "volumes"
            assert [p.name for p in kept.iterdir()] == [f"{name}-master"]  # one a droplet
            shop = kept / f"{name}-master" / "shop"
            assert sorted(p.name for p in shop.iterdir()) == ["prod", "test", "uat"]
            assert (shop / "prod" / "database" / "mark").read_text() == "kept\n"
    finally:
        remove_mesh_objects(docker_engine, name)
        shutil.rmtree(mesh_data_root(name), ignore_errors=True)


def test_meshes_sharing_an_engine_leave_each_other_alone_and_down_removes_everything(
    tmp_path: Path, docker_engine: Any
) -> None:
    first, second = new_mesh_name(), new_mesh_name()
    csv = docker_project(tmp_path / "one", worker=False)
    broken = docker_project(tmp_path / "two", worker=False, broken=True)
    try:
        with (
            local_mesh(tmp_path / "m1", name=first, runtime="docker", env=SECRETS) as one,
            local_mesh(tmp_path / "m2", name=second, runtime="docker", env=SECRETS) as two,
        ):
            one.ok("publish", csv, "--wait", timeout=180)
            two.ok("publish", broken)
            # A missing image is that instance's error, said in the status; the others run.
            wait_for(
                lambda: any(
                    "image nosuch/image:1 not available" in e
                    for e in service(two.status(), "prod", "mailer")["errors"]
                ),
                what="the missing image to be reported",
            )
            wait_for(
                lambda: service(two.status(), "prod", "backend")["healthy"] == 1,
                what="the second mesh's backend",
            )
            theirs = {k: c.id for k, c in containers(docker_engine, second).items()}

            one.ok("down", "--context", first)

            assert mesh_objects(docker_engine, first) == {
                "containers": [],
                "networks": [],
                "volumes": [],
            }
            assert {k: c.id for k, c in containers(docker_engine, second).items()} == theirs
            port = service(two.status(), "prod", "backend")["port"]
            assert "shop-prod-backend" in http_get(f"http://{two.address('master')}:{port}/")
    finally:
        remove_mesh_objects(docker_engine, first)
        remove_mesh_objects(docker_engine, second)


def assert_compose_shows(mesh: LocalMesh, running: dict[str, Any]) -> None:
    compose = yaml.safe_load(mesh.ok("compose", "shop", "prod"))
    for key, container in running.items():
        if key.startswith("shop.prod."):
            shown = compose["services"][container.labels["meshd.service"]]
            assert shown["container_name"] == container.name
            assert shown["image"] == container.attrs["Config"]["Image"]
            assert shown["labels"] == container.labels


def assert_secrets_are_files_only(backend: Any, database: Any) -> None:
    """The mesh's and the generated secret are 0400 files, never in `docker inspect`."""
    assert backend.exec_run(["cat", "/run/secrets/jwt_secret"]) == (0, JWT.encode())
    _, mode = backend.exec_run(["stat", "-c", "%a", "/run/secrets/jwt_secret"])
    assert mode.strip() == b"400"
    code, generated = database.exec_run(["cat", "/run/secrets/db_password"])
    assert code == 0 and len(generated) >= 32
    for container in (backend, database):
        inspect = json.dumps(container.attrs).encode()
        assert JWT.encode() not in inspect and generated not in inspect
