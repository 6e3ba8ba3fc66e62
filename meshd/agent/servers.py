"""The mesh's JetStream servers as they change: every agent keeps its droplet's placement file
(`jetstream.json`, which its supervisor's nats-server and its own NATS client follow), and
master's agent moves the state when the scheduler chooses other servers.

A move (docs/decisions.md, "JetStream follows membership") runs on master because the state
leaves and arrives there: master is a server in every placement, and its disk keeps the
backups. Each step is journalled on that disk before it is taken, so an agent killed midway
resumes where it stopped: seal and back up every stream; tell the droplets of the old and the
new placement (over core NATS, which does not need JetStream); restart master's own server on
a fresh store; restore every stream at one replica, then raise it to the new count. Instances
never notice: only the control plane waits (a writer meets a sealed stream or no JetStream
and tries later).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from meshd.agent.config import CoreServer, MeshConfig, ServerPlacement
from meshd.agent.holds import end_hold, take_hold
from meshd.agent.loops import run_on_changes
from meshd.agent.records import decode_servers, jetstream_servers
from meshd.agent.store import Received, Store, StoreUnavailable
from meshd.agent.store.jetstream import NatsStore
from meshd.agent.store.moves import current_copies, load_backups
from meshd.core.jetstream import CLUSTER_SIZE, MASTER
from plugins.fs import atomic_write
from protocol import subjects
from protocol.codec import encode
from protocol.messages import JetStreamServers, ServerAddress

log = logging.getLogger(__name__)
APPLIED_KEY = subjects.JETSTREAM_APPLIED_KEY
JOURNAL = "jetstream-move.json"
BACKUPS = "jetstream-moves"
RESYNC_S = 10.0
TELL_TIMEOUT_S = 2.0
TELL_WAIT_S = 15.0  # an agent that has just joined subscribes within a moment
JETSTREAM_WAIT_S = 45.0  # a new cluster elects its meta leader within seconds
# While the state moves, master's server restarts and its agent is busy: its monitors may hear
# nothing from it for seconds. It is held (suspected, never confirmed dead and rebuilt from an
# older snapshot) from before any stream is sealed until the state is back.
MOVE_HOLD_S = 180.0
HOLD_REASON = "JetStream is moving to other servers"


class NewServersSilent(Exception):
    """The servers of a move did not form a JetStream cluster in time."""


def replicas(placement: ServerPlacement) -> int:
    return CLUSTER_SIZE if len(placement.servers) >= CLUSTER_SIZE else 1


def placement_of(record: JetStreamServers, droplet: str) -> ServerPlacement:
    """What `record` means for `droplet`: its servers; a server starts on a fresh store (the
    state arrives by restore), except at epoch 0 (the servers `up` started)."""
    servers = tuple(CoreServer(s.name, s.address) for s in record.servers)
    fresh = record.epoch > 0 and any(s.name == droplet for s in servers)
    return ServerPlacement(record.epoch, servers, fresh_store=fresh)


def nats_urls(placement: ServerPlacement, config: MeshConfig) -> list[str]:
    return config.with_servers(placement.servers).nats_urls()


class ServersListener:
    """Every agent: keeps `jetstream.json` at the newest placement it hears of, from master
    during a move, or from `mesh_desired/jetstream.applied` (a droplet that was down then)."""

    def __init__(
        self,
        store: Store,
        droplet: str,
        droplet_dir: Path,
        config: MeshConfig,
        on_change: Callable[[tuple[str, ...]], None] | None = None,
    ) -> None:
        self.store = store
        self.droplet = droplet
        self.dir = droplet_dir
        self.config = config
        self.on_change = on_change  # told the names of the servers adopted

    async def run(self) -> None:
        told = await self.store.subscribe(subjects.jetstream_servers(self.droplet), self._told)
        moved = await self.store.subscribe(subjects.JETSTREAM_MOVED, self._moved)
        try:
            await run_on_changes(
                self.store, [(subjects.DESIRED_BUCKET, APPLIED_KEY)], self._catch_up, RESYNC_S
            )
        finally:
            await told.unsubscribe()
            await moved.unsubscribe()

    async def _moved(self, message: Received) -> None:
        """The state has moved: every watch's consumer was on the old servers."""
        if record := decode_servers(message.data):
            await asyncio.to_thread(self.adopt, record)
            await end_watches(self.store)

    async def _told(self, message: Received) -> None:
        if record := decode_servers(message.data):
            await asyncio.to_thread(self.adopt, record)
            await message.respond(b"ok")

    async def _catch_up(self) -> None:
        record = await jetstream_servers(self.store, APPLIED_KEY)
        if record is None:
            return
        if await asyncio.to_thread(self.adopt, record):
            await end_watches(self.store)  # a move this agent missed the end of

    def adopt(self, record: JetStreamServers) -> bool:
        """Keep `record` if it is newer than this droplet's placement; whether it was."""
        current = ServerPlacement.load(self.dir, self.config)
        if record.epoch <= current.epoch:
            return False
        placement_of(record, self.droplet).save(self.dir)
        if self.on_change is not None:
            self.on_change(tuple(s.name for s in record.servers))
        log.info(
            "JetStream servers changed. epoch=%d servers=%s",
            record.epoch,
            ",".join(s.name for s in record.servers),
        )
        return True


