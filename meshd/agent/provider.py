"""The provider as an agent's leaders use it: named by the mesh's user data, with its own
config section, told of power changes, given the mesh's fence book and the mesh secrets this
droplet holds (a cloud's token: `digitalocean_token`)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from meshd.agent.config import MeshConfig
from meshd.agent.fencebook import StoreFenceBook
from meshd.agent.store import Store
from plugins.providers import PowerHook, Provider, ProviderContext, load_provider


def agent_provider(
    config: MeshConfig,
    on_power: PowerHook,
    store: Callable[[], Store | None],
    secrets: Callable[[str], bytes | None],
) -> Provider:
    section = config.provider
    return load_provider(
        section.get("name", "local"),
        ProviderContext(
            mesh=config.mesh,
            config=dict(section.get("config", {})),
            logger=logging.getLogger("plugins.providers"),
            on_power=on_power,
            fences=StoreFenceBook(store),
            secrets=secrets,
        ),
    )
