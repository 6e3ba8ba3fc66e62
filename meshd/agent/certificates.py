"""A TLS mesh's certificate files in a droplet's directory (0600): the mesh CA and the
droplet's own NATS certificate, as a bootstrap writes them for another droplet, and as a
droplet renews its own before it expires (docs/digitalocean.md, "TLS on NATS")."""

from __future__ import annotations

import datetime
import logging
from pathlib import Path

from meshd.agent.config import CA_CERT_FILE, CA_KEY_FILE, LEAF_CERT_FILE, LEAF_KEY_FILE
from meshd.core.meshca import CertificateError, MeshCA, expires, issue_leaf
from plugins.fs import atomic_write
from plugins.providers import DropletRecord

log = logging.getLogger(__name__)
RENEW_BEFORE = datetime.timedelta(days=180)  # of a droplet certificate's two years


def tls_files(ca: MeshCA, mesh: str, record: DropletRecord) -> dict[str, bytes]:
    """The mesh CA and `record`'s own certificate for its private address, as files of its
    directory (the same bytes all day: a bootstrap run again changes nothing)."""
    now = datetime.datetime.now(datetime.UTC)
    cert, key = issue_leaf(ca, mesh, record.name, record.address, now)
    return {CA_CERT_FILE: ca.cert_pem, CA_KEY_FILE: ca.key_pem, LEAF_CERT_FILE: cert,
            LEAF_KEY_FILE: key}  # fmt: skip


def own_ca(droplet_dir: Path) -> MeshCA | None:
    """The mesh CA this droplet holds, if it holds one."""
    try:
        return MeshCA((droplet_dir / CA_CERT_FILE).read_bytes(),
                      (droplet_dir / CA_KEY_FILE).read_bytes())  # fmt: skip
    except FileNotFoundError:
        return None


def renew_own_certificate(
    droplet_dir: Path, mesh: str, name: str, address: str, now: datetime.datetime
) -> bool:
    """Issue this droplet a new certificate from the CA it holds when its own expires within
    RENEW_BEFORE (or is missing or unreadable); whether it did. A droplet that lives long
    without being bootstrapped again keeps serving NATS."""
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