@dataclass(frozen=True, slots=True)
class Journal:
    """A move under way, on master's disk: the target and the last step done."""

    target: JetStreamServers
    previous: tuple[ServerAddress, ...]
    step: str  # "started", "prepared", "backed_up", "placed"
    started_at: float

    def at(self, step: str) -> Journal:
        return Journal(self.target, self.previous, step, self.started_at)

    def save(self, directory: Path) -> None:
        data = {
            "epoch": self.target.epoch,
            "servers": [{"name": s.name, "address": s.address} for s in self.target.servers],
            "fence": self.target.fence,
            "previous": [{"name": s.name, "address": s.address} for s in self.previous],
            "step": self.step,
            "started_at": self.started_at,
        }
        atomic_write(directory / JOURNAL, json.dumps(data).encode(), mode=0o600)

    @classmethod
    def load(cls, directory: Path) -> Journal | None:
        try:
            data = json.loads((directory / JOURNAL).read_text())
        except FileNotFoundError:
            return None
        target = JetStreamServers(
            epoch=int(data["epoch"]), servers=_addresses(data["servers"]), fence=int(data["fence"])
        )
        return cls(
            target,
            _addresses(data["previous"]),
            str(data["step"]),
            float(data["started_at"]),
        )


class ServerMover:
    """master's agent: moves the mesh's JetStream state to the servers the scheduler chose."""

    def __init__(
        self, store: NatsStore, droplet_dir: Path, data_dir: Path, config: MeshConfig
    ) -> None:
        self.store = store
        self.dir = droplet_dir
        self.data_dir = data_dir
        self.config = config

    def pending(self) -> bool:
        return (self.data_dir / JOURNAL).exists()

    async def run(self) -> None:
        await run_on_changes(
            self.store,
            [(subjects.DESIRED_BUCKET, subjects.JETSTREAM_KEY)],
            self.follow,
            RESYNC_S,
        )

    async def follow(self) -> None:
        """Finish a move under way, or start one when the chosen servers differ."""
        journal = await asyncio.to_thread(Journal.load, self.data_dir)
        if journal is None:
            target = await jetstream_servers(self.store, subjects.JETSTREAM_KEY)
            if target is None:
                return
            current = await asyncio.to_thread(ServerPlacement.load, self.dir, self.config)
            if target.epoch <= current.epoch:
                return
            if tuple(s.name for s in target.servers) == current.names():
                await self._adopt(target)  # the same servers: a new epoch only
                return
            previous = tuple(ServerAddress(name=s.name, address=s.address) for s in current.servers)
            journal = Journal(target, previous, "started", time.time())
            await take_hold(self.store, MASTER, MOVE_HOLD_S, HOLD_REASON, MASTER, longer=True)
            await self._record("jetstream_move_started", journal)
            await asyncio.to_thread(journal.save, self.data_dir)
        await self.resume(journal)

    async def resume(self, journal: Journal) -> None:
        """Take the steps of the move from the last one done. The servers that join start
        first (on their own, a new cluster waits for its peers) and must answer, else the
        move waits for the next round before anything is sealed; a new cluster that does not
        answer within a minute makes the state fall back to master alone."""
        if journal.step == "started":
            joining = _names(journal.target.servers) - _names(journal.previous) - {MASTER}
            if not await self._tell(journal.target, joining, must=True):
                (self.data_dir / JOURNAL).unlink(missing_ok=True)
                await self._record("jetstream_move_postponed", journal)
                await end_hold(self.store, MASTER, HOLD_REASON)
                return
            journal = journal.at("prepared")
            await asyncio.to_thread(journal.save, self.data_dir)
        backups = self.data_dir / BACKUPS / str(journal.target.epoch)
        if journal.step == "prepared":
            moves = self.store.moves()
            for stream in await moves.existing():
                await moves.seal(stream)
            for stream in await moves.existing():
                backup = await moves.back_up(stream)
                await asyncio.to_thread(backup.save, backups)
            journal = journal.at("backed_up")
            await asyncio.to_thread(journal.save, self.data_dir)
            log.info("JetStream sealed and backed up. epoch=%d", journal.target.epoch)
        if journal.step == "backed_up":
            others = _names(journal.target.servers) | _names(journal.previous)
            await self._tell(journal.target, others - {MASTER}, must=False)
            placed = placement_of(journal.target, MASTER)
            await asyncio.to_thread(placed.save, self.dir)  # the supervisor restarts it
            journal = journal.at("placed")
            await asyncio.to_thread(journal.save, self.data_dir)
        try:
            await self._restore(journal, backups)
        except NewServersSilent:
            await self._fall_back(journal, backups)

    async def _fall_back(self, journal: Journal, backups: Path) -> None:
        """The new servers do not form a cluster (one died midway, say): master alone takes
        the state from the same backups, at the next epoch; the scheduler chooses again."""
        alone = JetStreamServers(
            epoch=journal.target.epoch + 1,
            servers=tuple(s for s in journal.target.servers if s.name == MASTER),
            fence=journal.target.fence,
        )
        await self._record("jetstream_move_failed", journal)
        moved = self.data_dir / BACKUPS / str(alone.epoch)
        await asyncio.to_thread(shutil.rmtree, moved, True)
        await asyncio.to_thread(backups.rename, moved)
        previous = tuple({s.name: s for s in (*journal.previous, *journal.target.servers)}.values())
        fallback = Journal(alone, previous, "backed_up", journal.started_at)
        await asyncio.to_thread(fallback.save, self.data_dir)
        await self.resume(fallback)

    async def _tell(self, record: JetStreamServers, names: set[str], *, must: bool) -> bool:
        """Tell the agents of `names` the new servers (core NATS: JetStream is not needed);
        True when every one answered. One that does not learns them from
        `jetstream.applied` once it is back."""
        message = encode(record)
        deadline = time.monotonic() + TELL_WAIT_S
        missing = set(names)
        while missing:
            for name in sorted(missing):
                if await self.store.request(
                    subjects.jetstream_servers(name), message, TELL_TIMEOUT_S
                ):
                    missing.discard(name)
            if not missing or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        for name in sorted(missing):
            log.warning("Droplet not told of the JetStream servers. droplet=%s", name)
        return not missing or not must

    async def _restore(self, journal: Journal, backups: Path) -> None:
        target = placement_of(journal.target, MASTER)
        present = await self._new_servers_answer()
        moves = self.store.moves()
        restored = await asyncio.to_thread(load_backups, backups)
        for backup in restored:
            if backup.name in present:
                if present[backup.name] >= backup.last_seq:
                    continue  # restored before an interruption
                await moves.delete(backup.name)  # created empty meanwhile: never written to
            # One replica first, then the others by the replication that also catches up a
            # rebuilt server: a restore at three replicas stalled on one of them under load
            # (nats-server: "restore ... is stalled"), which left it without the stream.
            await moves.restore(backup, 1)
        for backup in restored:
            await moves.set_replicas(backup.name, replicas(target))
        await self._led(replicas(target))
        await self.store.put(subjects.DESIRED_BUCKET, APPLIED_KEY, encode(journal.target))
        await self.store.end_watches()
        await self.store.publish(subjects.JETSTREAM_MOVED, encode(journal.target))
        elapsed = time.time() - journal.started_at
        grown = len(journal.target.servers) > len(journal.previous)
        shrunk = len(journal.target.servers) < len(journal.previous)
        name = "jetstream_grown" if grown else "jetstream_shrunk" if shrunk else "jetstream_moved"
        await self._record(name, journal, seconds=round(elapsed, 2))
        (self.data_dir / JOURNAL).unlink(missing_ok=True)
        with contextlib.suppress(StoreUnavailable):  # it ends by itself then
            await end_hold(self.store, MASTER, HOLD_REASON)
        await asyncio.to_thread(_keep_only, self.data_dir / BACKUPS, str(journal.target.epoch))
        log.info("JetStream moved. epoch=%d seconds=%.1f", journal.target.epoch, elapsed)

    async def _new_servers_answer(self) -> dict[str, int]:
        """Wait until the new servers' JetStream answers: master's own server has restarted
        on its fresh store once no stream is sealed any more. The last sequence of each
        stream there is then."""
        deadline = time.monotonic() + JETSTREAM_WAIT_S
        while True:
            try:
                if await self.store.jetstream_answers():
                    moves = self.store.moves()
                    found = {name: await moves.info(name) for name in await moves.existing()}
                    if not any(info["config"].get("sealed") for info in found.values()):
                        return {n: int(i["state"].get("last_seq", 0)) for n, i in found.items()}
            except StoreUnavailable as err:
                log.info("Waiting for the new JetStream servers. error=%s", err)
            if time.monotonic() > deadline:
                raise NewServersSilent(f"no JetStream within {JETSTREAM_WAIT_S:.0f} s")
            await asyncio.sleep(0.2)

    async def _led(self, count: int) -> None:
        """Wait until every stream has a leader and all its replicas current: a move is done
        once a reader on any server finds every stream, and a write lands. A replica that
        does not catch up in time is left to catch up later (a quorum serves meanwhile)."""
        moves = self.store.moves()
        deadline = time.monotonic() + JETSTREAM_WAIT_S
        behind: list[str] = []
        while time.monotonic() < deadline:
            behind = []
            for name in await moves.existing():
                cluster = (await moves.info(name)).get("cluster") or {}
                current = current_copies(cluster, [MASTER])
                if count > 1 and (not cluster.get("leader") or len(current) < count):
                    behind.append(name)
            if not behind:
                return
            await asyncio.sleep(0.2)
        log.warning("Streams without a leader or all replicas current. streams=%s", behind)

    async def _adopt(self, target: JetStreamServers) -> None:
        await asyncio.to_thread(ServerPlacement(target.epoch, self._servers(target)).save, self.dir)
        await self.store.put(subjects.DESIRED_BUCKET, APPLIED_KEY, encode(target))

    @staticmethod
    def _servers(target: JetStreamServers) -> tuple[CoreServer, ...]:
        return tuple(CoreServer(s.name, s.address) for s in target.servers)

    async def _record(self, name: str, journal: Journal, **more: object) -> None:
        servers = [s.name for s in journal.target.servers]
        detail = {
            "epoch": journal.target.epoch,
            "servers": servers,
            "previous": [s.name for s in journal.previous],
            "replicas": CLUSTER_SIZE if len(servers) >= CLUSTER_SIZE else 1,
            **more,
        }
        await self.store.record(name, MASTER, "jetstream", detail, journal.target.fence)


async def end_watches(store: Store) -> None:
    if isinstance(store, NatsStore):
        await store.end_watches()


def _names(servers: tuple[ServerAddress, ...]) -> set[str]:
    return {s.name for s in servers}


def _addresses(found: list[dict[str, str]]) -> tuple[ServerAddress, ...]:
    return tuple(ServerAddress(name=s["name"], address=s["address"]) for s in found)


def _keep_only(directory: Path, name: str) -> None:
    """The backups of the last move are kept; older ones go."""
    if directory.is_dir():
        for child in directory.iterdir():
            if child.name != name:
                shutil.rmtree(child, ignore_errors=True)
