"""Releases as plain data: numbering, promotion and rollback sources, retention, and what an
allocation runs once its environment has a release."""

from __future__ import annotations

import dataclasses

import pytest

from meshd.core.releases import (
    ReleaseChoiceError,
    kept_digests,
    next_number,
    promotion_source,
    release_data,
    release_summary,
    rollback_source,
    with_release,
    with_snapshots,
)
from protocol.messages import Allocation
from protocol.releases import Artifact, DeployAction, Release, ReleaseStatus, ReleaseTarget

pytestmark = pytest.mark.unit


def artifact(digest: str, service: str = "backend") -> Artifact:
    return Artifact(service, digest * 64, "docker", 10, f"src-{digest}", f"shop-{service}:{digest}")


def release(number: int, status: ReleaseStatus, digest: str = "", env: str = "uat") -> Release:
    return Release(
        project="shop",
        env=env,
        number=number,
        action=DeployAction.DEPLOY,
        status=status,
        ref="main",
        sha=f"{number:040d}",
        requested_by="ana",
        created_at=float(number),
        updated_at=float(number),
        request_id=f"r{number}",
        artifacts=(artifact(digest),) if digest else (),
    )


LIVE, FAILED = ReleaseStatus.LIVE, ReleaseStatus.FAILED


def test_numbers_grow_from_one() -> None:
    assert next_number([]) == 1
    assert next_number([release(3, LIVE), release(1, LIVE)]) == 4


def test_a_promotion_takes_the_newest_live_uat_release_or_the_one_named() -> None:
    uat = [release(1, LIVE, "a"), release(2, LIVE, "b"), release(3, FAILED, "c")]
    assert promotion_source(uat).number == 2
    assert promotion_source(uat, 1).number == 1
    with pytest.raises(ReleaseChoiceError, match="failed, not live"):
        promotion_source(uat, 3)
    with pytest.raises(ReleaseChoiceError, match="no release 9"):
        promotion_source(uat, 9)
    with pytest.raises(ReleaseChoiceError, match="no live release"):
        promotion_source([release(1, FAILED, "a")])


def test_a_rollback_takes_the_newest_live_release_before_the_current_one() -> None:
    found = [release(1, LIVE, "a"), release(2, FAILED, "b"), release(3, LIVE, "c")]
    assert rollback_source(found, current=3).number == 1
    assert rollback_source(found, current=3, number=3).number == 3
    assert rollback_source(found, current=1) is None  # back to what publish runs
    with pytest.raises(ReleaseChoiceError, match="nothing to roll back"):
        rollback_source(found, current=0)
    with pytest.raises(ReleaseChoiceError, match="never built"):
        rollback_source([*found, release(4, FAILED)], current=3, number=4)


def test_retention_keeps_the_newest_releases_of_each_environment_and_what_runs() -> None:
    uat = [release(n, LIVE, chr(ord("a") + n)) for n in range(1, 8)]
    prod = [release(1, LIVE, "b", env="prod")]
    kept = kept_digests([*uat, *prod], running={"z" * 64}, keep=5)
    assert kept == {c * 64 for c in "defgh"} | {"b" * 64, "z" * 64}


def test_an_allocation_runs_its_environments_release_artifact_instead_of_a_build() -> None:
    allocation = Allocation(
        project="shop", env="uat", service="backend", generation=4, droplets=("master",),
        port=9000, image="shop-backend:disk", command=None, memory_mb=64,
        build_context="/home/ana/shop/app", dockerfile="/home/ana/shop/app/Dockerfile",
        build_secrets=("npm_token",),
    )  # fmt: skip
    target = ReleaseTarget(project="shop", env="uat", number=7, artifacts=(artifact("c"),), fence=1)
    ran = with_release(allocation, target)
    assert (ran.image, ran.artifact, ran.release) == ("shop-backend:c", "c" * 64, 7)
    assert ran.build_context is None and ran.dockerfile is None and ran.build_secrets == ()
    assert with_release(allocation, None) == allocation
    other = dataclasses.replace(allocation, service="frontend")
    assert with_release(other, target) == other  # not built by the release


def test_release_data_is_plain_and_links_commit_release_and_artifacts() -> None:
    data = release_data(dataclasses.replace(release(2, LIVE, "d"), snapshots=("s1",)))
    assert (data["action"], data["status"], data["sha"]) == ("deploy", "live", f"{2:040d}")
    assert data["artifacts"] == {
        "backend": {"digest": "d" * 64, "image": "shop-backend:d", "size": 10}
    }
    assert data["snapshots"] == ["s1"] and type(data["action"]) is str


def test_the_summary_tells_what_runs_and_a_newer_release_that_does_not() -> None:
    found = [release(1, LIVE, "a"), release(2, FAILED, "b"), release(1, LIVE, "a", env="prod")]
    found[1] = dataclasses.replace(found[1], detail="not healthy within 60 s: backend 0/1")
    targets = {
        ("shop", "uat"): ReleaseTarget(project="shop", env="uat", number=1, artifacts=(), fence=1)
    }
    prod, uat = release_summary(targets, found)
    assert (prod["env"], prod["live"], prod["newest"]["status"]) == ("prod", None, "live")
    assert uat["live"]["number"] == 1
    assert uat["newest"]["number"] == 2 and uat["newest"]["detail"].startswith("not healthy")


def test_a_release_links_the_snapshots_taken_while_it_ran() -> None:
    from protocol.messages import Snapshot, SnapshotIndex

    def snap(name: str, releases: dict[str, int]) -> Snapshot:
        generations = dict.fromkeys(releases, 1)
        return Snapshot(id=name, name=name, droplet_id="1", created_at=1.0,
                        generations=generations, fence=1, releases=releases)  # fmt: skip

    indexes = [
        SnapshotIndex(
            droplet="master",
            snapshots=(
                snap("master-2", {"shop.uat.backend": 2, "shop.prod.backend": 1}),
                snap("master-1", {"shop.uat.backend": 1}),
            ),
        ),  # fmt: skip
        SnapshotIndex(droplet="web1", snapshots=(snap("web1-1", {"shop.uat.worker": 2}),)),
    ]
    linked = with_snapshots(release(2, LIVE, "b"), indexes)
    assert linked.snapshots == ("master-2", "web1-1")
    assert with_snapshots(release(3, LIVE, "c"), indexes).snapshots == ()
