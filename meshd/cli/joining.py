"""What `up` does to any mesh, local or on a cloud: its provider opened from the context's
section, droplets that are off powered on, and the wait until every agent has joined."""

from __future__ import annotations

import asyncio
import logging
import time

from meshd.agent.config import mesh_tag
from meshd.agent.records import last_placement
from meshd.agent.store import StoreUnavailable
from meshd.cli.context import Context
from meshd.cli.session import connect, jetstream_settled, read_mesh
from meshd.cli.tables import console
from meshd.local.power import follow_power
from plugins.providers import DropletStatus, Provider, ProviderContext, load_provider
from protocol.errors import MeshError

JOIN_TIMEOUT_S = 120.0  # with three droplets, JetStream grows to three servers first


def open_provider(mesh: str, provider: dict[str, object]) -> Provider:
    config = provider.get("config", {})
    assert isinstance(config, dict)
    return load_provider(
        str(provider.get("name", "local")),
        ProviderContext(
            mesh=mesh,
            config=dict(config),
            logger=logging.getLogger("meshctl"),
            on_power=follow_power(mesh),
        ),
    )


async def power_on(context: Context) -> None:
    provider = open_provider(context.mesh, context.provider)
    try:
        for record in await provider.list(mesh_tag(context.mesh)):
            if record.status is DropletStatus.OFF:
                console.print(f"Powering on droplet [bold]{record.name}[/] ...")
                await provider.power_on(record.id, fence=None)
    finally:
        await provider.close()


async def wait_joined(context: Context) -> None:
    provider = open_provider(context.mesh, context.provider)
    try:
        expected = {r.name for r in await provider.list(mesh_tag(context.mesh))}
    finally:
        await provider.close()
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    joined: set[str] = set()
    with console.status("Waiting for the agents to join ...") as progress:
        while time.monotonic() < deadline:
            try:
                store = await connect(context)
                try:
                    reading = await read_mesh(store)
                    # With three droplets JetStream grows to three servers: a mesh is up once
                    # it has (the control plane pauses for the move).
                    settled = await jetstream_settled(store, reading, await last_placement(store))
                finally:
                    await store.close()
                joined = {d["name"] for d in reading.status()["droplets"] if d["healthy"]}
                more = "" if settled else ", JetStream growing"
                progress.update(
                    f"Waiting for the agents to join ... {len(joined & expected)}/{len(expected)}"
                    + more
                )
                if expected <= joined and settled:
                    break
            except StoreUnavailable:
                pass
            await asyncio.sleep(0.5)
        else:
            missing = ", ".join(sorted(expected - joined))
            raise MeshError(
                f"up: droplets did not join within {JOIN_TIMEOUT_S:.0f} s: {missing}; "
                f"see the logs under {context.state_dir}"
            )
    console.print(
        f"Mesh [bold]{context.name}[/] is up: {len(expected)} droplets "
        f"({', '.join(sorted(expected))}). Next: `meshctl publish examples/projects.csv --wait`."
    )
