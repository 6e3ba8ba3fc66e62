"""The requests a droplet's agent answers for others (core NATS request/reply on subjects
named for the droplet): release commands the builder asks it to run, passwords `meshctl
secret` asks it to change in the datastores it runs, backups and restores of those that the
`backups` leader asks for, and one-off commands `meshctl exec` runs beside an instance."""

from __future__ import annotations

import asyncio
from pathlib import Path

from meshd.agent.datastore_backups import DatastoreBackups
from meshd.agent.datastore_passwords import DatastorePasswords
from meshd.agent.oneoffs import OneOffs
from meshd.agent.reconciler import Reconciler
from meshd.agent.release_commands import ReleaseCommands
from meshd.agent.sealed import SealedSecrets
from meshd.agent.sealkey import DropletKeys
from meshd.agent.store import Store


async def answer_requests(
    store: Store,
    reconciler: Reconciler,
    droplet: str,
    secrets: SealedSecrets,
    keys: DropletKeys,
    work: Path,
) -> None:
    """`work`: scratch space for dumps on their way (the agent's own, 0700)."""
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(
            ReleaseCommands(store, reconciler, droplet).run(), name="release-commands"
        )
        tasks.create_task(
            DatastorePasswords(store, reconciler, droplet, secrets).run(), name="passwords"
        )
        tasks.create_task(
            DatastoreBackups(store, reconciler, droplet, keys, work).run(), name="backups"
        )
        tasks.create_task(OneOffs(store, reconciler, droplet).run(), name="oneoffs")
