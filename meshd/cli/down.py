"""`meshctl down`: stop a mesh and remove everything it left on this machine.

A mesh's own leaders would race a teardown (a recovery leader rebuilds a droplet that `down`
just destroyed), so every droplet is frozen first, all at once, before any is destroyed:
then nothing of the mesh acts any more. After destroying, the provider is asked again until
nothing of the mesh is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from pathlib import Path

import click

from meshd.agent.config import mesh_tag
from meshd.cli.cloud import leave_account
from meshd.cli.context import Context, load_context, remove_context
from meshd.cli.joining import open_provider
from meshd.cli.tables import console
from plugins.procfs import command_line
from plugins.providers import Drills, DropletNotFound, Provider, ProviderError
from plugins.runtimes import mesh_data_root
from protocol.errors import MeshError

ROUNDS = 5  # times the provider is asked again for what is left
SETTLE_S = 0.5  # between rounds: something started meanwhile shows up


@click.command()
@click.option(
    "--context", "context_name", metavar="NAME", help="Mesh to remove (default: the current one)."
)
@click.option("--name", "context_name", hidden=True, help="Old name of --context.")
@click.option("--local", is_flag=True, hidden=True, help="Accepted: the context has the provider.")
@click.option(
    "--delete-data",
    is_flag=True,
    help="Also delete the data of the mesh's datastores and data paths (its volumes, Docker "
    "volumes and data directories). Without it they are kept, and a mesh of the same name "
    "started later finds them again.",
)
@click.option("--keep-data", is_flag=True, hidden=True, help="The default; accepted.")
def down(context_name: str | None, local: bool, delete_data: bool, keep_data: bool) -> None:
    """Stop every droplet of a mesh at once, destroy them (their processes and containers go
    with them) and remove its state, context and Docker networks. The data of its datastores
    is kept unless --delete-data."""
    if delete_data and keep_data:
        raise click.UsageError("--delete-data and --keep-data say opposite things; give one")
    asyncio.run(_down(context_name, keep_data=not delete_data))


async def _down(name: str | None, keep_data: bool) -> None:
    context = load_context(name)
    provider = open_provider(context.mesh, context.provider)
    try:
        droplet_ids = {d.id for d in await provider.list(mesh_tag(context.mesh))}
        await _teardown(provider, context)
        await leave_account(provider, context, droplet_ids, keep_data)
    finally:
        await provider.close()
    if context.local:
        await asyncio.to_thread(_sweep, context.state_dir)
    if context.runtime.get("name") == "docker":
        from plugins.runtimes.docker.admin import remove_objects

        host = (context.runtime.get("config") or {}).get("docker_host")
        await asyncio.to_thread(
            remove_objects, context.mesh, None, docker_host=host, volumes=not keep_data
        )
        if keep_data:
            console.print("Docker volumes of the mesh are kept (--delete-data drops them).")
    volumes = (context.provider.get("config") or {}).get("volumes")
    kept = [p for p in (mesh_data_root(context.mesh), volumes and Path(volumes)) if p]
    if context.local and not keep_data:
        for path in kept:
            shutil.rmtree(path, ignore_errors=True)
    elif context.local and any(p.is_dir() for p in kept):
        shown = [
            p for p in kept if p.is_dir() and not any(p.is_relative_to(o) for o in kept if o != p)
        ]
        where = ", ".join(str(p) for p in shown)  # a volumes directory inside the root: once
        console.print(f"Data of the mesh's datastores is kept in {where} (--delete-data drops it).")
    shutil.rmtree(context.state_dir, ignore_errors=True)
    remove_context(context.name)
    console.print(f"Mesh [bold]{context.name}[/] is down; nothing of it is left running.")


async def _teardown(provider: Provider, context: Context) -> None:
    tag = mesh_tag(context.mesh)
    for _ in range(ROUNDS):
        droplets = await provider.list(tag)
        if not droplets:
            return
        await _freeze(provider, [d.id for d in droplets])
        for record in droplets:
            console.print(f"Destroying droplet [bold]{record.name}[/] ...")
            with contextlib.suppress(DropletNotFound):
                await provider.destroy(record.id, fence=None)
        await asyncio.sleep(SETTLE_S)
    left = ", ".join(sorted(d.name for d in await provider.list(tag)))
    if left:
        raise MeshError(f"down: droplets keep coming back: {left}; run `meshctl down` again")


async def _freeze(provider: Provider, droplet_ids: list[str]) -> None:
    """Stop every droplet from acting before any is destroyed: frozen where the provider can
    freeze (local droplets), else powered off; all at once. A frozen local droplet is then
    killed: one of its processes may hold the provider's account lock (a leader's rebuild in
    flight), which only its death releases, and destroying needs that lock."""

    async def freeze(droplet_id: str) -> None:
        with contextlib.suppress(ProviderError):  # not running already: nothing to stop
            if isinstance(provider, Drills):
                await provider.pause(droplet_id)
            else:
                await provider.power_off(droplet_id, fence=None)

    async def kill(drills: Drills, droplet_id: str) -> None:
        with contextlib.suppress(ProviderError):
            await drills.crash(droplet_id)

    await asyncio.gather(*(freeze(droplet_id) for droplet_id in droplet_ids))
    if isinstance(provider, Drills):
        await asyncio.gather(*(kill(provider, droplet_id) for droplet_id in droplet_ids))


def _sweep(state_dir: Path) -> None:
    """Kill what is left of the mesh's local droplets on this machine: a droplet a leader
    launched just before `down` froze it is running, but its leader died before the
    provider's account said so, so no listing shows it."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        if str(state_dir) in command_line(int(entry.name)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(os.getpgid(int(entry.name)), signal.SIGKILL)
