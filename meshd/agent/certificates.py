"""A TLS mesh's certificate files in a droplet's directory (0600): the mesh CA's certificate
and the droplet's own NATS certificate, as a bootstrap writes them for another droplet. The
CA's key is a mesh secret (`mesh_ca_key`), held in memory by the trusted droplets whose
leaders bootstrap: the `provisioner` writes a droplet a new certificate when its own comes
within RENEW_BEFORE of its end (the droplet reports when: `NodeStatus.tls_expires`), and the
droplet's supervisor has nats-server reload it when the file changes (docs/digitalocean.md, "TLS on
NATS"). A droplet of an older mesh, which holds the CA's key as a file, renews its own."""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable
from pathlib import Path

from meshd.agent.config import CA_CERT_FILE, CA_KEY_FILE, LEAF_CERT_FILE, LEAF_KEY_FILE
from meshd.core.meshca import CertificateError, MeshCA, expires, issue_leaf
from meshd.core.secret_plan import MESH_CA_KEY
from plugins.fs import atomic_write
from plugins.providers import DropletRecord

log = logging.getLogger(__name__)
RENEW_BEFORE = datetime.timedelta(days=180)  # of a droplet certificate's two years


def tls_files(ca: MeshCA, mesh: str, record: DropletRecord) -> dict[str, bytes]:
    """The mesh CA's certificate and `record`'s own certificate for its private address, as
    files of its directory (the same bytes all day: a bootstrap run again changes nothing)."""
    now = datetime.datetime.now(datetime.UTC)
    cert, key = issue_leaf(ca, mesh, record.name, record.address, now)
    return {CA_CERT_FILE: ca.cert_pem, LEAF_CERT_FILE: cert, LEAF_KEY_FILE: key}


def mesh_ca(
    ca_cert: str, droplet_dir: Path, secrets: Callable[[str], bytes | None]
) -> MeshCA | None:
    """The mesh CA with its key, if this droplet holds the key: the mesh secret, else an
    older mesh's file."""
    key = secrets(MESH_CA_KEY)
    if key:
        return MeshCA(ca_cert.encode(), key)
    return own_ca(droplet_dir)


def own_ca(droplet_dir: Path) -> MeshCA | None:
    """The mesh CA as an older mesh's droplet holds it (files), if it does."""
    try:
        return MeshCA((droplet_dir / CA_CERT_FILE).read_bytes(),
                      (droplet_dir / CA_KEY_FILE).read_bytes())  # fmt: skip
    except FileNotFoundError:
        return None


def certificate_expiry(droplet_dir: Path) -> float:
    """When this droplet's NATS certificate ends (seconds since the epoch); 0: it has none."""
    try:
        return expires((droplet_dir / LEAF_CERT_FILE).read_bytes()).timestamp()
    except (FileNotFoundError, CertificateError):
        return 0.0


class CertificateExpiry:
    """`certificate_expiry` for an agent's reports: read again only when the file changed."""

    def __init__(self, droplet_dir: Path) -> None:
        self.dir = droplet_dir
        self._seen: tuple[int, float] = (-1, 0.0)  # mtime (ns), expiry

    def __call__(self) -> float:
        try:
            mtime = (self.dir / LEAF_CERT_FILE).stat().st_mtime_ns
        except FileNotFoundError:
            return 0.0
        if mtime != self._seen[0]:
            self._seen = (mtime, certificate_expiry(self.dir))
        return self._seen[1]


def renewal_due(expiry: float, now: float) -> bool:
    """A certificate that ends within RENEW_BEFORE (0: none, nothing to renew)."""
    return 0.0 < expiry < now + RENEW_BEFORE.total_seconds()


def renew_own_certificate(
    droplet_dir: Path, mesh: str, name: str, address: str, now: datetime.datetime
) -> bool:
    """An older mesh's droplet, which holds the CA's key as a file: issue itself a new
    certificate when its own expires within RENEW_BEFORE (or is missing or unreadable);
    whether it did."""
    ca = own_ca(droplet_dir)
    if ca is None:
        return False
    try:
        ends: datetime.datetime | None = expires((droplet_dir / LEAF_CERT_FILE).read_bytes())
    except (FileNotFoundError, CertificateError):
        ends = None
    if ends is not None and ends - now > RENEW_BEFORE:
        return False
    cert, key = issue_leaf(ca, mesh, name, address, now)
    atomic_write(droplet_dir / LEAF_KEY_FILE, key, mode=0o600)
    atomic_write(droplet_dir / LEAF_CERT_FILE, cert, mode=0o600)
    log.info("NATS certificate renewed. droplet=%s expires=%s", name, expires(cert).isoformat())
    return True
