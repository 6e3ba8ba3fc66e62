"""The local provider's power hook: a local droplet's containers run in the machine's shared
Docker Engine, outside the droplet's process group, so when the provider kills, freezes, thaws
or destroys the droplet, they must follow. The agent and `meshctl` hand this hook to the
provider (`ProviderContext.on_power`); the provider itself knows no runtime."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)
SIGNALS = {"kill": "kill", "pause": "pause", "unpause": "unpause"}


def follow_power(mesh: str) -> Callable[[str, str, str], None]:
    """The hook for the droplets of `mesh`: `(droplet, user data, event) -> None`."""

    def on_power(droplet: str, user_data: str, event: str) -> None:
        runtime = runtime_section(user_data)
        if runtime.get("name") != "docker":
            return
        from plugins.runtimes.docker.admin import remove_objects, signal_containers

        host = (runtime.get("config") or {}).get("docker_host")
        if event == "remove":
            removed = remove_objects(mesh, droplet, docker_host=host, volumes=False)
            log.info("Droplet's containers removed. droplet=%s objects=%d", droplet, removed)
        elif event in SIGNALS:
            signal_containers(mesh, droplet, SIGNALS[event], docker_host=host)

    return on_power


def runtime_section(user_data: str) -> dict[str, Any]:
    """The runtime section of a droplet's user data ({} when there is none)."""
    try:
        runtime = json.loads(user_data).get("runtime") or {}
    except (ValueError, AttributeError):
        return {}
    return runtime if isinstance(runtime, dict) else {}
