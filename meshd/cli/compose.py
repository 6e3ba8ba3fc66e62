"""`meshctl compose PROJECT ENV`: the compose file equivalent to what runs."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import click

from meshd.agent.reconciler.instances import instance_spec
from meshd.cli.context import load_context
from meshd.cli.session import connect, read_mesh
from meshd.core.envvars import resolve_hosts
from plugins.runtimes.docker.compose import compose_file
from protocol.errors import MeshError
from protocol.messages import Allocation


@click.command()
@click.argument("project")
@click.argument("env", type=click.Choice(["prod", "uat", "test"]))
@click.option("--droplet", metavar="NAME", help="Only this droplet (default: every droplet).")
@click.option("--context", "context_name", metavar="NAME", help="Mesh to talk to.")
def compose(project: str, env: str, droplet: str | None, context_name: str | None) -> None:
    """Print the docker-compose file equivalent to the containers that run PROJECT's ENV
    services, one YAML document per droplet. For reading, or for running them by hand;
    secrets appear by name only."""
    asyncio.run(_compose(project, env, droplet, context_name))


async def _compose(project: str, env: str, droplet: str | None, context_name: str | None) -> None:
    context = load_context(context_name)
    store = await connect(context)
    try:
        view = await read_mesh(store)
    finally:
        await store.close()
    allocations = [a for a in view.allocations.values() if (a.project, a.env) == (project, env)]
    if not allocations:
        known = sorted({a.project for a in view.allocations.values()})
        raise MeshError(
            f"compose: no services of {project} {env} in mesh {context.name!r}; "
            f"projects: {', '.join(known) or 'none (publish first)'}"
        )
    placed = sorted({d for a in allocations for d in a.droplets})
    if droplet is not None and droplet not in placed:
        raise MeshError(
            f"compose: nothing of {project} {env} runs on {droplet!r}; "
            f"it runs on {', '.join(placed)}"
        )
    addresses = {name: node.address for name, node in view.nodes.items()}
    documents = [
        droplet_compose(context.mesh, name, allocations, addresses)
        for name in ([droplet] if droplet else placed)
    ]
    click.echo("---\n".join(documents), nl=False)


def droplet_compose(
    mesh: str, droplet: str, allocations: Sequence[Allocation], addresses: Mapping[str, str]
) -> str:
    """The compose file of what `droplet` runs of `allocations` (one project-environment):
    the instance specs its runtime gets, secrets by name only, host variables resolved where
    the addresses are known."""
    address = addresses.get(droplet, droplet)
    specs = []
    for allocation in allocations:
        if droplet not in allocation.droplets:
            continue
        hosts = resolve_hosts(allocation.hosts, addresses) or dict(allocation.hosts)
        secrets = {name: b"" for name in allocation.secrets}
        specs.append(instance_spec(allocation, address, hosts, secrets))
    return compose_file(mesh, droplet, specs)
