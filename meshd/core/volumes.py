"""What the volume that keeps one droplet's data is called, and where one service's data is
on it (docs/backups.md, "Volumes"): one volume per *logical* droplet, named for the mesh and
the droplet, so a droplet's replacement asks for the same volume, and within DigitalOcean's
rules for volume names. One per droplet rather than one per service: DigitalOcean attaches at
most 15 volumes to a droplet, and the seed's master alone runs 18 datastores."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from pathlib import PurePosixPath

from meshd.core.spec import ServiceKind
from protocol.messages import Allocation

NAME_MAX = 64  # DigitalOcean: lowercase letters, digits and '-', a letter first, ≤ 64
DEFAULT_SIZE_GB = 10  # what a new volume gets; volumes grow, never shrink
_NOT_ALLOWED = re.compile(r"[^a-z0-9-]+")


def volume_name(mesh: str, droplet: str) -> str:
    """`<mesh>-<droplet>`, or, when that breaks the rules (an `_`, too long), its allowed part
    cut short and 8 hex digits of its hash: two droplets never share a volume because their
    names differ only in what the rules do not allow."""
    wanted = f"{mesh}-{droplet}".lower()
    allowed = _NOT_ALLOWED.sub("-", wanted).strip("-")
    if not allowed[:1].isalpha():
        allowed = f"v-{allowed}"
    if allowed == wanted and len(allowed) <= NAME_MAX:
        return allowed
    digest = hashlib.sha256(wanted.encode()).hexdigest()[:8]
    return f"{allowed[: NAME_MAX - 9].rstrip('-')}-{digest}"


def data_directory(project: str, env: str, service: str) -> PurePosixPath:
    """Where one service's data is on its droplet's volume: `<project>/<env>/<service>`."""
    return PurePosixPath(project, env, service)


DATASTORE_KINDS = frozenset({ServiceKind.DATABASE.value, ServiceKind.REDIS.value})


def volume_droplets(allocations: Iterable[Allocation]) -> set[str]:
    """The droplets that may keep data on their volume: where a datastore or a service with a
    `data_path` runs. Wider than the runtimes' rule (a datastore in an image of its own keeps
    none) so as never to leave out one that does."""
    return {
        droplet
        for a in allocations
        if a.data_path is not None or a.service_kind in DATASTORE_KINDS
        for droplet in a.droplets
    }
