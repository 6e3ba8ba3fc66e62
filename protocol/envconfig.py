"""The operator's plain environment variables (`meshctl config`), written as protocol.messages
says. Never secrets: these are stored and shown in clear."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from protocol.base import Message


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigVars(Message):
    """The variables of a project (`env` None) or of one of its environments (KV
    `mesh_desired/config.<project>` or `config.<project>.<env>`, `subjects.config_key`),
    merged into its instances' environment after the mesh's own (docs/configuration.md)."""

    KIND: ClassVar[str] = "config_vars"

    project: str
    env: str | None
    values: dict[str, str] = field(default_factory=dict)
    set_by: str
    set_at: float
