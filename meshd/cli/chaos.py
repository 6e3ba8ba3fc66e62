"""`meshctl chaos`: fault drills on a local mesh (the seed's "test health monitoring by
temporarily stopping a service"), to watch the mesh detect and heal what was done."""

from __future__ import annotations

import asyncio

import click

from meshd.cli.render import console
from meshd.cli.up import open_provider
from meshd.context import load_context
from meshd.provisioner import mesh_tag
from plugins.providers.local import LocalProvider
from protocol.errors import MeshError

ACTIONS = ("kill", "pause", "resume", "partition", "heal")


class DrillRefused(MeshError):
    """The drill cannot be done on this mesh."""


@click.command(no_args_is_help=True)
@click.argument("action", metavar="ACTION", type=click.Choice(ACTIONS))
@click.argument("droplet")
@click.option("--context", "context_name", metavar="NAME", help="Mesh to drill.")
@click.option("--yes-really", is_flag=True, help="Allow drills on a mesh that is not local.")
def chaos(action: str, droplet: str, context_name: str | None, yes_really: bool) -> None:
    """Do ACTION to DROPLET of a local mesh, then watch `meshctl status` and `events`.

    \b
    kill       SIGKILL its processes and kill its containers, as a machine dies
    pause      SIGSTOP them (a frozen machine); `resume` thaws it
    partition  cut it off the network; `heal` reconnects it (needs network-namespace
               droplets: not available yet)
    """
    asyncio.run(_chaos(action, droplet, context_name, yes_really))


async def _chaos(action: str, droplet: str, context_name: str | None, yes_really: bool) -> None:
    context = load_context(context_name)
    provider = open_provider(context.mesh, context.provider)
    try:
        if not isinstance(provider, LocalProvider):
            raise DrillRefused(
                f"chaos {action}: mesh {context.name!r} is not local"
                + ("" if yes_really else "; drills on real droplets need --yes-really")
                + ("; and only local droplets can be drilled so far" if yes_really else "")
            )
        if action in ("partition", "heal"):
            raise DrillRefused(
                f"chaos {action}: loopback droplets cannot be cut off (their nats-server routes "
                "leave from 127.0.0.1); partitions need network-namespace droplets, not built yet"
            )
        records = {r.name: r for r in await provider.list(mesh_tag(context.mesh))}
        record = records.get(droplet)
        if record is None:
            known = ", ".join(sorted(records)) or "none"
            raise click.UsageError(
                f"no droplet {droplet!r} in mesh {context.name!r}; it has {known}"
            )
        if action == "kill":
            await provider.crash(record.id)
        else:
            await provider.pause(record.id, resume=action == "resume")
        console.print(f"{action}: done to [bold]{droplet}[/]. Watch: meshctl status --watch")
    finally:
        await provider.close()
