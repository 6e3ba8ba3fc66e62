"""Built artifacts delivered to this droplet: before the reconciler starts an instance whose
allocation names an artifact, the runtime must have it. When it has not, the object `<digest>`
of the mesh's artifact store is fetched into `<data_dir>/fetching/<digest>.partial`, its
SHA-256 checked against the digest, loaded into the runtime, and the file removed. One fetch
per digest at a time: instances that need the same artifact wait for that one fetch.

The store exists only once the agent's control plane has connected (`store` is set then, and
cleared when it goes). Until then, and while the store does not answer, an instance that needs
a missing artifact waits (`NotReady`), as it does for a droplet's address. An artifact the
store does not have, whose bytes do not match its digest or that the runtime cannot load fails
the start (`InstanceStartError`), which the reconciler retries with backoff.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import defaultdict
from pathlib import Path

from meshd.agent.reconciler.instances import NotReady
from meshd.agent.store import Store, StoreError, StoreUnavailable
from plugins.runtimes import ArtifactError, InstanceStartError, Runtime
from protocol import subjects
from protocol.messages import Allocation

log = logging.getLogger(__name__)
FETCH_DIR = "fetching"
PARTIAL = ".partial"
READ_BYTES = 1024 * 1024
MB = 1_000_000


class ArtifactDelivery:
    """What makes the runtime of one droplet have the artifacts its allocations name."""

    def __init__(self, runtime: Runtime, droplet: str, data_dir: Path) -> None:
        self.runtime = runtime
        self.droplet = droplet
        self.store: Store | None = None  # set by the agent once the mesh's store is open
        self.fetches = 0  # how many fetches finished, for tests and curiosity
        self._directory = data_dir / FETCH_DIR
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        for left in self._directory.glob(f"*{PARTIAL}"):  # by an agent killed while fetching
            left.unlink(missing_ok=True)

    async def ensure(self, key: str, allocation: Allocation) -> None:
        """Make the runtime have the artifact instance `key` of `allocation` runs (nothing
        when it names none); `NotReady` to wait, `InstanceStartError` when it fails."""
        digest = allocation.artifact
        if digest is None:
            return
        async with self._locks[digest]:
            try:
                if await self.runtime.has_artifact(digest, allocation.image):
                    return
                await self._fetch(key, digest, allocation)
            except ArtifactError as err:
                raise InstanceStartError(key, str(err)) from None

    async def _fetch(self, key: str, digest: str, allocation: Allocation) -> None:
        store = self.store
        if store is None:
            raise NotReady(f"waiting for the mesh to fetch artifact {digest[:12]}")
        path = self._directory / f"{digest}{PARTIAL}"
        started = time.monotonic()
        try:
            await asyncio.to_thread(self._directory.mkdir, mode=0o700, parents=True, exist_ok=True)
            if not await store.get_object(subjects.ARTIFACTS_STORE, digest, path):
                raise InstanceStartError(
                    key, f"artifact {digest[:12]} is not in the artifact store"
                )
            size, actual = await asyncio.to_thread(sha256_of, path)
            if actual != digest:
                reason = f"artifact {digest[:12]} refused: its bytes have SHA-256 {actual[:12]}"
                raise InstanceStartError(key, reason)
            fetched = time.monotonic() - started
            await self.runtime.load_artifact(digest, allocation.image, path)
        except StoreUnavailable as err:
            raise NotReady(f"waiting for the artifact store: {err}") from None
        except StoreError as err:
            raise InstanceStartError(key, f"fetch artifact {digest[:12]}: {err}") from None
        finally:
            await asyncio.to_thread(path.unlink, missing_ok=True)
        self.fetches += 1
        loaded = time.monotonic() - started - fetched
        log.info(
            "Artifact fetched. digest=%s mb=%.1f seconds=%.2f mb_per_s=%.1f load_seconds=%.2f",
            digest[:12],
            size / MB,
            fetched,
            size / MB / max(fetched, 1e-6),
            loaded,
        )
        detail = {"digest": digest, "bytes": size, "seconds": round(fetched, 2)}
        detail |= {"load_seconds": round(loaded, 2), "release": allocation.release}
        subject = subjects.alloc_key(allocation.project, allocation.env, allocation.service)
        await store.record("artifact_fetched", self.droplet, subject, detail, 0)


def sha256_of(path: Path) -> tuple[int, str]:
    """The size of the file at `path` and the SHA-256 of its bytes, in hex."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as source:
        while chunk := source.read(READ_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()
