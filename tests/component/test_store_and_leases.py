"""Store and leases against a real nats-server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from meshd.agent.lease import LeaseKeeper, LeaseTiming, Term
from meshd.agent.store import Conflict, Store, StoreUnavailable
from meshd.agent.store.jetstream import NatsStore
from protocol import subjects
from tests.support.jetstream import connect
from tests.support.nats import NatsServer, running_nats
from tests.support.waiting import until

FAST = LeaseTiming(ttl=3.0, renew_every=0.5, margin=1.0, retry_every=0.2)


async def test_create_refuses_an_existing_key_and_update_needs_the_current_revision(
    store: Store,
) -> None:
    revision = await store.create(subjects.DESIRED_BUCKET, "spec", b"one")
    with pytest.raises(Conflict):
        await store.create(subjects.DESIRED_BUCKET, "spec", b"two")
    newer = await store.update(subjects.DESIRED_BUCKET, "spec", b"two", last=revision)
    with pytest.raises(Conflict):
        await store.update(subjects.DESIRED_BUCKET, "spec", b"three", last=revision)
    entry = await store.get(subjects.DESIRED_BUCKET, "spec")
    assert entry is not None and entry.value == b"two" and entry.revision == newer


async def test_ensure_is_idempotent_and_entries_lists_live_keys(store: Store) -> None:
    await store.ensure(replicas=1)
    await store.put(subjects.NODES_BUCKET, "a", b"1")
    await store.put(subjects.NODES_BUCKET, "b", b"2")
    await store.delete(subjects.NODES_BUCKET, "a")
    assert {k: e.value for k, e in (await store.entries(subjects.NODES_BUCKET)).items()} == {
        "b": b"2"
    }


async def test_events_are_recorded_with_their_fence_and_read_back(store: Store) -> None:
    await store.record("lease_taken", "master", "scheduler", {"x": 1}, fence=7)
    await store.record("published", "operator", "spec")
    events = await store.recent_events(10)
    assert [(e.name, e.fence) for e in events] == [("lease_taken", 7), ("published", None)]


async def test_unreachable_mesh_fails_quickly_with_store_unavailable(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable):
        await asyncio.wait_for(
            NatsStore.connect(["nats://127.0.0.1:1"], "agent", "x", name="t", timeout=2), 5
        )


class Actions:
    """What leaders did, in order: (holder, fence)."""

    def __init__(self) -> None:
        self.log: list[tuple[str, int]] = []

    def leader(self, holder: str):  # type: ignore[no-untyped-def]
        async def lead(term: Term) -> None:
            while True:
                term.ensure_held()
                self.log.append((holder, term.fence))
                await asyncio.sleep(0.1)

        return lead


async def test_exactly_one_of_three_contenders_holds_a_lease(nats_server: NatsServer) -> None:
    stores = [await connect(nats_server, f"a{i}") for i in range(3)]
    actions = Actions()
    keepers = [
        LeaseKeeper(s, "scheduler", f"a{i}", 1, actions.leader(f"a{i}"), timing=FAST)
        for i, s in enumerate(stores)
    ]
    tasks = [asyncio.create_task(k.run()) for k in keepers]
    try:
        await until(lambda: len(actions.log) >= 20, "20 actions")
        assert len({holder for holder, _ in actions.log}) == 1
        assert sum(k.term is not None for k in keepers) == 1
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for s in stores:
            await s.close()


async def test_a_holder_whose_connection_dies_is_replaced_with_a_higher_fence(
    nats_server: NatsServer,
) -> None:
    first, second = await connect(nats_server, "a"), await connect(nats_server, "b")
    actions = Actions()
    a = asyncio.create_task(
        LeaseKeeper(first, "lb", "a", 1, actions.leader("a"), timing=FAST).run()
    )
    await until(lambda: bool(actions.log), "a first action")
    b = asyncio.create_task(
        LeaseKeeper(second, "lb", "b", 1, actions.leader("b"), timing=FAST).run()
    )
    try:
        await asyncio.sleep(1)
        # The holder's process "dies": its connection goes away without releasing the lease.
        a.cancel()
        await first._nc.close()  # noqa: SLF001 - simulating a crash, not a clean release
        await asyncio.gather(a, return_exceptions=True)
        await until(lambda: any(h == "b" for h, _ in actions.log), "b to act")
        fence_a = max(f for h, f in actions.log if h == "a")
        fence_b = min(f for h, f in actions.log if h == "b")
        assert fence_b > fence_a
    finally:
        b.cancel()
        await asyncio.gather(b, return_exceptions=True)
        await second.close()


async def test_a_holder_cut_off_from_nats_stops_acting_before_another_starts(
    tmp_path: Path,
) -> None:
    # The holder reaches NATS through a proxy that starts dropping bytes: a partition.
    with running_nats(tmp_path) as server:
        proxy = await TcpProxy.start(server.url)
        holder = await NatsStore.connect(
            [proxy.url], "agent", server.agent_password, name="holder", timeout=2
        )
        await holder.ensure(1)
        other = await connect(server, "other")
        times: list[tuple[str, int, float]] = []
        loop = asyncio.get_running_loop()

        def leader(name: str):  # type: ignore[no-untyped-def]
            async def lead(term: Term) -> None:
                while True:
                    term.ensure_held()
                    times.append((name, term.fence, loop.time()))
                    await asyncio.sleep(0.05)

            return lead

        a = asyncio.create_task(
            LeaseKeeper(holder, "recovery", "h", 1, leader("h"), timing=FAST).run()
        )
        await until(lambda: bool(times), "a first action")
        b = asyncio.create_task(
            LeaseKeeper(other, "recovery", "o", 1, leader("o"), timing=FAST).run()
        )
        try:
            await asyncio.sleep(0.5)
            proxy.cut()
            await until(lambda: any(n == "o" for n, _, _ in times), "the other holder to act")
            last_holder_action = max(t for n, _, t in times if n == "h")
            first_other_action = min(t for n, _, t in times if n == "o")
            assert last_holder_action < first_other_action
            fences = {n: f for n, f, _ in times}
            assert fences["o"] > fences["h"]
        finally:
            for task in (a, b):
                task.cancel()
            await asyncio.gather(a, b, return_exceptions=True)
            proxy.close()
            await other.close()
            await holder.close()


class TcpProxy:
    """Forwards TCP to the server until `cut()`, after which bytes are silently dropped (a
    partition, not a closed connection)."""

    def __init__(self, server: asyncio.Server, target: tuple[str, int]) -> None:
        self.server = server
        self.target = target
        self.open = True
        port = server.sockets[0].getsockname()[1]
        self.url = f"nats://127.0.0.1:{port}"

    @classmethod
    async def start(cls, url: str) -> TcpProxy:
        host, port = url.removeprefix("nats://").split(":")
        holder: list[TcpProxy] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            up_reader, up_writer = await asyncio.open_connection(host, int(port))

            async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
                while data := await src.read(65536):
                    if holder[0].open:
                        dst.write(data)
                        await dst.drain()

            await asyncio.gather(
                pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True
            )

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        proxy = cls(server, (host, int(port)))
        holder.append(proxy)
        return proxy

    def cut(self) -> None:
        self.open = False

    def close(self) -> None:
        self.server.close()


async def test_a_publish_made_against_a_stale_revision_is_refused(store: Store) -> None:
    from meshd.cli.publishing import StalePublish, write_desired
    from protocol.messages import PublishedSpec

    def message(who: str) -> PublishedSpec:
        return PublishedSpec(spec={"projects": []}, published_by=who, published_at=1.0)

    first = await write_desired(store, message("alice"), None)
    with pytest.raises(StalePublish):  # bob planned against an empty mesh
        await write_desired(store, message("bob"), None)
    read_by_both = await store.get(subjects.DESIRED_BUCKET, subjects.DESIRED_KEY)
    assert read_by_both is not None and read_by_both.revision == first
    await write_desired(store, message("alice"), read_by_both)
    with pytest.raises(StalePublish):  # bob's plan was made against alice's first revision
        await write_desired(store, message("bob"), read_by_both)


async def test_a_holder_that_shuts_down_cleanly_releases_its_lease_at_once(
    nats_server: NatsServer,
) -> None:
    store = await connect(nats_server, "a")
    actions = Actions()
    keeper = LeaseKeeper(store, "heartbeat", "a", 1, actions.leader("a"), timing=FAST)
    task = asyncio.create_task(keeper.run())
    try:
        await until(lambda: bool(actions.log), "a first action")
        assert await store.get(subjects.LEASES_BUCKET, "heartbeat") is not None
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert await store.get(subjects.LEASES_BUCKET, "heartbeat") is None
        assert "lease_released" in [e.name for e in await store.recent_events(10)]
    finally:
        await store.close()
