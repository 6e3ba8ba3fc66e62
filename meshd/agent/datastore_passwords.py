"""Password rotation without an outage (docs/secrets.md, "Rotation"): before `meshctl secret
set|rotate` rolls the clients of a built-in datastore onto a new `db_password` or
`redis_password`, it asks the agent of the droplet that runs the datastore (a core NATS
request on `mesh.datastore.<droplet>`, `PasswordChange`) to give the running server the new
value. The agent waits until the value is sealed to it (the version asked, from the scope
asked), then has its runtime change it in place (`PasswordChanger`: `ALTER ROLE`, `CONFIG SET
requirepass`), and answers. Connections open with the old password stay; new ones need the new
one, which the clients get as they roll next. The event `datastore_password_changed` says so,
never a value.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol, runtime_checkable

from meshd.agent.reconciler import Reconciler
from meshd.agent.sealed import SealedSecrets
from meshd.agent.store import Received, Store
from plugins.runtimes import InstanceSpec
from protocol import subjects
from protocol.codec import decode, encode
from protocol.errors import MeshError, ProtocolError
from protocol.secrets import PasswordChange, PasswordChangeAnswer

log = logging.getLogger(__name__)
SEALED_WAIT_S = 30.0  # the new version reaches this droplet's mirror within seconds
CHECK_S = 0.2
Answer = PasswordChangeAnswer


@runtime_checkable
class PasswordChanger(Protocol):
    """A runtime that can give a running built-in datastore a new password in place."""

    async def change_password(self, spec: InstanceSpec) -> None: ...


class DatastorePasswords:
    """Answers `meshctl secret`'s requests to change a datastore's password here."""

    def __init__(
        self, store: Store, reconciler: Reconciler, droplet: str, secrets: SealedSecrets
    ) -> None:
        self.store = store
        self.reconciler = reconciler
        self.droplet = droplet
        self.secrets = secrets
        self._lock = asyncio.Lock()  # one change at a time: each is short

    async def run(self) -> None:
        subscription = await self.store.subscribe(
            subjects.datastore_password(self.droplet), self._asked
        )
        try:
            await asyncio.Event().wait()
        finally:
            await subscription.unsubscribe()

    async def _asked(self, message: Received) -> None:
        try:
            request = decode(message.data, PasswordChange)
        except ProtocolError as err:
            await message.respond(encode(Answer(error=f"unreadable request: {err}")))
            return
        started = time.monotonic()
        async with self._lock:
            try:
                error = await self.carry_out(request)
            except Exception as err:  # a bug: said at once, not left to the caller's timeout
                log.exception("Password change failed on a bug. service=%s", request.service)
                error = f"failed: {err}"
        seconds = round(time.monotonic() - started, 2)
        key = subjects.alloc_key(request.project, request.env, request.service)
        log.info("Password change asked. service=%s secret=%s error=%s", key, request.secret, error)
        detail = {"secret": request.secret, "version": request.version, "seconds": seconds}
        self.store.record_soon(
            "datastore_password_changed" if error is None else "datastore_password_not_changed",
            self.droplet,
            key,
            detail if error is None else detail | {"error": error},
        )
        await message.respond(encode(Answer(error=error, seconds=seconds)))

    async def carry_out(self, request: PasswordChange) -> str | None:
        """Change the password of the datastore of `request` here; what went wrong, if any."""
        key = subjects.alloc_key(request.project, request.env, request.service)
        allocation = self.reconciler.allocations.get(key)
        if allocation is None:
            return f"{key} does not run on {self.droplet}"
        runtime = self.reconciler.runtime
        if not isinstance(runtime, PasswordChanger):
            return f"the {runtime.name} runtime cannot change a password in place"
        deadline = time.monotonic() + SEALED_WAIT_S
        while not self._holds(request):
            if time.monotonic() > deadline:
                return f"version {request.version} of {request.secret} did not reach it"
            await asyncio.sleep(CHECK_S)
        try:
            await runtime.change_password(self.reconciler.spec(allocation))
        except (MeshError, LookupError) as err:
            return str(getattr(err, "reason", err))
        return None

    def _holds(self, request: PasswordChange) -> bool:
        found = self.secrets.sealed_version(request.secret, request.project, request.env)
        return found is not None and found[0] >= request.version and found[1] == request.source
