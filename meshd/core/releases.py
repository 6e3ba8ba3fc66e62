"""Releases as plain data: numbering, which release a promotion or a rollback reuses, which
artifacts are kept, and what an allocation runs once its environment has a release.

A release is immutable once finished; `LIVE` means it reached every droplet healthy at some
time. Which release an environment runs is its target (`ReleaseTarget`), not the newest live
record: after a rollback the newest live record is the rollback itself, whose artifacts are
an older release's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from protocol.messages import Allocation, SnapshotIndex
from protocol.releases import Release, ReleaseStatus, ReleaseTarget

KEEP_RELEASES = 5  # per project environment, with their artifacts (and anything running)


class ReleaseChoiceError(ValueError):
    """No release fits what was asked (the message says what there is)."""


def next_number(releases: Iterable[Release]) -> int:
    return max((r.number for r in releases), default=0) + 1


def newest_first(releases: Iterable[Release]) -> list[Release]:
    return sorted(releases, key=lambda r: r.number, reverse=True)


def promotion_source(uat: Iterable[Release], number: int = 0) -> Release:
    """The UAT release a promotion copies: release `number`, or the newest that went live."""
    found = newest_first(uat)
    if number:
        chosen = next((r for r in found if r.number == number), None)
        if chosen is None:
            raise ReleaseChoiceError(f"UAT has no release {number}")
        if chosen.status is not ReleaseStatus.LIVE:
            raise ReleaseChoiceError(
                f"UAT release {number} is {chosen.status.value}, not live: only a release "
                "that went live and healthy on UAT can be promoted"
            )
        return chosen
    live = next((r for r in found if r.status is ReleaseStatus.LIVE), None)
    if live is None:
        raise ReleaseChoiceError("UAT has no live release to promote; deploy to UAT first")
    return live


def rollback_source(releases: Iterable[Release], current: int, number: int = 0) -> Release | None:
    """The release a rollback reuses: `number`, or the newest live one before `current` (the
    release the environment runs now); None: none went live before it, so back to what
    `publish` runs (the build of the operator's disk, or nothing until a deploy)."""
    found = newest_first(releases)
    if number:
        chosen = next((r for r in found if r.number == number), None)
        if chosen is None:
            raise ReleaseChoiceError(f"there is no release {number}")
        if not chosen.artifacts:
            raise ReleaseChoiceError(f"release {number} has no artifacts (it never built)")
        return chosen
    if not current:
        raise ReleaseChoiceError("it runs no release: nothing to roll back")
    earlier = [r for r in found if r.number < current and r.status is ReleaseStatus.LIVE]
    return earlier[0] if earlier else None


def kept_digests(
    releases: Iterable[Release], running: Iterable[str], keep: int = KEEP_RELEASES
) -> set[str]:
    """The artifacts to keep: those of the newest `keep` releases of each environment that
    have artifacts, and whatever runs."""
    by_env: dict[tuple[str, str], list[Release]] = {}
    for release in releases:
        if release.artifacts:
            by_env.setdefault((release.project, release.env), []).append(release)
    kept = set(running)
    for found in by_env.values():
        for release in newest_first(found)[:keep]:
            kept.update(a.digest for a in release.artifacts)
    return kept


def with_release(allocation: Allocation, target: ReleaseTarget | None) -> Allocation:
    """`allocation` running its environment's release: a service the release built runs the
    release's artifact (and never a build of the operator's disk); others are as published."""
    if target is None:
        return allocation
    artifact = next((a for a in target.artifacts if a.service == allocation.service), None)
    if artifact is None:
        return allocation
    return dataclasses.replace(
        allocation,
        image=artifact.image,
        build_context=None,
        dockerfile=None,
        build_secrets=(),
        artifact=artifact.digest,
        release=target.number,
    )


def config_digest(project_data: Mapping[str, Any]) -> str:
    """A short digest of a project's published settings, kept with each release."""
    text = json.dumps(project_data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def release_data(release: Release) -> dict[str, Any]:
    """A release as plain data for `--json` and the API (commit -> release -> snapshot)."""
    return {
        "project": release.project,
        "env": release.env,
        "number": release.number,
        "action": release.action.value,
        "status": release.status.value,
        "ref": release.ref,
        "sha": release.sha,
        "tag": release.tag,
        "tag_pushed": release.tag_pushed,
        "from_release": release.from_release or None,
        "requested_by": release.requested_by,
        "created_at": release.created_at,
        "updated_at": release.updated_at,
        "live_at": release.live_at,
        "detail": release.detail,
        "artifacts": {
            a.service: {"digest": a.digest, "image": a.image, "size": a.size}
            for a in release.artifacts
        },
        "config_digest": release.config_digest,
        "snapshots": list(release.snapshots),
    }


def release_summary(
    targets: Mapping[tuple[str, str], ReleaseTarget], releases: Iterable[Release]
) -> list[dict[str, Any]]:
    """Per project environment with releases: the release it runs (`live`, None while none
    went live) and the newest release when that is another one (building, failed...)."""
    by_env: dict[tuple[str, str], list[Release]] = {}
    for release in releases:
        by_env.setdefault((release.project, release.env), []).append(release)
    order = {"prod": 0, "uat": 1, "test": 2}
    summary = []
    for (project, env), found in sorted(
        by_env.items(), key=lambda i: (i[0][0], order.get(i[0][1], 9))
    ):
        target = targets.get((project, env))
        running = next((r for r in found if target and r.number == target.number), None)
        newest = newest_first(found)[0]
        summary.append(
            {
                "project": project,
                "env": env,
                "live": _brief(running) if running else None,
                "newest": _brief(newest) if newest is not running else None,
            }
        )
    return summary


def _brief(release: Release) -> dict[str, Any]:
    return {
        "number": release.number,
        "status": release.status.value,
        "sha": release.sha[:12],
        "tag": release.tag,
        "action": release.action.value,
        "detail": release.detail.splitlines()[0] if release.detail else None,
    }


def with_snapshots(release: Release, indexes: Iterable[SnapshotIndex]) -> Release:
    """`release` with the post-deployment snapshots taken while a droplet ran it."""
    prefix = f"{release.project}.{release.env}."
    names = [
        snapshot.name
        for index in indexes
        for snapshot in index.snapshots
        if any(k.startswith(prefix) and n == release.number for k, n in snapshot.releases.items())
    ]
    return dataclasses.replace(release, snapshots=tuple(sorted(set(names))))
