"""This droplet's X25519 key pair for sealed secrets (docs/secrets.md): made on the droplet at
its first boot, private half 0600 in the agent's data directory, public half in its node
report. A droplet rebuilt from a snapshot finds the key of the droplet the snapshot was taken
from: it makes a new pair (nothing new is ever sealed to the old one) and keeps the old one
as `previous`, which opens only what was sealed before (the mesh key's private half on a
lone master, until the `secrets` role seals it again)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from meshd.core.sealing import KeyPair, from_text, to_text
from plugins.fs import atomic_write

log = logging.getLogger(__name__)
KEY_FILE = "seal-key.json"


@dataclass(frozen=True, slots=True)
class DropletKeys:
    current: KeyPair
    previous: KeyPair | None = None

    def all(self) -> tuple[KeyPair, ...]:
        return (self.current,) if self.previous is None else (self.current, self.previous)


def droplet_keys(data_dir: Path, droplet_id: str) -> DropletKeys:
    """The droplet's keys, made now when it has none of its own."""
    path = data_dir / KEY_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        data = None
    if data is not None and data.get("owner") == droplet_id:
        previous = data.get("previous")
        return DropletKeys(
            KeyPair.from_private(from_text(data["private"], "key")),
            KeyPair.from_private(from_text(previous, "key")) if previous else None,
        )
    inherited = KeyPair.from_private(from_text(data["private"], "key")) if data else None
    made = DropletKeys(KeyPair.new(), inherited)
    record = {
        "owner": droplet_id,
        "private": to_text(made.current.private),
        "previous": to_text(inherited.private) if inherited else None,
    }
    atomic_write(path, json.dumps(record).encode(), mode=0o600)
    log.info(
        "Seal key made. fingerprint=%s replaces=%s",
        made.current.fingerprint,
        inherited.fingerprint if inherited else "none",
    )
    return made
