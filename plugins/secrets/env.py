"""Secrets from the agent's own environment (the seed's default)."""

from __future__ import annotations

import os
from collections.abc import Mapping

from plugins.secrets import lookup_names


class EnvSecrets:
    name = "env"

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ

    def get(self, key: str, project: str, env: str) -> bytes | None:
        for name in lookup_names(key, project, env):
            value = self._environ.get(name)
            if value:
                return value.encode()
        return None
