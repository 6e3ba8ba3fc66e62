"""What the artifact store keeps: the artifacts of the newest releases of every project
environment (`meshd.core.releases.KEEP_RELEASES`) and whatever runs; the rest go, each with an
`artifact_deleted` event. Build logs (`log-<project>-<env>-<number>`) are kept with the
releases that keep their artifacts."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable
from pathlib import Path

from meshd.agent.lease import Term
from meshd.agent.records import releases_of
from meshd.agent.store import Store, StoreUnavailable
from meshd.core.releases import KEEP_RELEASES, kept_digests
from protocol import subjects
from protocol.releases import Release

log = logging.getLogger(__name__)
DIGEST = re.compile(r"[0-9a-f]{64}\Z")  # artifacts
LOG = re.compile(r"log-(?P<key>[a-z0-9_-]+\.[a-z]+\.[0-9]+)\Z")  # a release's build log


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
    kept |= {r.log for r in releases if r.log and kept_log(r, releases, keep)}
    deleted = []
    for name in sorted(await store.object_names(subjects.ARTIFACTS_STORE)):
        if not (DIGEST.match(name) or LOG.match(name)) or name in kept:
            continue
        term.ensure_held()
        await store.delete_object(subjects.ARTIFACTS_STORE, name)
        await store.record("artifact_deleted", actor, name[:12], {"digest": name}, term.fence)
        log.info("Artifact deleted. digest=%s", name[:12])
        deleted.append(name)
    return deleted


def kept_log(release: Release, releases: Iterable[Release], keep: int) -> bool:
    """Whether `release` is among the newest `keep` of its environment."""
    newer = [
        r for r in releases
        if (r.project, r.env) == (release.project, release.env) and r.number > release.number
    ]  # fmt: skip
    return len(newer) < keep


def log_name(release: Release) -> str:
    return f"log-{release.project}.{release.env}.{release.number}"


async def keep_log(store: Store, release: Release, text: str, work: Path) -> str | None:
    """The build's output stored with the release; its name (None: the store did not take
    it, which does not fail the release)."""
    path = work.with_name(f"{work.name}.log")
    try:
        await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(path.write_text, text)
        await store.put_object(subjects.ARTIFACTS_STORE, log_name(release), path)
    except (OSError, StoreUnavailable) as err:
        log.warning("Build log not kept. release=%d error=%s", release.number, err)
        return None
    finally:
        await asyncio.to_thread(path.unlink, True)
    return log_name(release)
