"""`meshctl down --local`: stop a local mesh and remove everything it left on this machine."""

from __future__ import annotations

import asyncio
import contextlib
import shutil

import click

from meshd.agent.config import mesh_tag
from meshd.cli.context import load_context, remove_context
from meshd.cli.tables import console
from meshd.cli.up import open_provider
from plugins.providers import DropletNotFound


@click.command()
@click.option("--local", "local", is_flag=True, required=True, help="The mesh is local.")
@click.option("--name", default=None, help="Name of the mesh (default: the current one).")
@click.option(
    "--keep-data",
    is_flag=True,
    help="Keep the mesh's Docker volumes (its databases' data); a mesh of the same name "
    "started later uses them again.",
)
def down(local: bool, name: str | None, keep_data: bool) -> None:
    """Power off and destroy every droplet of a local mesh (their processes and containers
    go with them) and remove its state, context and Docker networks and volumes."""
    asyncio.run(_down(name, keep_data))


async def _down(name: str | None, keep_data: bool) -> None:
    context = load_context(name)
    provider = open_provider(context.mesh, context.provider)
    try:
        for record in await provider.list(mesh_tag(context.mesh)):
            console.print(f"Destroying droplet [bold]{record.name}[/] ...")
            with contextlib.suppress(DropletNotFound):
                await provider.destroy(record.id, fence=None)
    finally:
        await provider.close()
    if context.runtime.get("name") == "docker":
        from plugins.runtimes.docker.admin import remove_objects

        host = (context.runtime.get("config") or {}).get("docker_host")
        await asyncio.to_thread(
            remove_objects, context.mesh, None, docker_host=host, volumes=not keep_data
        )
        if keep_data:
            console.print("Docker volumes of the mesh are kept (--keep-data).")
    shutil.rmtree(context.state_dir, ignore_errors=True)
    remove_context(context.name)
    console.print(f"Mesh [bold]{context.name}[/] is down; nothing of it is left running.")
