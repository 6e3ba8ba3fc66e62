"""The secrets sealed to this droplet (`mesh_secrets/sealed.<droplet>.>`), opened in memory
with its key (docs/secrets.md): what its instances and its notifiers get. A secret not found
there falls back to the agent's environment (the seed's way, deprecated); the names found only
there are reported, so `meshctl status` can say so. Also whether the mesh key is sealed to
this droplet (`holder.<droplet>`): only then may it hold the `secrets` role."""

from __future__ import annotations

import logging

from meshd.agent.sealkey import DropletKeys
from meshd.core.notify_settings import SECRET_SCOPE
from meshd.core.sealing import SealError, entry_context, from_text, open_sealed
from plugins.secrets import Secrets
from protocol.secrets import SealedSecret

log = logging.getLogger(__name__)
Where = tuple[str | None, str | None, str]  # project, env, name (project and env None: mesh)


class SealedSecrets:
    name = "sealed"

    def __init__(self, keys: DropletKeys, fallback: Secrets) -> None:
        self.keys = keys
        self.fallback = fallback
        self._opened: dict[str, tuple[SealedSecret, bytes]] = {}  # by entry key
        self._values: dict[Where, bytes] = {}
        self.from_environment: set[str] = set()
        self.holder: SealedSecret | None = None  # the mesh key sealed to this droplet
        self.holder_known = False  # `holder` has been read once

    @property
    def holds_mesh_key(self) -> bool:
        """The mesh key is sealed to one of this droplet's keys."""
        mine = {keys.fingerprint for keys in self.keys.all()}
        return self.holder is not None and self.holder.key in mine

    async def set_holder(self, entries: dict[str, SealedSecret]) -> None:
        self.holder = next(iter(entries.values()), None)
        self.holder_known = True

    async def set_sealed(self, entries: dict[str, SealedSecret]) -> None:
        """Replace what this droplet holds by `entries` (by key); an entry opened before and
        unchanged since is not opened again."""
        mine = {keys.fingerprint: keys for keys in self.keys.all()}
        opened: dict[str, tuple[SealedSecret, bytes]] = {}
        for key, sealed in entries.items():
            before = self._opened.get(key)
            if before is not None and before[0] == sealed:
                opened[key] = before
                continue
            keys = mine.get(sealed.key)
            if keys is None:
                continue  # sealed to another key (of an earlier droplet): resealed soon
            try:
                box = from_text(sealed.sealed)
                opened[key] = (sealed, open_sealed(keys, box, entry_context(key, sealed.version)))
            except SealError as err:
                log.error("Sealed secret does not open. key=%s error=%s", key, err)
        self._opened = opened
        self._values = {(s.project, s.env, s.name): value for s, value in opened.values()}

    def sealed_version(self, name: str, project: str, env: str) -> tuple[int, str] | None:
        """The version of secret `name` this droplet holds for a project environment, and the
        scope it came from (`meshctl secret` waits for the one it wrote); None: none sealed."""
        for sealed, _ in self._opened.values():
            if (sealed.project, sealed.env, sealed.name) == (project, env, name):
                return sealed.version, sealed.source
        return None

    def get(self, key: str, project: str, env: str) -> bytes | None:
        where = (None, None, key) if (project, env) == SECRET_SCOPE else (project, env, key)
        found = self._values.get(where)
        if found is not None:
            self.from_environment.discard(key)  # replaced: `meshctl status` stops saying so
            return found
        found = self.fallback.get(key, project, env)
        if found is not None:
            self.from_environment.add(key)
        return found
