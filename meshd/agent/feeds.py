"""What the mesh's KV buckets tell this droplet's agent, fed to its mesh view and its
reconciler as they change: the droplets' cards and the reports it reads, the desired state,
the detection holds and the secrets sealed to this droplet (allocations and failure records:
`allocation_feed`)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from meshd.agent.loops import ALL, ScopedMirror, mirror_bucket
from meshd.agent.meshview import MeshView
from meshd.agent.reconciler import Reconciler
from meshd.agent.sealed import SealedSecrets
from meshd.agent.store import Store
from meshd.core.rollout import turn_peers
from protocol import subjects
from protocol.cards import NodeCard
from protocol.messages import DetectionHold, NodeStatus, PublishedSpec
from protocol.secrets import SealedSecret


async def feed_cards(
    store: Store, reconciler: Reconciler, view: MeshView, changed: Callable[[], None]
) -> None:
    """Every droplet's card, from the compact index to the mesh view and the reconciler
    (addresses are host variables); `changed` is told (trust follows the droplets)."""

    async def publish(cards: dict[str, NodeCard]) -> None:
        await view.set_cards(cards)
        await reconciler.set_addresses({name: card.address for name, card in cards.items()})
        changed()

    await mirror_bucket(store, subjects.INDEX_BUCKET, NodeCard, publish, subjects.CARDS)


class ReportFeed:
    """What droplets report (`mesh_nodes`), to the mesh view and to the reconciler the
    reports of droplets without a failure record (rollouts take turns; a dead droplet's last
    report would hold a turn). A droplet that holds or may hold a role (`everything()`)
    reads every report; another reads only its rollout peers' (`rollout.turn_peers`), one
    watch per peer, so that at rest and during a publish its work does not grow with the
    mesh (docs/scale.md). `rescope` asks it to look at the scope again now (trust follows
    the cards and the JetStream servers)."""

    def __init__(
        self,
        store: Store,
        view: MeshView,
        reconciler: Reconciler,
        me: str,
        everything: Callable[[], bool],
    ) -> None:
        self.store = store
        self.view = view
        self.reconciler = reconciler
        self.me = me
        self.everything = everything
        self._mirror = ScopedMirror(
            store, subjects.NODES_BUCKET, NodeStatus, self.scope, self._publish
        )
        self.rescope = self._mirror.rescope

    def scope(self) -> frozenset[str]:
        if self.everything():
            return frozenset({ALL})
        peers = turn_peers(self.me, self.view.hosted().values())
        return frozenset(subjects.node_key(peer) for peer in peers)

    async def run(self) -> None:
        await self._mirror.run()

    async def _publish(self, nodes: dict[str, NodeStatus], read: bool) -> None:
        await self.view.set_nodes(nodes, complete=read)
        self.reconciler.set_peers(self.view.alive())


def mirrors(
    store: Store, view: MeshView, secrets: SealedSecrets, droplet: str
) -> dict[str, Coroutine[Any, Any, None]]:
    """The desired state and the holds into the view, the droplet's sealed secrets and its
    holder entry of the mesh key into `secrets`: a task each, by name."""
    desired, sealed = subjects.DESIRED_BUCKET, subjects.SECRETS_BUCKET
    return {
        "desired": mirror_bucket(
            store, desired, PublishedSpec, view.set_desired, subjects.DESIRED_KEY
        ),
        "holds": mirror_bucket(store, desired, DetectionHold, view.set_holds, subjects.HOLDS),
        "sealed-secrets": mirror_bucket(
            store, sealed, SealedSecret, secrets.set_sealed, subjects.sealed_of(droplet)
        ),
        "mesh-key-holder": mirror_bucket(
            store, sealed, SealedSecret, secrets.set_holder, subjects.holder_key(droplet)
        ),
    }
