"""Where the `logs` role forwards the mesh's log lines besides `meshctl logs` (docs/logs.md):
a sink takes documents, each with an id that makes a second delivery of it a no-op.

Settings are plain data (the deployment config's `logs` object, `meshd.inputs.logs_config`);
`OpenSearchSettings` is the only sink so far."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol

from plugins.urls import http_url_problem
from protocol.errors import MeshError

DEFAULT_INDEX = "meshd-logs"
INDEX_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,254}\Z")


class SinkError(MeshError):
    """The sink did not take every document: the caller sends them again later (the lines wait
    in the logs stream meanwhile, whatever the reason: a login or a mapping can be mended)."""


class LogSink(Protocol):
    async def send(self, documents: list[tuple[str, dict[str, Any]]]) -> None:
        """Store every (id, document); a document stored before under its id is replaced, not
        repeated. `SinkError` when not all were taken."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class OpenSearchSettings:
    url: str
    index: str = DEFAULT_INDEX
    user: str | None = None

    def to_data(self) -> dict[str, Any]:
        return {"url": self.url, "index": self.index, "user": self.user}

    @classmethod
    def from_data(cls, data: dict[str, Any] | None) -> OpenSearchSettings | None:
        if not data or not data.get("url"):
            return None
        return cls(str(data["url"]), str(data.get("index") or DEFAULT_INDEX), data.get("user"))


def open_sink(settings: OpenSearchSettings, password: str | None) -> LogSink:
    """The sink the settings name (imported only when a mesh forwards its logs)."""
    from plugins.logsinks.opensearch import OpenSearchSink

    return OpenSearchSink(settings, password)


def url_problem(url: str) -> str | None:
    """Why `url` is not a cluster's address (None: it is one)."""
    return http_url_problem(url, "https://search.example.com:9200")


def index_problem(index: str) -> str | None:
    if not INDEX_NAME.match(index):
        return (
            f"{index!r} is not an index name; expected lowercase letters, digits, '.', '_' and "
            "'-', starting with a letter or digit, like 'meshd-logs'"
        )
    return None
