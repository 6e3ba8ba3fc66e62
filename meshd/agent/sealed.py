"""The secrets sealed to this droplet (`mesh_secrets/sealed.<droplet>.>`), opened in memory
with its key (docs/secrets.md): what its instances and its notifiers get. A secret not found
there falls back to the agent's environment (the seed's way, deprecated); the names found only
there are reported, so `meshctl status` can say so."""

from __future__ import annotations

import logging

from meshd.agent.sealkey import DropletKeys
from meshd.core.notify_settings import SECRET_SCOPE
from meshd.core.sealing import SealError, entry_context, from_text, open_sealed
from plugins.secrets import Secrets
from protocol.secrets import SealedSecret

log = logging.getLogger(__name__)


class SealedSecrets:
    name = "sealed"

    def __init__(self, keys: DropletKeys, fallback: Secrets) -> None:
        self.keys = keys
        self.fallback = fallback
        self._values: dict[tuple[str | None, str | None, str], bytes] = {}
        self.versions: dict[tuple[str | None, str | None, str], int] = {}
        self.from_environment: set[str] = set()

    async def set_sealed(self, entries: dict[str, SealedSecret]) -> None:
        """Replace what this droplet holds by `entries` (by key), opened with its key."""
        values: dict[tuple[str | None, str | None, str], bytes] = {}
        versions: dict[tuple[str | None, str | None, str], int] = {}
        mine = {keys.fingerprint: keys for keys in self.keys.all()}
        for key, sealed in entries.items():
            keys = mine.get(sealed.key)
            if keys is None:
                continue  # sealed to another key (of an earlier droplet): resealed soon
            try:
                value = open_sealed(
                    keys, from_text(sealed.sealed), entry_context(key, sealed.version)
                )
            except SealError as err:
                log.error("Sealed secret does not open. key=%s error=%s", key, err)
                continue
            where = (sealed.project, sealed.env, sealed.name)
            values[where], versions[where] = value, sealed.version
        self._values, self.versions = values, versions

    def get(self, key: str, project: str, env: str) -> bytes | None:
        where = (None, None, key) if (project, env) == SECRET_SCOPE else (project, env, key)
        found = self._values.get(where)
        if found is not None:
            return found
        found = self.fallback.get(key, project, env)
        if found is not None:
            self.from_environment.add(key)
        return found
