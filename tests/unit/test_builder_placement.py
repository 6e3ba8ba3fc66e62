"""The builder prefers the droplet with the most memory its services leave free."""

from __future__ import annotations

import pytest

from meshd.agent.meshview import MeshView
from meshd.agent.trust import BUILDER_HESITATE_S, Trust
from meshd.core.sizes import roomiest
from tests.support import factories
from tests.support.factories import allocation

pytestmark = pytest.mark.unit


def test_the_roomiest_droplet_is_the_one_with_most_memory_left() -> None:
    sizes = {"master": "s-2vcpu-4gb", "web1": "s-1vcpu-2gb", "web2": "s-1vcpu-2gb"}
    assert roomiest(sizes, {}) == "master"
    assert roomiest(sizes, {"master": 3000}) == "web1"  # ties by name
    assert roomiest(sizes, {"master": 3000, "web1": 100}) == "web2"
    assert roomiest({"odd": "no-such-size"}, {}) is None


async def test_only_the_roomiest_droplet_competes_for_the_builder_at_once() -> None:
    view = MeshView()
    view.cards = {
        "master": factories.card("master", size="s-1vcpu-2gb"),
        "web1": factories.card("web1", size="s-1vcpu-2gb"),
    }
    await view.set_allocations({"a": allocation(droplets=("master",), memory_mb=512)})
    hesitation = {name: Trust(name, view, None).builder_hesitation() for name in view.cards}  # type: ignore[arg-type]
    assert hesitation == {"master": BUILDER_HESITATE_S, "web1": 0.0}

    # One that reads only its own allocations cannot tell who has room: it lets others go first.
    await view.set_allocations({}, whole=False)
    assert Trust("web1", view, None).builder_hesitation() == BUILDER_HESITATE_S  # type: ignore[arg-type]


def test_on_a_cloud_mesh_only_a_trusted_droplet_may_build() -> None:
    from protocol.subjects import Role

    view = MeshView()
    view.cards = {name: factories.card(name) for name in ("master", "web1", "web2", "web3")}
    for cloud, expected in ((False, True), (True, False)):
        trust = Trust("web3", view, None, cloud=cloud)  # type: ignore[arg-type]
        trust.servers = ("master", "web1", "web2")
        eligible = trust.eligibility(Role.BUILDER)
        assert (eligible is None or eligible()) is expected
    trusted = Trust("web1", view, None, cloud=True)  # type: ignore[arg-type]
    trusted.servers = ("master", "web1", "web2")
    check = trusted.eligibility(Role.BUILDER)
    assert check is not None and check()
