"""The `digitalocean` provider against the DigitalOcean stand-in (API only, its clock at
speed 100): droplets made, listed, powered, resized and destroyed as the provider interface
says, with what DigitalOcean makes hard: answers lost after a create (never two droplets),
lists that lag, GETs that 404 just after a create, server errors, pending events, the rate
limits. Every request the provider sent was valid against the API description."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import asyncssh
import pytest
import pytest_asyncio

from meshd.agent.fencebook import StoreFenceBook
from plugins.providers import (
    DropletNotFound,
    DropletStatus,
    Fence,
    ProviderConfigError,
    ProviderContext,
    ProviderError,
    SnapshotNotFound,
    StaleFence,
    VolumeInUse,
    load_provider,
)
from plugins.providers.digitalocean import DigitalOceanProvider, parse_settings, storage
from plugins.providers.digitalocean.api import Api
from plugins.providers.digitalocean.budget import RESERVE, RateBudget
from sim.digitalocean.firewalls import policies
from tests.support.digitalocean import Stand, start_stand
from tests.support.memstore import MemoryStore

SPEED = 100.0  # a create (45 s) takes 0.45 s
TAGS = ["meshd-shop", "meshd-web"]


@pytest_asyncio.fixture
async def fast() -> AsyncIterator[Stand]:
    made, runner = await start_stand(speed=SPEED)
    try:
        yield made
    finally:
        await runner.cleanup()
    assert made.violations() == []
    assert made.invalid() == [], "requests the API description refuses"


@pytest_asyncio.fixture
async def provider(fast: Stand) -> AsyncIterator[DigitalOceanProvider]:
    config = {"region": "fra1", "token": fast.token, "api_url": fast.url, "poll_s": 0.05,
              "action_timeout_s": 60}  # fmt: skip
    made = load_provider("digitalocean", ProviderContext(mesh="shop", config=config))
    assert isinstance(made, DigitalOceanProvider)
    try:
        yield made
    finally:
        await made.close()


def with_sleep(fast: Stand, sleep: Callable[[float], Awaitable[None]]) -> DigitalOceanProvider:
    """A provider whose waits (backoff, budget, polls) go through `sleep`."""
    token, url, settings, pace = parse_settings(
        {"region": "fra1", "token": fast.token, "api_url": fast.url}
    )
    api = Api(token, url, sleep=sleep)
    return DigitalOceanProvider(
        ProviderContext(mesh="shop"), api, settings, replace(pace, poll_s=0.05, sleep=sleep)
    )


async def test_a_droplet_is_created_active_and_reached_on_its_private_address(
    fast: Stand, provider: DigitalOceanProvider
) -> None:
    record = await provider.create("web-1", "s-1vcpu-1gb", tags=TAGS, user_data="{}", fence=None)

    assert (record.name, record.size, record.status) == ("web-1", "s-1vcpu-1gb", "active")
    assert record.address.startswith(fast.world.machines.networks.private + ".")
    assert record.tags == tuple(TAGS)
    assert await provider.get(record.id) == record
    assert [r.id for r in await provider.list("meshd-shop")] == [record.id]
    assert await provider.list("meshd-other") == []
    with pytest.raises(ProviderError, match="exists already"):
        await provider.create("web-1", "s-1vcpu-1gb", tags=TAGS, user_data="", fence=None)


async def test_a_create_whose_answer_is_lost_makes_one_droplet_even_when_lists_lag(
    fast: Stand, provider: DigitalOceanProvider
) -> None:
    fast.world.faults.method = "POST"
    fast.world.faults.path_contains = "/v2/droplets"
    fast.world.faults.lost_rate = 1.0  # done, and answered 503
    fast.world.knobs.list_lag = 5.0  # seconds of the stand-in's clock: 0.05 s here
    fast.world.knobs.get_404_after_create = 5.0

    record = await provider.create("web-2", "s-1vcpu-1gb", tags=TAGS, user_data="", fence=None)

    assert [d["name"] for d in fast.world.droplets.values()] == ["web-2"]
    assert record.status == DropletStatus.ACTIVE


async def test_reads_are_sent_again_after_server_errors(fast: Stand) -> None:
    fast.world.faults.method = "GET"
    fast.world.faults.error_rate = 1.0
    waits: list[float] = []

    async def sleep(seconds: float) -> None:  # the backoff; then the API mends
        waits.append(seconds)
        fast.world.faults.error_rate = 0.0

    provider = with_sleep(fast, sleep)
    try:
        assert await provider.list() == []
    finally:
        await provider.close()
    assert len(waits) == 1 and waits[0] <= 0.5  # the first backoff: full jitter up to 0.5 s
    assert [r["status"] for r in fast.log()] == [503, 200]


async def test_power_and_resize_wait_for_their_actions_and_pending_events(
    fast: Stand, provider: DigitalOceanProvider
) -> None:
    made = await provider.create("web-4", "s-1vcpu-1gb", tags=TAGS, user_data="", fence=None)
    fast.world.delays.quick = 50.0  # half a second here: sure to be running still
    async with fast.client() as do:  # someone else's action still running on the droplet
        await do.droplet_actions.post(int(made.id), {"type": "enable_ipv6"})

    await provider.power_off(made.id, fence=None)
    assert (await provider.get(made.id)).status == DropletStatus.OFF
    await provider.power_off(made.id, fence=None)  # idempotent
    await provider.power_on(made.id, fence=None)
    await provider.power_on(made.id, fence=None)  # idempotent
    assert (await provider.get(made.id)).status == DropletStatus.ACTIVE

    await provider.resize(made.id, "s-2vcpu-4gb", fence=None)
    resized = await provider.get(made.id)
    assert (resized.size, resized.status) == ("s-2vcpu-4gb", DropletStatus.ACTIVE)
    pending = [r for r in fast.log() if r["status"] == 422]
    assert pending, "the provider met no pending event: the test proves nothing"


async def test_destroy_is_done_even_when_its_answer_is_lost(
    fast: Stand, provider: DigitalOceanProvider
) -> None:
    made = await provider.create("web-5", "s-1vcpu-1gb", tags=TAGS, user_data="", fence=None)
    fast.world.faults.method = "DELETE"
    fast.world.faults.lost_rate = 1.0

    await provider.destroy(made.id, fence=None)

    assert fast.world.droplets == {}
    fast.world.faults.lost_rate = 0.0
    with pytest.raises(DropletNotFound):
        await provider.destroy(made.id, fence=None)
    with pytest.raises(DropletNotFound):
        await provider.get(made.id)


async def test_the_burst_limit_is_waited_out_not_reported(fast: Stand) -> None:
    fast.world.limiter.limits.per_minute = 3
    waits: list[float] = []

    async def sleep(seconds: float) -> None:  # a minute passes at once
        waits.append(seconds)
        fast.world.limiter.reset()

    provider = with_sleep(fast, sleep)
    try:
        for _ in range(5):
            assert await provider.list() == []
    finally:
        await provider.close()
    assert waits and all(0 < w <= 60 for w in waits)


def test_the_budget_spreads_the_last_requests_and_obeys_retry_after() -> None:
    budget = RateBudget()
    assert budget.wait_s(0) == 0
    budget.note({"ratelimit-remaining": "4000", "ratelimit-reset": "3600"}, now=0)
    assert budget.wait_s(0) == 0
    budget.note({"ratelimit-remaining": str(RESERVE // 2), "ratelimit-reset": "1000"}, now=0)
    assert budget.wait_s(0) == pytest.approx(1000 / (RESERVE // 2))
    budget.note_refused({"retry-after": "7"}, now=10)
    assert budget.wait_s(10) == pytest.approx(7)
    budget.note_refused({"ratelimit-remaining": "0", "ratelimit-reset": "3000"}, now=20)
    assert budget.wait_s(20) == pytest.approx(2980)  # the hourly limit: until the reset


def test_settings_say_what_is_missing_and_never_show_the_token(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("DIGITALOCEAN_TOKEN", raising=False)
    with pytest.raises(ProviderConfigError, match="region"):
        parse_settings({"token": "dop_v1_secret"})
    with pytest.raises(ProviderConfigError, match="DIGITALOCEAN_TOKEN") as caught:
        parse_settings({"region": "fra1"})
    assert "dop_v1" not in str(caught.value)
    monkeypatch.setenv("DIGITALOCEAN_TOKEN", "dop_v1_from_env")
    token, url, settings, _ = parse_settings({"region": "fra1"})
    assert (token, url, settings["image"]) == (
        "dop_v1_from_env", "https://api.digitalocean.com", "debian-12-x64"
    )  # fmt: skip
    caplog.set_level(logging.DEBUG)
    assert "dop_v1" not in caplog.text


async def test_a_snapshot_outlives_its_droplet_and_a_rebuild_keeps_id_and_address(
    fast: Stand, provider: DigitalOceanProvider
) -> None:
    made = await provider.create("db-1", "s-1vcpu-1gb", tags=TAGS, user_data="", fence=None)
    snapshot = await provider.snapshot(made.id, "db-1-after-deploy", fence=None)
    assert (snapshot.name, snapshot.droplet_id) == ("db-1-after-deploy", made.id)

    rebuilt = await provider.rebuild(made.id, fence=None, snapshot_id=snapshot.id)

    assert (rebuilt.id, rebuilt.address, rebuilt.status) == (made.id, made.address, "active")
    assert fast.world.droplets[int(made.id)]["image"]["id"] == int(snapshot.id)
    with pytest.raises(SnapshotNotFound):
        await provider.rebuild(made.id, fence=None, snapshot_id="999")
    await provider.destroy(made.id, fence=None)
    assert [s.id for s in await provider.list_snapshots()] == [snapshot.id]
    await provider.delete_snapshot(snapshot.id, fence=None)
    with pytest.raises(SnapshotNotFound):
        await provider.delete_snapshot(snapshot.id, fence=None)


async def test_a_volume_follows_its_droplet_and_is_never_on_two(
    provider: DigitalOceanProvider,
) -> None:
    one = await provider.create("db-2", "s-1vcpu-1gb", tags=TAGS, user_data="", fence=None)
    two = await provider.create("db-3", "s-1vcpu-1gb", tags=TAGS, user_data="", fence=None)
    volume = await provider.create_volume("shop-prod-db", 10, fence=None)
    assert provider.mount_path("shop-prod-db") == Path("/mnt/shop-prod-db")

    assert (await provider.attach_volume(volume.id, one.id, fence=None)).droplet_id == one.id
    assert (await provider.attach_volume(volume.id, one.id, fence=None)).droplet_id == one.id
    with pytest.raises(VolumeInUse):
        await provider.attach_volume(volume.id, two.id, fence=None)
    with pytest.raises(VolumeInUse):
        await provider.delete_volume(volume.id, fence=None)
    assert (await provider.detach_volume(volume.id, fence=None)).droplet_id is None
    assert (await provider.attach_volume(volume.id, two.id, fence=None)).droplet_id == two.id
    assert (await provider.resize_volume(volume.id, 20, fence=None)).size_gb == 20
    with pytest.raises(ProviderError, match="only grow"):
        await provider.resize_volume(volume.id, 5, fence=None)
    await provider.detach_volume(volume.id, fence=None)
    await provider.delete_volume(volume.id, fence=None)
    assert await provider.list_volumes() == []
    with pytest.raises(ProviderError, match="lowercase"):
        await provider.create_volume("Bad Name", 10, fence=None)


async def test_an_attached_volume_is_mounted_from_its_device_where_there_is_one(
    provider: DigitalOceanProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage, "DEVICES", tmp_path / "by-id")
    monkeypatch.setattr(storage, "MOUNTS", tmp_path / "mnt")
    await provider.mount("shop-db")  # no device: the stand-in's machine binds it itself
    assert not (tmp_path / "mnt").exists()
    (tmp_path / "by-id").mkdir()
    (tmp_path / "by-id" / "scsi-0DO_Volume_shop-db").write_bytes(b"")  # no filesystem on it
    with pytest.raises(ProviderError, match="mount volume 'shop-db'"):
        await provider.mount("shop-db")
    assert (tmp_path / "mnt" / "shop-db").is_dir()


async def test_the_reserved_address_is_made_once_and_moves_between_droplets(
    fast: Stand, provider: DigitalOceanProvider
) -> None:
    one = await provider.create("web-6", "s-1vcpu-1gb", tags=TAGS, user_data="", fence=None)
    two = await provider.create("web-7", "s-1vcpu-1gb", tags=TAGS, user_data="", fence=None)
    address = await provider.reserve_address()
    assert await provider.reserve_address() == address
    assert len(fast.world.reserved_ips) == 1

    await provider.assign_reserved_address(address, one.id, fence=None)
    await provider.assign_reserved_address(address, one.id, fence=None)  # already: nothing sent
    assert fast.world.reserved_ips[address]["_droplet_id"] == int(one.id)
    await provider.assign_reserved_address(address, two.id, fence=None)
    assert fast.world.reserved_ips[address]["_droplet_id"] == int(two.id)
    moves = [r for r in fast.log() if r["path"] == f"/v2/reserved_ips/{address}/actions"]
    assert len(moves) == 2
    assert await provider.reserved_address_of(two.id) == address  # `up` again finds it
    assert await provider.reserved_address_of(one.id) is None


async def test_an_ssh_key_is_uploaded_once_and_found_by_fingerprint(
    fast: Stand, provider: DigitalOceanProvider
) -> None:
    public = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()

    first = await provider.ensure_ssh_key("infrastructure", public)
    again = await provider.ensure_ssh_key("infrastructure", public)

    assert first == again == next(iter(fast.world.ssh_keys.values()))["fingerprint"]
    assert len(fast.world.ssh_keys) == 1
    with pytest.raises(ProviderError, match="OpenSSH"):
        await provider.ensure_ssh_key("bad", "not a key")


async def test_the_mesh_firewall_lets_in_its_administrators_the_web_and_its_own_droplets(
    fast: Stand, provider: DigitalOceanProvider
) -> None:
    firewall_id = await provider.ensure_firewall("meshd-shop", ["203.0.113.10"])
    assert await provider.ensure_firewall("meshd-shop", ["203.0.113.10"]) == firewall_id
    assert len(fast.world.firewalls) == 1
    assert await provider.firewall_admins() == ["203.0.113.10/32"]

    admins = await provider.change_firewall_admins(
        "meshd-shop", add=["203.0.113.20"], remove=["203.0.113.10"]
    )

    assert admins == await provider.firewall_admins() == ["203.0.113.20/32"]
    web = await provider.create("web-8", "s-1vcpu-1gb", tags=TAGS, user_data="", fence=None)
    [policy] = policies(fast.world).values()  # the stand-in applies it to the tagged droplet
    ssh = [r for r in policy.inbound if r.ports == "22"]
    assert [r.addresses for r in ssh] == [("203.0.113.20/32",)]
    between = [r for r in policy.inbound if r.protocol == "tcp" and r.ports == "all"]
    assert web.address in between[0].addresses
    with pytest.raises(ProviderError, match="not an IP address"):
        await provider.change_firewall_admins("meshd-shop", add=["nowhere"])
    await provider.change_firewall_admins("meshd-shop", remove=["203.0.113.20"])
    assert await provider.firewall_admins() == []


async def test_a_leaders_calls_pass_the_mesh_fence_book_and_a_deposed_leader_is_refused(
    fast: Stand,
) -> None:
    store = MemoryStore()
    config = {"region": "fra1", "token": fast.token, "api_url": fast.url, "poll_s": 0.05}
    context = ProviderContext(mesh="shop", config=config, fences=StoreFenceBook(lambda: store))
    provider = load_provider("digitalocean", context)
    assert isinstance(provider, DigitalOceanProvider)
    try:
        made = await provider.create("web-9", "s-1vcpu-1gb", tags=TAGS, user_data="", fence=None)
        await provider.power_off(made.id, fence=Fence("recovery", 7))  # the successor
        sent = len(fast.log())

        with pytest.raises(StaleFence):
            await provider.power_on(made.id, fence=Fence("recovery", 5))  # the deposed one
        with pytest.raises(StaleFence):
            await provider.destroy(made.id, fence=Fence("recovery", 6))

        assert len(fast.log()) == sent, "a refused leader reached DigitalOcean"
        await provider.power_on(made.id, fence=Fence("recovery", 7))
        await provider.destroy(made.id, fence=Fence("provisioner", 2))  # another role
        assert fast.world.droplets == {}
    finally:
        await provider.close()


async def test_a_leaders_call_without_a_fence_book_is_refused(
    provider: DigitalOceanProvider,
) -> None:
    with pytest.raises(ProviderError, match="no fence book"):
        await provider.power_off("500000001", fence=Fence("recovery", 1))


async def test_an_agents_token_is_its_mesh_secret_read_before_every_request(fast: Stand) -> None:
    held: dict[str, bytes] = {}
    config = {"region": "fra1", "token_secret": "digitalocean_token", "api_url": fast.url}
    made = load_provider(
        "digitalocean", ProviderContext(mesh="shop", config=config, secrets=held.get)
    )
    try:
        with pytest.raises(ProviderError, match="no API token here yet") as early:
            await made.list()  # not sealed to this droplet yet: nothing is sent
        assert fast.token not in str(early.value)
        held["digitalocean_token"] = b"dop_v1_revoked\n"
        with pytest.raises(ProviderError, match="401") as refused:
            await made.list()
        assert "dop_v1" not in str(refused.value)
        held["digitalocean_token"] = f"{fast.token}\n".encode()  # rotated: used at once
        assert await made.list() == []
    finally:
        await made.close()
