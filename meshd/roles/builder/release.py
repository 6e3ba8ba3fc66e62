"""One release from request to live: the record written at each step (fenced), the target
that makes the scheduler roll the environment, the health gate, and the way back.

A release rolls out through the two-slot rollout: no old instance stops before its replacement
is healthy. One that is not healthy everywhere within the project's `health_timeout` fails:
the environment's previous target is written back (the old release keeps serving) and a
critical alert is queued.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable

from meshd.agent import metrics
from meshd.agent.lease import Term
from meshd.agent.meshview import MeshView
from meshd.agent.records import write_over
from meshd.agent.store import Entry, Store
from meshd.core.releases import release_data
from meshd.core.status import service_status
from protocol import subjects
from protocol.codec import decode, encode
from protocol.errors import ProtocolError
from protocol.releases import DeployProgress, DeployRequest, Release, ReleaseStatus, ReleaseTarget

log = logging.getLogger(__name__)
HEALTH_POLL_S = 0.5
Alert = Callable[[str, dict[str, str]], Awaitable[None]]


class Progress:
    """A request's progress lines: to its inbox when somebody follows, and to the log."""

    def __init__(self, store: Store, request: DeployRequest) -> None:
        self.store = store
        self.request = request

    async def say(
        self,
        line: str,
        *,
        final: bool = False,
        ok: bool = True,
        number: int = 0,
        refused: bool = False,
    ) -> None:
        log.info("Deploy %s: %s", self.request.request_id, line)
        # Only to a deploy inbox: the sender chose the subject, and the agent may publish
        # anywhere.
        if self.request.progress is None or not subjects.is_deploy_inbox(self.request.progress):
            return
        message = DeployProgress(
            request_id=self.request.request_id,
            line=line,
            final=final,
            ok=ok and not refused,
            release=number,
            refused=refused,
        )
        await self.store.publish(self.request.progress, encode(message))


class Records:
    """The release records one builder term writes, each over the revision it read."""

    def __init__(self, store: Store, term: Term) -> None:
        self.store = store
        self.term = term
        self.last: Release | None = None  # the record saved last
        self._revisions: dict[str, int] = {}

    async def save(self, release: Release) -> Release:
        release = dataclasses.replace(release, updated_at=time.time(), fence=self.term.fence)
        key = subjects.release_key(release.project, release.env, release.number)
        self.term.ensure_held()
        self._revisions[key] = await write_over(
            self.store, subjects.RELEASES_BUCKET, key, encode(release), self._revisions.get(key)
        )
        self.last = release
        return release

    def adopt(self, release: Release, revision: int) -> None:
        """A record this term did not write (found unfinished at the start of the term)."""
        self._revisions[subjects.release_key(release.project, release.env, release.number)] = (
            revision
        )


async def roll_out(
    store: Store,
    view: MeshView,
    term: Term,
    records: Records,
    release: Release,
    timeout_s: float,
    say: Callable[[str], Awaitable[None]],
    alert: Alert,
    actor: str,
) -> Release:
    """Make `release` the environment's target and wait until it serves everywhere: LIVE, or
    FAILED with the previous target back."""
    key = subjects.release_target_key(release.project, release.env)
    before = await store.get(subjects.DESIRED_BUCKET, key)
    target = ReleaseTarget(
        project=release.project,
        env=release.env,
        number=release.number,
        artifacts=release.artifacts,
        fence=term.fence,
    )
    term.ensure_held()
    if release.artifacts:
        written = await write_over(
            store, subjects.DESIRED_BUCKET, key, encode(target), before.revision if before else None
        )
    else:  # back to what publish runs
        if before is not None and before.value is not None:
            await store.delete(subjects.DESIRED_BUCKET, key, last=before.revision)
        written = 0
    release = await records.save(dataclasses.replace(release, status=ReleaseStatus.ROLLING))
    await say(f"release {release.number}: rolling out to {release.env}")
    await store.record("release_rolling", actor, _subject(release), release_data(release),
                       term.fence)  # fmt: skip
    built = {a.service for a in release.artifacts} or _services_of(before)
    rolling = time.monotonic()
    deadline = rolling + timeout_s
    while True:
        problems = unhealthy(view, release, built)
        if not problems:
            break
        if time.monotonic() > deadline:
            return await _fail_rollout(
                store, term, records, release, before, written, problems, timeout_s, say, alert,
                actor,
            )  # fmt: skip
        await asyncio.sleep(HEALTH_POLL_S)
    release = await records.save(
        dataclasses.replace(release, status=ReleaseStatus.LIVE, live_at=time.time())
    )
    await store.record("release_live", actor, _subject(release), release_data(release), term.fence)
    metrics.ROLLOUT_SECONDS.observe(time.monotonic() - rolling)
    metrics.RELEASE_SECONDS.observe(time.time() - release.created_at)
    return release


def unhealthy(view: MeshView, release: Release, built: set[str]) -> list[str]:
    """What still keeps `release` from serving everywhere (nothing: it is live): each service
    it runs (`built`) must be allocated with it and healthy on every droplet it is placed on."""
    allocations = view.allocations  # mirrored by the agent: no listing every half second
    # A release without artifacts returns the environment to what publish runs (release 0).
    number = release.number if release.artifacts else 0
    problems = []
    now = time.time()
    for service in sorted(built):
        allocation = allocations.get(subjects.alloc_key(release.project, release.env, service))
        if allocation is None:
            problems.append(f"{service}: not allocated")
            continue
        if allocation.release != number:
            problems.append(f"{service}: not scheduled yet")
            continue
        status = service_status(allocation, view.alive(), now)
        if status["healthy"] < status["desired"]:
            errors = "; ".join(status["errors"][-2:])
            problems.append(
                f"{service}: {status['healthy']}/{status['desired']} healthy"
                + (f" ({errors})" if errors else "")
            )
    return problems


async def _fail_rollout(
    store: Store,
    term: Term,
    records: Records,
    release: Release,
    before: Entry | None,
    written: int,
    problems: list[str],
    timeout_s: float,
    say: Callable[[str], Awaitable[None]],
    alert: Alert,
    actor: str,
) -> Release:
    key = subjects.release_target_key(release.project, release.env)
    term.ensure_held()
    if before is not None and before.value is not None:
        await write_over(store, subjects.DESIRED_BUCKET, key, before.value, written)
    else:
        await store.delete(subjects.DESIRED_BUCKET, key, last=written)
    detail = f"not healthy within {timeout_s:.0f} s: " + "; ".join(problems)
    release = await records.save(
        dataclasses.replace(release, status=ReleaseStatus.FAILED, detail=detail)
    )
    await say(f"release {release.number} failed: {detail}; the previous release keeps serving")
    await store.record("release_failed", actor, _subject(release), release_data(release),
                       term.fence)  # fmt: skip
    await alert(
        f"Release {release.number} of {release.project} {release.env} failed",
        {"release": str(release.number), "sha": release.sha[:12], "why": detail},
    )
    return release


def _services_of(target: Entry | None) -> set[str]:
    """The services an environment's target gave artifacts to."""
    if target is None or target.value is None:
        return set()
    try:
        return {a.service for a in decode(target.value, ReleaseTarget).artifacts}
    except ProtocolError:
        return set()


def _subject(release: Release) -> str:
    return f"{release.project}.{release.env}"
