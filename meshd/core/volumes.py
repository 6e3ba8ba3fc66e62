"""What the volume that keeps one service's data on one droplet is called (docs/backups.md,
"Volumes"): named for the mesh, the *logical* droplet and the service, so a droplet's
replacement asks for the same volume, and within DigitalOcean's rules for volume names."""

from __future__ import annotations

import hashlib
import re

NAME_MAX = 64  # DigitalOcean: lowercase letters, digits and '-', a letter first, ≤ 64
DEFAULT_SIZE_GB = 10  # what a new volume gets; volumes grow, never shrink
_NOT_ALLOWED = re.compile(r"[^a-z0-9-]+")


def volume_name(mesh: str, droplet: str, project: str, env: str, service: str) -> str:
    """`<mesh>-<droplet>-<project>-<env>-<service>`, or, when that breaks the rules (an `_`,
    too long), its allowed part cut short and 8 hex digits of its hash: two services never
    share a volume because their names differ only in what the rules do not allow."""
    wanted = f"{mesh}-{droplet}-{project}-{env}-{service}".lower()
    allowed = _NOT_ALLOWED.sub("-", wanted).strip("-")
    if not allowed[:1].isalpha():
        allowed = f"v-{allowed}"
    if allowed == wanted and len(allowed) <= NAME_MAX:
        return allowed
    digest = hashlib.sha256(wanted.encode()).hexdigest()[:8]
    return f"{allowed[: NAME_MAX - 9].rstrip('-')}-{digest}"
