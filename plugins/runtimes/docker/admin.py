"""What the command line and the agent's composition root may ask of a Docker Engine without a
runtime: which engine answers, and the mesh's objects signalled or removed (fault drills on
local droplets, a destroyed local droplet, `meshctl down`). Blocking; call them in a thread.
This is the docker plugin's declared face outside the runtime: nothing else of it is imported
from outside `plugins.runtimes.docker`."""

from __future__ import annotations

import contextlib

import docker
import docker.errors

from plugins.runtimes.docker.containers import label_filter, owner_labels
from plugins.runtimes.docker.engine import engine_client

ADMIN_TIMEOUT_S = 60


def engine_version(docker_host: str | None = None, timeout: float = 3.0) -> str | None:
    """What answers at `docker_host` (default: `DOCKER_HOST` or the local socket), like
    "Docker Engine 20.10.24" or "Podman Engine 4.3.1", or None if nothing does."""
    try:
        client = engine_client(docker_host, timeout)
        try:
            version = client.version()
        finally:
            client.close()
    except (docker.errors.DockerException, OSError):
        return None
    for component in version.get("Components") or []:
        name = str(component.get("Name", ""))
        if name.endswith("Engine") and name != "Engine":  # Docker's is just "Engine"
            return f"{name} {component.get('Version', '?')}"
    return f"Docker Engine {version.get('Version', '?')}"


def signal_containers(
    mesh: str, droplet: str, action: str, *, docker_host: str | None = None
) -> int:
    """`kill`, `pause` or `unpause` the droplet's running containers (a dead or frozen machine
    takes its containers with it); how many."""
    try:
        client = engine_client(docker_host, ADMIN_TIMEOUT_S)
    except (docker.errors.DockerException, OSError):
        return 0
    done = 0
    labels = {"label": label_filter(owner_labels(mesh, droplet))}
    try:
        for container in client.containers.list(filters=labels):
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                getattr(container, action)()
                done += 1
    finally:
        client.close()
    return done


def remove_objects(
    mesh: str, droplet: str | None, *, docker_host: str | None = None, volumes: bool
) -> int:
    """Remove the containers and networks (and, if `volumes`, the volumes) labelled with
    `mesh` (and `droplet`, if given); the number of objects removed."""
    try:
        client = engine_client(docker_host, ADMIN_TIMEOUT_S)
    except (docker.errors.DockerException, OSError):
        return 0  # no engine: nothing of ours can be running on it
    removed = 0
    labels = {"label": label_filter(owner_labels(mesh, droplet))}
    try:
        for container in client.containers.list(all=True, filters=labels):
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
                removed += 1
        for network in client.networks.list(filters=labels):
            with contextlib.suppress(docker.errors.NotFound):
                network.remove()
                removed += 1
        if volumes:
            for volume in client.volumes.list(filters=labels):
                with contextlib.suppress(docker.errors.NotFound):
                    volume.remove(force=True)
                    removed += 1
    finally:
        client.close()
    return removed
