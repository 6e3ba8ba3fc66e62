"""The provisioner on a provider whose droplets start bare (DigitalOcean): it bootstraps
what it creates, again on each pass until the agent reports, and never resizes the droplet
it runs on when a resize powers the droplet off: it hands the role over instead."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from bootstrap import BootstrapFailed
from meshd.agent.config import MeshConfig, mesh_tag
from meshd.agent.lease import Term
from meshd.roles.provisioner import HandOver, Provisioner
from meshd.roles.scheduler import Scheduler
from plugins.providers import DropletRecord, DropletStatus, Fence
from protocol import subjects
from protocol.codec import decode, encode
from protocol.messages import DetectionHold, NodeStatus, PublishedSpec
from tests.support.memstore import MemoryStore
from tests.support.states import state_from_csv

pytestmark = pytest.mark.asyncio
CSV = "Project,Servers,MasterSpec,WebSpec\nshop,3,s-2vcpu-4gb,s-1vcpu-1gb\n"


@dataclass
class BareProvider:
    name: str = "bare"
    resize_powers_off: bool = True
    droplets: dict[str, DropletRecord] = field(default_factory=dict)
    resized: list[tuple[str, str]] = field(default_factory=list)
    store: MemoryStore = field(default_factory=MemoryStore)
    held_meanwhile: bytes | None = None

    async def create(
        self, name: str, size: str, *, tags: Sequence[str], user_data: str, fence: Fence | None
    ) -> DropletRecord:
        record = DropletRecord(str(len(self.droplets) + 1), name, size,
                               f"10.0.0.{len(self.droplets) + 2}", DropletStatus.ACTIVE,
                               tuple(tags), time.time())  # fmt: skip
        self.droplets[record.id] = record
        return record

    async def list(self, tag: str | None = None) -> list[DropletRecord]:
        return [d for d in self.droplets.values() if tag is None or tag in d.tags]

    async def resize(self, droplet_id: str, size: str, *, fence: Fence | None) -> None:
        self.resized.append((self.droplets[droplet_id].name, size))
        self.held_meanwhile = self.store.value(subjects.DESIRED_BUCKET, subjects.hold_key("master"))


@dataclass
class Bootstraps:
    failing: set[str] = field(default_factory=set)
    done: list[tuple[str, str]] = field(default_factory=list)  # name, the user data's mesh

    renewed: list[str] = field(default_factory=list)

    async def __call__(self, record: DropletRecord, user_data: str) -> object:
        if record.name in self.failing:
            raise BootstrapFailed(record.address, "python", "no interpreter")
        self.done.append((record.name, MeshConfig.from_json(user_data).mesh))
        return None

    async def renew_certificate(self, record: DropletRecord) -> object:
        if record.name in self.failing:
            raise BootstrapFailed(record.address, "connect", "no SSH")
        self.renewed.append(record.name)
        return None


def term(fence: int = 2) -> Term:
    return Term("provisioner", fence, time.monotonic() + 600)


async def mesh(master_size: str = "s-2vcpu-4gb") -> tuple[MemoryStore, BareProvider]:
    store = MemoryStore()
    spec = PublishedSpec(spec=state_from_csv(CSV).to_data(), published_by="t", published_at=0.0)
    await store.put(subjects.DESIRED_BUCKET, subjects.DESIRED_KEY, encode(spec))
    await Scheduler(store, "master").schedule(Term("scheduler", 1, time.monotonic() + 600))
    master = DropletRecord("100", "master", master_size, "10.0.0.1", DropletStatus.ACTIVE,
                           (mesh_tag("m"),), 0.0)  # fmt: skip
    return store, BareProvider(droplets={"100": master}, store=store)


async def report(store: MemoryStore, name: str, incarnation: int, tls_expires: float = 0) -> None:
    status = NodeStatus(droplet=name, address="10.0.0.9", incarnation=incarnation,
                        size="s-1vcpu-1gb", roles=(), instances=(), updated_at=time.time(),
                        tls_expires=tls_expires)  # fmt: skip
    await store.put(subjects.NODES_BUCKET, subjects.node_key(name), encode(status))


CONFIG = MeshConfig(mesh="m", core=(), passwords={}, bootstrap={"python": "/usr/bin/python3"})


async def test_created_droplets_are_bootstrapped_and_a_failed_one_again_next_pass() -> None:
    store, provider = await mesh()
    boots = Bootstraps(failing={"shop-web1"})
    provisioner = Provisioner(store, provider, CONFIG, "master", boots)  # type: ignore[arg-type]

    await provisioner.provision(term())

    assert sorted(boots.done) == [("shop-web2", "m")]
    failed = [e for e in store.events if e.name == "bootstrap_failed"]
    assert [(e.subject, e.detail["step"]) for e in failed] == [("shop-web1", "python")]
    assert [e.subject for e in store.events if e.name == "droplet_bootstrapped"] == ["shop-web2"]

    boots.failing.clear()
    await provisioner.provision(term())  # web2 has not reported yet, but was bootstrapped

    assert sorted(boots.done) == [("shop-web1", "m"), ("shop-web2", "m")]
    assert len(provider.droplets) == 3  # none created twice


async def test_a_droplet_whose_agent_reports_is_not_bootstrapped_by_a_new_leader() -> None:
    store, provider = await mesh()
    await Provisioner(store, provider, CONFIG, "master", Bootstraps()).provision(term())  # type: ignore[arg-type]
    await report(store, "shop-web1", 1)
    boots = Bootstraps()

    await Provisioner(store, provider, CONFIG, "master", boots).provision(term(3))  # type: ignore[arg-type]

    assert boots.done == [("shop-web2", "m")]  # its report is still the provisioner's stub


async def test_the_leader_hands_the_role_over_rather_than_power_off_its_own_droplet() -> None:
    store, provider = await mesh(master_size="s-1vcpu-1gb")
    provisioner = Provisioner(store, provider, CONFIG, "master", Bootstraps())  # type: ignore[arg-type]

    await provisioner.provision(term())  # alone: nobody else could resize it

    assert provider.resized == []
    await report(store, "shop-web1", 1)
    with pytest.raises(HandOver):
        await provisioner.provision(term())
    assert provider.resized == []

    await asyncio.wait_for(provisioner.lead(term()), 10)  # the term ends by itself

    assert provisioner.hesitation() > 30
    assert [e.detail["reason"] for e in store.events if e.name == "role_handed_over"] == [
        "master must be off to become s-2vcpu-4gb"
    ]


async def test_another_droplets_leader_resizes_the_droplet() -> None:
    store, provider = await mesh(master_size="s-1vcpu-1gb")
    await report(store, "master", 1)
    boots = Bootstraps()
    other = Provisioner(store, provider, CONFIG, "shop-web1", boots)  # type: ignore[arg-type]

    await other.provision(term(3))

    assert provider.resized == [("master", "s-2vcpu-4gb")]
    assert provider.held_meanwhile is not None  # no peer called it dead while it was off
    assert decode(provider.held_meanwhile, DetectionHold).reason == "resize"
    assert store.value(subjects.DESIRED_BUCKET, subjects.hold_key("master")) is None
    assert ("master", "m") in boots.done  # its droplet.json says its new size


async def test_a_droplet_whose_certificate_nears_its_end_gets_a_new_one_once() -> None:
    store, provider = await mesh()
    tls = dataclasses.replace(CONFIG, tls_ca="-----BEGIN CERTIFICATE-----")
    boots = Bootstraps()
    provisioner = Provisioner(store, provider, tls, "master", boots)  # type: ignore[arg-type]
    await provisioner.provision(term())  # creates and bootstraps the web droplets
    day = 86400.0
    await report(store, "master", 1, tls_expires=time.time() + 100 * day)  # due
    await report(store, "shop-web1", 1, tls_expires=time.time() + 600 * day)  # not yet
    await report(store, "shop-web2", 1)  # reports none (an older agent): left

    await provisioner.provision(term())
    await provisioner.provision(term())  # not again while the new one is on its way

    assert boots.renewed == ["master"]
    assert [e.subject for e in store.events if e.name == "certificate_renewed"] == ["master"]
    plain = Bootstraps()  # no TLS: nothing to renew
    await Provisioner(store, provider, CONFIG, "master", plain).provision(term(3))  # type: ignore[arg-type]
    assert plain.renewed == []


async def test_a_renewal_that_fails_is_an_event_and_is_tried_again_later() -> None:
    store, provider = await mesh()
    tls = dataclasses.replace(CONFIG, tls_ca="-----BEGIN CERTIFICATE-----")
    boots = Bootstraps()
    provisioner = Provisioner(store, provider, tls, "master", boots)  # type: ignore[arg-type]
    await provisioner.provision(term())
    await report(store, "shop-web1", 1, tls_expires=time.time() + 10.0)
    boots.failing.add("shop-web1")

    await provisioner.provision(term())

    failed = [e for e in store.events if e.name == "certificate_renewal_failed"]
    assert [(e.subject, e.detail["step"]) for e in failed] == [("shop-web1", "connect")]
    boots.failing.clear()
    provisioner._renewing.clear()  # RENEW_RETRY_S later
    await provisioner.provision(term())
    assert boots.renewed == ["shop-web1"]
