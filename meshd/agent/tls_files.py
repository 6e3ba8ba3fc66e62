"""The certificates the lb holder serves, as files of its nginx directory (docs/tls.md).

While it holds `lb`, the entry point mirrors `mesh_certs` and, for each certificate whose key
(a mesh secret sealed to this trusted droplet) is here and matches, writes the chain and the
key (0600) under names made from their digest: a renewed certificate is a new file name, so
the rendered configuration changes and nginx reloads. A certificate whose key has not
arrived yet, or does not match (the record moved on before the sealing did), leaves the one
served before in place: a renewal never takes HTTPS down. Files no configuration names any
more are removed.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

from meshd.agent.loops import mirror_bucket
from meshd.agent.store import Store
from meshd.core.tls_chain import key_matches
from plugins.fs import atomic_write
from plugins.lb import SiteTls
from protocol import certs, subjects
from protocol.certs import Certificate

log = logging.getLogger(__name__)

Site = tuple[str, str]  # project, env


class ServedCertificates:
    def __init__(
        self, store: Store, directory: Path, secret: Callable[[str], bytes | None]
    ) -> None:
        self.store = store
        self.directory = directory  # <lb>/tls
        self.secret = secret
        self.records: dict[Site, Certificate] = {}
        self._served: dict[Site, tuple[str, bytes, SiteTls]] = {}  # chain, key, files
        self._named: set[str] = set()  # file names of the last two sets handed out

    async def mirror(self, on_change: Callable[[], None]) -> None:
        """Keep `records` current (runs while the lease is held)."""

        async def arrived(values: dict[str, Certificate]) -> None:
            self.records = {(c.project, c.env): c for c in values.values() if c.issued}
            on_change()

        await mirror_bucket(
            self.store, subjects.CERTS_BUCKET, Certificate, arrived, certs.CERTIFICATES
        )

    def current(self) -> dict[Site, SiteTls]:
        """The files to serve per site: its newest certificate whose key is here, else the
        one served before."""
        for site, record in self.records.items():
            served = self._served.get(site)
            key = self.secret(record.key_secret)
            if key is None or (served and served[:2] == (record.chain, key)):
                continue
            if not key_matches(record.chain, key):
                log.info("Certificate key not here yet. site=%s-%s", *site)
                continue
            self._served[site] = (record.chain, key, self._write(site, record, key))
        found = {site: files for site, (_, _, files) in self._served.items()}
        self._tidy(found)
        return found

    def _write(self, site: Site, record: Certificate, key: bytes) -> SiteTls:
        digest = hashlib.sha256(record.chain.encode() + key).hexdigest()[:16]
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        chain = self.directory / f"{site[0]}-{site[1]}-{digest}.pem"
        secret = self.directory / f"{site[0]}-{site[1]}-{digest}.key"
        atomic_write(chain, record.chain.encode(), mode=0o600)
        atomic_write(secret, key, mode=0o600)
        log.info("Certificate ready to serve. site=%s-%s until=%s", *site, record.not_after)
        return SiteTls(str(chain), str(secret), tuple(record.covers))

    def _tidy(self, found: dict[Site, SiteTls]) -> None:
        """Remove the files neither this set nor the one before names (nginx may still be
        restarted with the configuration before)."""
        named = {Path(p).name for f in found.values() for p in (f.certificate, f.key)}
        keep = named | self._named
        self._named = named
        if not self.directory.is_dir():
            return
        for path in self.directory.iterdir():
            if path.name not in keep:
                path.unlink(missing_ok=True)
