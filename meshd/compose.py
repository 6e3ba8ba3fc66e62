"""The compose file equivalent to what runs for one project-environment on one droplet
(`meshctl compose`): the same container specs the docker runtime creates, rendered from
`templates/docker-compose.yml`. Pure: allocations and addresses in, text out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from meshd.environment import resolve_hosts
from meshd.instances import instance_spec
from plugins.runtimes.containers import (
    ContainerSpec,
    ContainerSpecError,
    container_spec,
    network_name,
)
from plugins.templating import render
from protocol.messages import Allocation


def compose_file(
    mesh: str,
    droplet: str,
    allocations: Sequence[Allocation],
    addresses: Mapping[str, str],
) -> str:
    """The compose file of `droplet` for `allocations` (one project-environment). Secret
    values are never needed nor shown: only their names."""
    project, env = allocations[0].project, allocations[0].env
    address = addresses.get(droplet, droplet)
    containers: list[ContainerSpec] = []
    problems: list[str] = []
    for allocation in sorted(allocations, key=lambda a: a.service):
        if droplet not in allocation.droplets:
            continue
        hosts = resolve_hosts(allocation.hosts, addresses) or dict(allocation.hosts)
        secrets = {name: b"" for name in allocation.secrets}
        spec = instance_spec(allocation, address, hosts, secrets)
        try:
            containers.append(container_spec(spec, mesh, droplet))
        except ContainerSpecError as err:
            problems.append(f"{allocation.service}: {err}")
    text = render(
        "docker-compose.yml",
        mesh=mesh,
        droplet=droplet,
        project=project,
        env=env,
        name=network_name(mesh, droplet, project, env),
        network=network_name(mesh, droplet, project, env),
        containers=containers,
        volumes=sorted(c.volume for c in containers if c.volume),
        secrets=sorted({s for c in containers for s in c.secrets}),
    )
    notes = "".join(f"# not shown, {problem}\n" for problem in problems)
    return notes + text
