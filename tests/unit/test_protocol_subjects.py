"""protocol.subjects: the names of subjects, buckets, keys and streams, and their validation."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from protocol import subjects
from protocol.errors import InvalidNameError, MeshError, ProtocolError
from protocol.subjects import Role


@pytest.mark.parametrize(
    ("built", "expected"),
    [
        (subjects.beats("master"), "mesh.hb.master"),
        (subjects.suspect("hostomatic-web1"), "mesh.suspect.hostomatic-web1"),
        (subjects.probe("web_2"), "mesh.probe.web_2"),
        (subjects.event("lease_taken"), "mesh.events.lease_taken"),
        (subjects.deploy("hostomatic"), "mesh.deploy.hostomatic"),
        (subjects.release_key("hostomatic", "uat", 12), "hostomatic.uat.12"),
        (subjects.release_target_key("hostomatic", "uat"), "release.hostomatic.uat"),
        (subjects.alloc_key("hostomatic", "uat", "backend"), "hostomatic.uat.backend"),
        (subjects.node_key("master"), "master"),
        (subjects.lease_key(Role.LB), "lb"),
        (subjects.lease_key("scheduler"), "scheduler"),
        (subjects.failure_key("hostomatic-web1"), "hostomatic-web1"),
        (subjects.snapshot_key("master"), "master"),
    ],
)
def test_builders_produce_the_documented_names(built: str, expected: str) -> None:
    assert built == expected


def test_bucket_stream_and_key_names_match_the_design() -> None:
    assert subjects.BUCKETS == (
        "mesh_desired",
        "mesh_alloc",
        "mesh_nodes",
        "mesh_index",
        "mesh_leases",
        "mesh_failures",
        "mesh_snapshots",
        "mesh_secrets",
        "mesh_releases",
        "mesh_fences",
        "mesh_certs",
    )
    assert subjects.DESIRED_KEY == "spec"
    assert (subjects.EVENTS_STREAM, subjects.EVENTS_SUBJECTS) == ("MESH_EVENTS", "mesh.events.>")
    assert (subjects.DEPLOY_STREAM, subjects.DEPLOY_SUBJECTS) == ("MESH_DEPLOY", "mesh.deploy.>")


def test_wildcards_cover_what_the_builders_produce() -> None:
    assert subjects.BEATS_ALL == "mesh.hb.*"
    assert subjects.SUSPECTS_ALL == "mesh.suspect.*"
    assert subjects.PROBES_ALL == "mesh.probe.*"
    assert subjects.event("x").startswith(subjects.EVENTS_SUBJECTS.removesuffix(">"))
    assert subjects.deploy("p").startswith(subjects.DEPLOY_SUBJECTS.removesuffix(">"))


def test_roles_are_the_eleven_leased_tasks() -> None:
    assert [r.value for r in Role] == [
        "scheduler",
        "provisioner",
        "lb",
        "heartbeat",
        "recovery",
        "snapshots",
        "builder",
        "secrets",
        "backups",
        "logs",
        "certificates",
    ]
    assert Role("lb") is Role.LB
    assert f"{Role.LB}" == "lb"


BAD_TOKENS = [
    "",
    "Master",
    "web.1",
    "web 1",
    "*",
    ">",
    "web*",
    "web>",
    "-web",
    "_web",
    "web\n",
    "wéb",
    "web/1",
    "x" * 64,
]

BUILDERS: dict[str, Callable[[str], str]] = {
    "heartbeat": subjects.beats,
    "suspect": subjects.suspect,
    "probe": subjects.probe,
    "event": subjects.event,
    "deploy project": subjects.deploy,
    "release env": lambda t: subjects.release_key("hostomatic", t, 1),
    "alloc project": lambda t: subjects.alloc_key(t, "prod", "backend"),
    "alloc env": lambda t: subjects.alloc_key("hostomatic", t, "backend"),
    "alloc service": lambda t: subjects.alloc_key("hostomatic", "prod", t),
    "node": subjects.node_key,
    "failure": subjects.failure_key,
    "snapshot": subjects.snapshot_key,
    "lease": subjects.lease_key,
}


@pytest.mark.parametrize("bad", BAD_TOKENS)
@pytest.mark.parametrize("builder", BUILDERS.values(), ids=BUILDERS.keys())
def test_builders_refuse_invalid_tokens(builder: Callable[[str], str], bad: str) -> None:
    with pytest.raises(InvalidNameError) as caught:
        builder(bad)
    assert caught.value.value == bad
    assert repr(bad) in str(caught.value)


def test_invalid_token_error_says_what_a_valid_token_looks_like() -> None:
    with pytest.raises(ProtocolError) as caught:
        subjects.beats("web.1")
    assert isinstance(caught.value, MeshError)
    assert isinstance(caught.value, ValueError)
    assert str(caught.value) == (
        "droplet 'web.1': must use only lowercase letters, digits, '_' and '-', starting with a "
        "letter or digit (no dots, spaces or wildcards)"
    )


def test_token_refuses_names_longer_than_a_dns_label() -> None:
    assert subjects.node_key("x" * 63) == "x" * 63
    with pytest.raises(InvalidNameError, match="64 characters long, more than 63"):
        subjects.node_key("x" * 64)


def test_token_refuses_values_that_are_not_strings() -> None:
    with pytest.raises(InvalidNameError, match="must be a string, not int"):
        subjects.token(7, "droplet")


def test_lease_key_refuses_unknown_role_and_lists_the_known_ones() -> None:
    with pytest.raises(InvalidNameError, match=r"'king' is not a known role \(known: scheduler,"):
        subjects.lease_key("king")


def test_parse_alloc_key_reverses_alloc_key() -> None:
    key = subjects.alloc_key("hostomatic", "prod", "worker-1")
    assert subjects.parse_alloc_key(key) == ("hostomatic", "prod", "worker-1")


@pytest.mark.parametrize("key", ["hostomatic.prod", "a.b.c.d", "a..c", "A.b.c", ""])
def test_parse_alloc_key_refuses_keys_of_another_shape(key: str) -> None:
    with pytest.raises(InvalidNameError):
        subjects.parse_alloc_key(key)


@pytest.mark.parametrize("build", [subjects.beats, subjects.suspect, subjects.probe])
def test_droplet_of_reads_the_droplet_back_from_a_core_subject(
    build: Callable[[str], str],
) -> None:
    assert subjects.droplet_of(build("hostomatic-web1")) == "hostomatic-web1"


@pytest.mark.parametrize("subject", ["mesh.events.x", "mesh.hb", "mesh.hb.*", "mesh.hb.a.b", ""])
def test_droplet_of_refuses_other_subjects(subject: str) -> None:
    with pytest.raises(InvalidNameError):
        subjects.droplet_of(subject)
