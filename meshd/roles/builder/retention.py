"""Artifacts kept and deleted: those of the newest releases of every project environment
(`meshd.core.releases.KEEP_RELEASES`) and whatever runs stay; the rest of the artifact store's
artifacts go, each with an `artifact_deleted` event."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

from meshd.agent.lease import Term
from meshd.agent.records import releases_of
from meshd.agent.store import Store
from meshd.core.releases import KEEP_RELEASES, kept_digests
from protocol import subjects

log = logging.getLogger(__name__)
DIGEST = re.compile(r"[0-9a-f]{64}\Z")  # artifacts; other objects (logs) are not theirs


async def delete_unkept(
    store: Store,
    projects: Iterable[str],
    running: Iterable[str],
    term: Term,
    actor: str,
    keep: int = KEEP_RELEASES,
) -> list[str]:
    """Delete the artifacts no recent release keeps and nothing runs; the digests deleted."""
    releases = [r for project in projects for r in await releases_of(store, project)]
    kept = kept_digests(releases, running, keep)
    deleted = []
    for name in sorted(await store.object_names(subjects.ARTIFACTS_STORE)):
        if not DIGEST.match(name) or name in kept:
            continue
        term.ensure_held()
        await store.delete_object(subjects.ARTIFACTS_STORE, name)
        await store.record("artifact_deleted", actor, name[:12], {"digest": name}, term.fence)
        log.info("Artifact deleted. digest=%s", name[:12])
        deleted.append(name)
    return deleted
