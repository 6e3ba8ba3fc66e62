"""`meshctl chaos`: fault drills on a local mesh (the seed's "test health monitoring by
temporarily stopping a service"), to watch the mesh detect and heal what was done."""

from __future__ import annotations

import asyncio

import click

from meshd.agent.config import mesh_tag
from meshd.cli.context import load_context
from meshd.cli.joining import open_provider
from meshd.cli.tables import console
from plugins.providers import Drills
from protocol.errors import MeshError

ACTIONS = ("kill", "pause", "resume", "partition", "lose", "heal")


class DrillRefused(MeshError):
    """The drill cannot be done on this mesh."""


@click.command(no_args_is_help=True)
@click.argument("action", metavar="ACTION", type=click.Choice(ACTIONS))
@click.argument("droplet")
@click.option(
    "--from",
    "peers",
    metavar="DROPLET",
    multiple=True,
    help="partition: cut it off these droplets only (repeat the option); default: all.",
)
@click.option(
    "--probability",
    type=click.FloatRange(0.0, 1.0, min_open=True),
    default=0.1,
    show_default=True,
    help="lose: the share of packets it drops.",
)
@click.option("--context", "context_name", metavar="NAME", help="Mesh to drill.")
@click.option("--yes-really", is_flag=True, help="Allow drills on a mesh that is not local.")
def chaos(
    action: str,
    droplet: str,
    peers: tuple[str, ...],
    probability: float,
    context_name: str | None,
    yes_really: bool,
) -> None:
    """Do ACTION to DROPLET of a local mesh, then watch `meshctl status` and `events`.

    \b
    kill       SIGKILL its processes and kill its containers, as a machine dies
    pause      SIGSTOP them (a frozen machine); `resume` thaws it
    partition  cut it off the network (or off --from droplets); its processes run on
    lose       drop --probability of the packets it receives
    heal       undo partition and lose
    partition, lose and heal need a mesh started with `meshctl up --netns` (root).
    """
    asyncio.run(_chaos(action, droplet, peers, probability, context_name, yes_really))


async def _chaos(
    action: str,
    droplet: str,
    peers: tuple[str, ...],
    probability: float,
    context_name: str | None,
    yes_really: bool,
) -> None:
    context = load_context(context_name)
    provider = open_provider(context.mesh, context.provider)
    try:
        if not isinstance(provider, Drills):
            raise DrillRefused(
                f"chaos {action}: mesh {context.name!r} is not local"
                + ("" if yes_really else "; drills on real droplets need --yes-really")
                + ("; and only local droplets can be drilled so far" if yes_really else "")
            )
        records = {r.name: r for r in await provider.list(mesh_tag(context.mesh))}
        record = records.get(droplet)
        if record is None:
            known = ", ".join(sorted(records)) or "none"
            raise click.UsageError(
                f"no droplet {droplet!r} in mesh {context.name!r}; it has {known}"
            )
        if peers and action != "partition":
            raise click.UsageError("--from goes with partition only")
        unknown = sorted(set(peers) - set(records))
        if unknown:
            raise click.UsageError(f"--from: no droplet {', '.join(unknown)} in the mesh")
        if action == "kill":
            await provider.crash(record.id)
        elif action in ("pause", "resume"):
            await provider.pause(record.id, resume=action == "resume")
        elif action == "partition":
            await provider.partition(record.id, [records[p].address for p in peers])
        elif action == "lose":
            await provider.lose(record.id, probability)
        else:
            await provider.heal(record.id)
        console.print(f"{action}: done to [bold]{droplet}[/]. Watch: meshctl status --watch")
    finally:
        await provider.close()
