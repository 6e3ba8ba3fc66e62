"""The compose file equivalent to what the docker runtime runs for one project-environment on
one droplet (`meshctl compose`): the same container specs it creates, rendered from
`templates/docker-compose.yml`. Pure: instance specs in, text out. Secret values are never
needed nor shown, only their names."""

from __future__ import annotations

from collections.abc import Sequence

from plugins.runtimes import InstanceSpec
from plugins.runtimes.docker.containers import (
    ContainerSpec,
    ContainerSpecError,
    container_spec,
    network_name,
)
from plugins.templating import render


def compose_file(mesh: str, droplet: str, specs: Sequence[InstanceSpec]) -> str:
    """The compose file of `droplet` for `specs` (services of one project-environment); a
    service that cannot become a container is named in a comment at the top."""
    project, env = specs[0].project, specs[0].env
    containers: list[ContainerSpec] = []
    problems: list[str] = []
    for spec in sorted(specs, key=lambda s: s.service):
        try:
            containers.append(container_spec(spec, mesh, droplet))
        except ContainerSpecError as err:
            problems.append(f"{spec.service}: {err}")
    network = network_name(mesh, droplet, project, env)
    text = render(
        "docker-compose.yml",
        mesh=mesh,
        droplet=droplet,
        project=project,
        env=env,
        name=network,
        network=network,
        containers=containers,
        volumes=sorted(c.volume for c in containers if c.volume),
        secrets=sorted({s for c in containers for s in c.secrets}),
    )
    notes = "".join(f"# not shown, {problem}\n" for problem in problems)
    return notes + text
