"""Restart requests (KV `mesh_desired/restart.<project>.<env>.<service>`): one more rolling
restart of a service, asked for by `meshctl restart`, `meshctl secret set` or the `secrets`
role when a secret from Vault changes. The scheduler turns each into a new generation."""

from __future__ import annotations

import time

from meshd.agent.backoff import retries
from meshd.agent.store import Conflict, Store
from protocol import subjects
from protocol.codec import decode, encode
from protocol.errors import MeshError
from protocol.messages import Allocation, RestartRequest

WRITE_ATTEMPTS = 5


async def request_restart(store: Store, allocation: Allocation, who: str) -> int:
    """One more restart request for the allocation's service (compare-and-set); its count."""
    key = subjects.restart_key(allocation.project, allocation.env, allocation.service)
    async for _ in retries(0.05, 0.5, attempts=WRITE_ATTEMPTS):  # another operator wrote
        entry = await store.get(subjects.DESIRED_BUCKET, key)
        previous = decode(entry.value, RestartRequest).count if entry and entry.value else 0
        request = RestartRequest(
            project=allocation.project,
            env=allocation.env,
            service=allocation.service,
            count=max(previous, allocation.restart) + 1,
            requested_by=who,
            requested_at=time.time(),
        )
        try:
            if entry is None:
                await store.create(subjects.DESIRED_BUCKET, key, encode(request))
            else:
                await store.update(
                    subjects.DESIRED_BUCKET, key, encode(request), last=entry.revision
                )
        except Conflict:
            continue
        return request.count
    raise MeshError(f"restart {key}: others kept restarting it at the same time; try again")
