"""Where the engine writes each instance's output: its `json-file` log (`LogPath`), read from
disk by the agent's log shipper instead of one blocking log stream per container. A container
of another log driver has no such file and is left out (its output stays in `docker logs`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import docker
import docker.errors

from plugins.runtimes import LogFile
from plugins.runtimes.docker.containers import instance_key_of, label_filter
from protocol.errors import ProtocolError


class LogPaths:
    """Container id -> its log file, inspected once per container."""

    def __init__(self) -> None:
        self._paths: dict[str, str] = {}

    def files(self, client: docker.DockerClient, labels: dict[str, str]) -> list[LogFile]:
        raws: list[dict[str, Any]] = client.api.containers(
            all=True, filters={"label": label_filter(labels)}
        )
        found = []
        for raw in raws:
            try:
                key = instance_key_of(raw.get("Labels") or {})
            except (KeyError, ValueError, ProtocolError):
                continue  # not an instance (a one-off, a build)
            path = self._path(client, raw["Id"])
            if path:
                found.append(LogFile(key, Path(path), "json-file"))
        self._paths = {k: v for k, v in self._paths.items() if k in {r["Id"] for r in raws}}
        return found

    def _path(self, client: docker.DockerClient, container: str) -> str:
        if container not in self._paths:
            try:
                found = client.api.inspect_container(container)
            except docker.errors.NotFound:
                return ""
            self._paths[container] = found.get("LogPath") or ""
        return self._paths[container]
