"""Allocation: the seed's formula, collisions, reserved ports, stickiness, spare ports."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.core.resources import (
    FAMILY_SIZE,
    PORT_BASES,
    RESERVED_PORTS,
    SPARE_FAMILIES,
    EnvResources,
    allocate,
    resource_hash,
    seed_port,
)

SEED_ENVS = [
    (p, e) for p in ("digitalpixo", "hostomatic", "newstartup") for e in ("prod", "uat", "test")
]


def md5_hash(project: str, env: str) -> str:
    return hashlib.md5(f"{project}-{env}".encode()).hexdigest()[:12]


def test_seed_projects_get_the_seed_formula_ports_and_names() -> None:
    allocations = allocate(SEED_ENVS)
    for project, env in SEED_ENVS:
        h = md5_hash(project, env)
        n = int(h, 16)
        alloc = allocations[(project, env)]
        assert alloc.hash == h
        assert alloc.ports == {
            "backend": 8000 + n % 1000,
            "frontend": 9000 + n % 1000,
            "database": 5000 + n % 1000,
            "redis": 6000 + n % 1000,
        }
        assert alloc.db_name == f"{project}_{env}_{h[:8]}"
        assert alloc.db_user == f"user_{h[:8]}"


def test_database_name_replaces_non_alphanumerics() -> None:
    alloc = allocate([("my-app", "prod")])[("my-app", "prod")]
    assert alloc.db_name == f"my_app_prod_{md5_hash('my-app', 'prod')[:8]}"


def colliding_pair() -> tuple[tuple[str, str], tuple[str, str]]:
    """Two project-environments whose seed ports are equal (found by search)."""
    seen: dict[int, tuple[str, str]] = {}
    for i in range(10_000):
        key = (f"p{i}", "prod")
        port = seed_port("backend", resource_hash(*key))
        if port in RESERVED_PORTS:
            continue
        if port in seen:
            return seen[port], key
        seen[port] = key
    raise AssertionError("no collision in 10000 names")


def test_colliding_newcomer_probes_to_next_free_port_and_first_keeps_its_own() -> None:
    first, second = colliding_pair()
    allocations = allocate([first, second])
    wanted = seed_port("backend", resource_hash(*first))
    ordered = sorted([first, second], key=lambda k: f"{k[0]}-{k[1]}")
    assert allocations[ordered[0]].ports["backend"] == wanted
    assert allocations[ordered[1]].ports["backend"] != wanted
    assert allocations[ordered[1]].ports["backend"] == 8000 + (wanted - 8000 + 1) % 1000


def test_published_first_keeps_its_port_even_if_a_newcomer_sorts_before_it() -> None:
    first, second = colliding_pair()
    later, earlier = sorted([first, second], key=lambda k: f"{k[0]}-{k[1]}", reverse=True)
    existing = allocate([later])
    both = allocate([earlier, later], previous=existing)
    assert both[later] == existing[later]
    assert both[earlier].ports["backend"] != both[later].ports["backend"]


def test_reserved_ports_are_never_handed_out() -> None:
    # Find a project-environment whose seed backend port is the reserved 8080.
    key = next(
        (f"r{i}", "prod")
        for i in range(100_000)
        if seed_port("backend", resource_hash(f"r{i}", "prod")) == 8080
    )
    alloc = allocate([key])[key]
    assert alloc.ports["backend"] == 8081


def test_adding_a_project_never_moves_an_existing_allocation() -> None:
    before = allocate(SEED_ENVS)
    after = allocate([*SEED_ENVS, ("zeta", "prod"), ("alpha", "uat")], previous=before)
    for key, alloc in before.items():
        assert after[key] == alloc


def test_removed_project_environments_release_their_allocation() -> None:
    before = allocate(SEED_ENVS)
    after = allocate(SEED_ENVS[:3], previous=before)
    assert set(after) == set(SEED_ENVS[:3])


def test_web_services_get_a_spare_port_half_a_family_away() -> None:
    alloc = allocate([("hostomatic", "prod")])[("hostomatic", "prod")]
    n = int(md5_hash("hostomatic", "prod"), 16)
    assert alloc.spare_ports == {
        "backend": 8000 + (n + 500) % 1000,
        "frontend": 9000 + (n + 500) % 1000,
    }


def test_allocations_made_before_spares_get_spares_that_take_no_port_in_use() -> None:
    before = allocate(SEED_ENVS)
    stripped = {
        key: EnvResources.from_data({**a.to_data(), "spare_ports": {}}) for key, a in before.items()
    }
    after = allocate(SEED_ENVS, previous=stripped)
    for key, alloc in after.items():
        assert alloc.ports == before[key].ports  # the ports in use never move
        assert set(alloc.spare_ports) == set(SPARE_FAMILIES)
    used = [p for a in after.values() for p in (*a.ports.values(), *a.spare_ports.values())]
    assert len(used) == len(set(used))


def test_allocation_round_trips_through_plain_data() -> None:
    alloc = allocate([("hostomatic", "prod")])[("hostomatic", "prod")]
    assert EnvResources.from_data(alloc.to_data()) == alloc


names = st.from_regex(r"[a-z][a-z0-9-]{0,12}", fullmatch=True)
env_keys = st.lists(st.tuples(names, st.sampled_from(["prod", "uat", "test"])), max_size=60)


@settings(max_examples=200, deadline=None)
@given(env_keys, env_keys)
def test_allocation_is_deterministic_unique_sticky_and_avoids_reserved_ports(
    first: list[tuple[str, str]], added: list[tuple[str, str]]
) -> None:
    before = allocate(first)
    assert allocate(list(reversed(first))) == before
    after = allocate([*first, *added], previous=before)
    for key in before:
        assert after[key] == before[key]
    for family, base in PORT_BASES.items():
        ports = [a.ports[family] for a in after.values()]
        ports += [a.spare_ports[family] for a in after.values() if family in SPARE_FAMILIES]
        assert len(ports) == len(set(ports))
        assert all(base <= p < base + FAMILY_SIZE for p in ports)
        assert not RESERVED_PORTS.intersection(ports)
