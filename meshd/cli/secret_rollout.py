"""A secret's scope, and how a new value reaches what uses it (`meshctl secret set|rotate`):
once every droplet that runs a user holds the new version, the built-in datastores that take it
as their password get it in place (their agents change it: `meshd.agent.datastore_passwords`),
so that nothing is refused while the services that use it roll next."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from meshd.agent.restarts import request_restart
from meshd.agent.store import Store
from meshd.cli.context import who
from meshd.cli.session import read_allocations, read_mesh
from meshd.cli.tables import console
from meshd.core.health import rolled_out
from meshd.core.secret_plan import used_by
from meshd.core.spec import TEMPLATE_SECRETS, ServiceKind
from plugins.runtimes import builtin_datastore
from protocol import subjects
from protocol.codec import decode, encode
from protocol.errors import MeshError
from protocol.messages import Allocation, RestartRequest
from protocol.secrets import (
    PasswordChange,
    PasswordChangeAnswer,
    SealedSecret,
    SecretScope,
    SecretValue,
)

SEALED_WAIT_S = 60.0
ROLLED_OUT_WAIT_S = 180.0  # a rollout of a few instances, each waited healthy
PASSWORD_CHANGE_S = 60.0  # the datastore's agent waits up to 30 s for the sealed value


@dataclass(frozen=True, slots=True)
class Scope:
    name: str
    project: str | None = None
    env: str | None = None

    @property
    def key(self) -> str:
        return subjects.secret_value_key(self.name, self.project, self.env)

    @property
    def kind(self) -> SecretScope:
        if self.project is None:
            return SecretScope.MESH
        return SecretScope.PROJECT if self.env is None else SecretScope.ENV

    def __str__(self) -> str:
        where = " ".join(p for p in (self.project, self.env) if p) or "the mesh"
        return f"{self.name} ({where})"


async def secret_values(store: Store) -> dict[str, SecretValue]:
    entries = await store.entries(subjects.SECRETS_BUCKET, subjects.SECRET_VALUES)
    return {key: decode(e.value, SecretValue) for key, e in entries.items() if e.value}


@dataclass(frozen=True, slots=True)
class Rollout:
    """What a new value reached: services `rolled`, datastores whose password was `changed`
    in place, datastores `kept` as they run (restart them when they can take it)."""

    rolled: list[str]
    changed: list[str]
    kept: list[str]


async def roll(store: Store, scope: Scope, version: int, runtime: str) -> Rollout:
    """Once every droplet that runs a user of the value holds its new version (else a new
    instance could start with the old one): the built-in datastores that take it as their
    password change it in place first, then the services roll; other datastores are left."""
    allocations = await read_allocations(store)
    users = set(used_by(scope.key, allocations.values(), await secret_values(store)))
    chosen = [a for key, a in sorted(allocations.items()) if key in users]
    await _wait_sealed(store, scope, version, chosen)
    if any(_takes_in_place(a, scope.name, runtime) for a in chosen):
        await _wait_rolled_out(
            store, [a for a in chosen if not ServiceKind(a.service_kind).is_datastore]
        )
    done = Rollout([], [], [])
    for allocation in chosen:
        key = subjects.alloc_key(allocation.project, allocation.env, allocation.service)
        kind = ServiceKind(allocation.service_kind)
        if not kind.is_datastore:
            continue
        if _takes_in_place(allocation, scope.name, runtime):
            await _change_password(store, scope, version, allocation)
            done.changed.append(key)
        else:
            done.kept.append(key)
    operator = who()
    for allocation in chosen:
        key = subjects.alloc_key(allocation.project, allocation.env, allocation.service)
        if ServiceKind(allocation.service_kind).is_datastore:
            continue
        count = await request_restart(store, allocation, operator)
        await store.record(
            "restart_requested", operator, key, {"count": count, "secret": scope.name}
        )
        done.rolled.append(key)
    return done


def datastores_runtime(runtime: dict[str, Any]) -> str:
    """The runtime that runs a mesh's built-in datastores, from its context's runtime section:
    the process runtime for a Docker mesh whose datastores run apart (`up --datastores`)."""
    name = str(runtime.get("name", "process"))
    apart = (runtime.get("config") or {}).get("datastores") == "process"
    return "process" if apart else name


def _takes_in_place(allocation: Allocation, secret: str, runtime: str) -> bool:
    """Whether the datastore is a built-in one whose password is `secret` on a runtime that
    changes it in place (the process runtime; a Docker template is restarted by hand)."""
    kind = builtin_datastore(runtime, allocation)
    return (
        runtime == "process"
        and kind is not None
        and TEMPLATE_SECRETS.get(ServiceKind(kind)) == secret
    )


async def _change_password(
    store: Store, scope: Scope, version: int, allocation: Allocation
) -> None:
    key = subjects.alloc_key(allocation.project, allocation.env, allocation.service)
    request = PasswordChange(
        project=allocation.project,
        env=allocation.env,
        service=allocation.service,
        secret=scope.name,
        version=version,
        source=scope.key,
    )
    for droplet in allocation.droplets:
        with console.status(f"Changing the password of {key} on {droplet} ..."):
            data = await store.request(
                subjects.datastore_password(droplet), encode(request), PASSWORD_CHANGE_S
            )
        answer = decode(data, PasswordChangeAnswer) if data else None
        if answer is None or answer.error is not None:
            why = answer.error if answer else f"no answer within {PASSWORD_CHANGE_S:.0f} s"
            raise MeshError(
                f"secret {scope}: stored, but {key} on {droplet} did not take it: {why}; "
                "nothing was rolled, its clients keep the password it has"
            )


async def _wait_sealed(
    store: Store, scope: Scope, version: int, allocations: list[Allocation]
) -> None:
    wanted = {
        subjects.sealed_key(d, scope.name, a.project, a.env)
        for a in allocations
        for d in a.droplets
    }
    deadline = time.monotonic() + SEALED_WAIT_S
    with console.status(f"Sealing {scope} to the droplets that use it ..."):
        while True:
            entries = await store.entries(subjects.SECRETS_BUCKET, subjects.SECRETS_SEALED)
            sealed = {
                k: decode(e.value, SealedSecret)
                for k, e in entries.items()
                if k in wanted and e.value
            }
            have = {k for k, s in sealed.items() if s.version >= version and s.source == scope.key}
            if have == wanted:
                return
            if time.monotonic() > deadline:
                missing = ", ".join(sorted(k.split(".")[1] for k in wanted - have))
                raise MeshError(
                    f"secret {scope}: stored, but not sealed to {missing} within "
                    f"{SEALED_WAIT_S:.0f} s; nothing was rolled (`meshctl status`)"
                )
            await asyncio.sleep(0.3)


async def _wait_rolled_out(store: Store, clients: list[Allocation]) -> None:
    """Until no client of the datastore is in the middle of a rollout (another secret's, a
    restart's): an instance started before the new value was sealed but not yet connected would
    otherwise be refused by the password changed in place until the next roll replaced it."""
    deadline = time.monotonic() + ROLLED_OUT_WAIT_S
    with console.status("Waiting for the rollouts under way to finish ..."):
        while True:
            reading = await read_mesh(store)
            busy = []
            for client in clients:
                key = subjects.alloc_key(client.project, client.env, client.service)
                current = reading.allocations.get(key, client)
                asked = await store.get(
                    subjects.DESIRED_BUCKET,
                    subjects.restart_key(client.project, client.env, client.service),
                )
                count = decode(asked.value, RestartRequest).count if asked and asked.value else 0
                if not rolled_out(current, count, reading.nodes, time.time()):
                    busy.append(key)
            if not busy:
                return
            if time.monotonic() > deadline:
                raise MeshError(
                    f"{', '.join(busy)} still rolling out after {ROLLED_OUT_WAIT_S:.0f} s; the "
                    "new value is stored and sealed, the password was not changed (`meshctl "
                    "status`; run the command again once they are healthy)"
                )
            await asyncio.sleep(0.5)
