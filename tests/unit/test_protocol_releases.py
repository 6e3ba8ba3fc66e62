"""The messages of git deploys: round trips, and a version-1 deploy request still read."""

from __future__ import annotations

import msgpack
import pytest

from protocol.base import Message
from protocol.codec import decode, encode
from protocol.errors import InvalidNameError
from protocol.releases import (
    Artifact,
    DeployAction,
    DeployProgress,
    DeployRequest,
    Release,
    ReleaseStatus,
    ReleaseTarget,
)
from protocol.subjects import release_key

pytestmark = pytest.mark.unit

ARTIFACT = Artifact(
    service="backend",
    digest="ab" * 32,
    runtime="docker",
    size=2_000_000,
    source="tree:1234",
    image="shop-backend:0123456789ab",
)
SAMPLES: list[Message] = [
    DeployRequest(
        project="shop",
        action=DeployAction.PUSH,
        env=None,
        ref="refs/heads/main",
        sha="0123456789ab" * 3 + "0123",
        requested_by="ana",
        requested_at=1_700_000_000.0,
        request_id="r-1",
        progress="_INBOX.abc",
    ),
    Release(
        project="shop",
        env="uat",
        number=3,
        action=DeployAction.DEPLOY,
        status=ReleaseStatus.LIVE,
        ref="main",
        sha="0123",
        requested_by="ana",
        created_at=1.0,
        updated_at=2.0,
        request_id="r-1",
        artifacts=(ARTIFACT,),
        tag="v1.0.1-uat-20261201-1830",
        snapshots=("master-20261201",),
    ),
    ReleaseTarget(project="shop", env="uat", number=3, artifacts=(ARTIFACT,), fence=7),
    DeployProgress(request_id="r-1", line="building backend", release=3),
]


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).KIND)
def test_every_release_message_survives_a_round_trip(msg: Message) -> None:
    assert decode(encode(msg), type(msg)) == msg


def test_a_version_1_deploy_request_reads_as_a_deploy_of_its_ref() -> None:
    old = msgpack.packb(
        {
            "kind": "deploy_request",
            "v": 1,
            "project": "shop",
            "env": "uat",
            "git_ref": "refs/heads/main",
            "requested_by": "ana",
            "requested_at": 5.0,
        }
    )
    request = decode(old, DeployRequest)
    assert (request.action, request.env, request.ref, request.sha) == (
        DeployAction.DEPLOY,
        "uat",
        "refs/heads/main",
        "",
    )


def test_only_finished_statuses_say_so() -> None:
    finished = {s for s in ReleaseStatus if s.finished}
    assert finished == {
        ReleaseStatus.LIVE,
        ReleaseStatus.FAILED,
        ReleaseStatus.SUPERSEDED,
        ReleaseStatus.CANCELLED,
    }


def test_release_numbers_start_at_one() -> None:
    with pytest.raises(InvalidNameError):
        release_key("shop", "uat", 0)
