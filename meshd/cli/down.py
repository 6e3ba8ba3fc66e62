"""`meshctl down --local`: stop a local mesh and remove everything it left on this machine."""

from __future__ import annotations

import asyncio
import contextlib
import shutil

import click

from meshd.cli.render import console
from meshd.cli.up import open_provider
from meshd.context import load_context, remove_context
from meshd.provisioner import mesh_tag
from plugins.providers import DropletNotFound


@click.command()
@click.option("--local", "local", is_flag=True, required=True, help="The mesh is local.")
@click.option("--name", default=None, help="Name of the mesh (default: the current one).")
def down(local: bool, name: str | None) -> None:
    """Power off and destroy every droplet of a local mesh (their processes and instances
    die with them) and remove its state and context."""
    asyncio.run(_down(name))


async def _down(name: str | None) -> None:
    context = load_context(name)
    provider = open_provider(context.mesh, context.provider)
    try:
        for record in await provider.list(mesh_tag(context.mesh)):
            console.print(f"Destroying droplet [bold]{record.name}[/] ...")
            with contextlib.suppress(DropletNotFound):
                await provider.destroy(record.id, fence=None)
    finally:
        await provider.close()
    shutil.rmtree(context.state_dir, ignore_errors=True)
    remove_context(context.name)
    console.print(f"Mesh [bold]{context.name}[/] is down; nothing of it is left running.")
