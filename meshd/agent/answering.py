"""The requests a droplet's agent answers for others (core NATS request/reply on subjects
named for the droplet): release commands the builder asks it to run, and passwords
`meshctl secret` asks it to change in the datastores it runs."""

from __future__ import annotations

import asyncio

from meshd.agent.datastore_passwords import DatastorePasswords
from meshd.agent.reconciler import Reconciler
from meshd.agent.release_commands import ReleaseCommands
from meshd.agent.sealed import SealedSecrets
from meshd.agent.store import Store


async def answer_requests(
    store: Store, reconciler: Reconciler, droplet: str, secrets: SealedSecrets
) -> None:
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(
            ReleaseCommands(store, reconciler, droplet).run(), name="release-commands"
        )
        tasks.create_task(
            DatastorePasswords(store, reconciler, droplet, secrets).run(), name="passwords"
        )
