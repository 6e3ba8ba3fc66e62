"""Moving the mesh's JetStream state from one set of servers to another (one standalone server
to a cluster of three and back) without losing a key, an event or a revision.

A standalone nats-server restarted into a cluster orphans its streams (the new meta group does
not know them; measured on nats-server 2.15, docs/decisions.md), and a lone server cannot run
clustered JetStream. So a move is: seal every stream (writes are refused from then on, so the
backup is the final state), back each one up with JetStream's own snapshot API, keep the
backups on disk, start the new servers with empty stores, and restore each stream at the new
replica count. The snapshot carries the stream's messages with their sequence numbers, so every
KV revision (the fences and compare-and-set tokens of the mesh) is the same afterwards.

The files are those of `nats stream backup`: `<dir>/<stream>/backup.json` (configuration and
state) and `stream.tar.s2` (the server's snapshot), so an operator can restore one by hand.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError

from meshd.agent.store import StoreRefused, StoreUnavailable
from meshd.agent.store.errors import STREAM_NOT_FOUND, translated
from meshd.agent.store.schema import BUCKETS, OBJECT_STORES, STREAMS
from plugins.fs import atomic_write
from protocol import subjects

# Streams made anew, empty, after a move: the leases (every term has ended by the time the
# state has moved; their revisions go on, so every fence stays higher than the last). Restored,
# their replicas failed to catch up (nats-server 2.15: "catchup failed, too many retries",
# keys with a TTL that expire while the stream is restored).
EPHEMERAL = frozenset({f"KV_{subjects.LEASES_BUCKET}"})
CHUNK_BYTES = 128 * 1024  # well under the servers' max_payload
# No meta leader yet (10008), or a stream listed but not there yet (a restore under way).
MOVING = frozenset({10008, STREAM_NOT_FOUND})
# A restore's subscription lives on the meta leader: the first chunk may reach the server
# this client is connected to before the subscription's interest has ("no responders").
INTEREST_WAIT_S = 5.0
# A replica this few entries behind, heard from this lately, is current: a busy stream's
# followers are a few writes behind at any instant.
LAG_OK = 16
ACTIVE_WITHIN_NS = 2_000_000_000
RESTORE_FINISH_TIMEOUT_S = 60.0  # the server rebuilds the stream before it answers
# A long snapshot (one the server sent in several windows) ends with this status: all sent.
END_OF_DATA = "204"
BACKUP_FILE = "backup.json"
DATA_FILE = "stream.tar.s2"


def schema_streams() -> list[str]:
    """Every stream of the mesh's schema: the KV buckets', the plain streams and the object
    stores'."""
    buckets = [f"KV_{b.name}" for b in BUCKETS]
    return buckets + [s.name for s in STREAMS] + [o.stream for o in OBJECT_STORES]


@dataclass(frozen=True, slots=True)
class StreamBackup:
    """One stream as JetStream's snapshot API hands it out."""

    config: dict[str, Any]
    state: dict[str, Any]
    data: bytes

    @property
    def name(self) -> str:
        return str(self.config["name"])

    @property
    def messages(self) -> int:
        return int(self.state.get("messages", 0))

    @property
    def last_seq(self) -> int:
        return int(self.state.get("last_seq", 0))

    def save(self, directory: Path) -> None:
        """Write the backup under `directory/<stream>/`, each file synced before it counts."""
        target = directory / self.name
        target.mkdir(parents=True, exist_ok=True)
        meta = json.dumps({"config": self.config, "state": self.state}, indent=2).encode()
        # The metadata last: a backup without it is unfinished (`load_backups` skips it).
        (target / BACKUP_FILE).unlink(missing_ok=True)
        atomic_write(target / DATA_FILE, self.data, mode=0o600)
        atomic_write(target / BACKUP_FILE, meta, mode=0o600)

    @classmethod
    def load(cls, directory: Path) -> StreamBackup:
        meta = json.loads((directory / BACKUP_FILE).read_text())
        return cls(dict(meta["config"]), dict(meta["state"]), (directory / DATA_FILE).read_bytes())


def writable(stream: str) -> dict[str, bool]:
    """The settings sealing changed, as the stream had them before: the server sets
    `deny_delete` and `deny_purge` and clears `allow_rollup_hdrs` on a sealed stream, which
    would refuse the purge of a rewritten key or object for ever after a move. KV buckets and
    object stores are made by nats-py with rollups (and KV without deletes); ours without."""
    bucket = stream.startswith(("KV_", "OBJ_"))
    return {
        "sealed": False,
        "deny_purge": False,
        "deny_delete": stream.startswith("KV_"),
        "allow_rollup_hdrs": bucket,
    }


def load_backups(directory: Path) -> list[StreamBackup]:
    """Every complete backup under `directory` (a stream whose metadata is missing was not
    finished and is left out)."""
    if not directory.is_dir():
        return []
    return [
        StreamBackup.load(d)
        for d in sorted(directory.iterdir())
        if (d / BACKUP_FILE).is_file() and (d / DATA_FILE).is_file()
    ]


class StoreMoves:
    """The JetStream API calls of a move, on one connection."""

    def __init__(self, nc: Client, timeout: float) -> None:
        self._nc = nc
        self._timeout = timeout

    async def _api(self, subject: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        payload = json.dumps(body).encode() if body is not None else b""
        with translated(subject):
            reply = await self._nc.request(subject, payload, timeout=self._timeout)
        answer: dict[str, Any] = json.loads(reply.data)
        error = answer.get("error")
        if error:
            text = f"{subject}: {error.get('description', error)}"
            if int(error.get("code", 0)) >= 500 or error.get("err_code") in MOVING:
                raise StoreUnavailable(text)
            raise StoreRefused(text)
        return answer

    async def existing(self) -> list[str]:
        """The schema's streams this JetStream has."""
        answer = await self._api("$JS.API.STREAM.NAMES", {})
        present = set(answer.get("streams") or ())
        return [name for name in schema_streams() if name in present]

    async def info(self, stream: str) -> dict[str, Any]:
        return await self._api(f"$JS.API.STREAM.INFO.{stream}")

    async def seal(self, stream: str) -> None:
        """Refuse every write to `stream` from now on (JetStream cannot unseal; a restore can)."""
        config = (await self.info(stream))["config"]
        if not config.get("sealed"):
            await self._api(f"$JS.API.STREAM.UPDATE.{stream}", {**config, "sealed": True})

    async def back_up(self, stream: str) -> StreamBackup:
        if stream in EPHEMERAL:  # its configuration and state only
            info = await self.info(stream)
            return StreamBackup(dict(info["config"]), dict(info["state"]), b"")
        inbox = self._nc.new_inbox()
        chunks: list[bytes] = []
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def receive(msg: Msg) -> None:
            if not msg.data:  # the end (with a status when the server failed)
                if not done.done():
                    failure = (msg.headers or {}).get("Status")
                    if failure and failure != END_OF_DATA:
                        done.set_exception(StoreUnavailable(f"back up {stream}: {failure}"))
                    else:
                        done.set_result(None)
                return
            chunks.append(msg.data)
            if msg.reply:  # the server waits for this before it sends more
                await self._nc.publish(msg.reply, b"")

        with translated(f"back up {stream}"):
            subscription = await self._nc.subscribe(inbox, cb=receive, pending_msgs_limit=-1)
        try:
            answer = await self._api(
                f"$JS.API.STREAM.SNAPSHOT.{stream}",
                # Without consumers: a watch's ephemeral consumer on another server fails the
                # snapshot ("failed to get consumer state"); the courier's durable one is made
                # again when it is missing.
                {"deliver_subject": inbox, "chunk_size": CHUNK_BYTES, "no_consumers": True},
            )
            try:
                await asyncio.wait_for(done, RESTORE_FINISH_TIMEOUT_S)
            except TimeoutError:
                raise StoreUnavailable(f"back up {stream}: no end of the snapshot") from None
        finally:
            with translated(f"back up {stream}"):
                await subscription.unsubscribe()
        return StreamBackup(dict(answer["config"]), dict(answer["state"]), b"".join(chunks))

    async def restore(self, backup: StreamBackup, replicas: int) -> dict[str, Any]:
        """Create the stream from `backup` with `replicas` replicas, unsealed; the answer's
        state. Refused when a stream of the name exists (delete it first, knowingly)."""
        config = {**backup.config, "num_replicas": replicas, **writable(backup.name)}
        config.pop("placement", None)
        if backup.name in EPHEMERAL:  # made empty, its sequence going on from the old one
            config["first_seq"] = backup.last_seq + 1
            answer = await self._api(f"$JS.API.STREAM.CREATE.{backup.name}", config)
            return dict(answer.get("state") or {})
        answer = await self._api(
            f"$JS.API.STREAM.RESTORE.{backup.name}", {"config": config, "state": backup.state}
        )
        deliver = answer["deliver_subject"]
        for start in range(0, len(backup.data), CHUNK_BYTES):
            await self._chunk(deliver, backup.data[start : start + CHUNK_BYTES], self._timeout)
        final = await self._chunk(deliver, b"", RESTORE_FINISH_TIMEOUT_S)
        return dict(final.get("state") or {})

    async def _chunk(self, subject: str, data: bytes, timeout: float) -> dict[str, Any]:  # noqa: ASYNC109
        deadline = asyncio.get_running_loop().time() + INTEREST_WAIT_S
        with translated(f"restore through {subject}"):
            while True:
                try:
                    reply = await self._nc.request(subject, data, timeout=timeout)
                    break
                except NoRespondersError:  # not delivered: sending it again is safe
                    if asyncio.get_running_loop().time() > deadline:
                        raise
                    await asyncio.sleep(0.1)
        if not reply.data:
            return {}
        answer: dict[str, Any] = json.loads(reply.data)
        if answer.get("error"):
            raise StoreRefused(f"restore: {answer['error'].get('description', answer['error'])}")
        return answer

    async def delete(self, stream: str) -> None:
        await self._api(f"$JS.API.STREAM.DELETE.{stream}")

    async def set_replicas(self, stream: str, replicas: int) -> None:
        config = (await self.info(stream))["config"]
        if config.get("num_replicas", 1) != replicas:
            await self._api(f"$JS.API.STREAM.UPDATE.{stream}", {**config, "num_replicas": replicas})

    async def leader(self, stream: str) -> str | None:
        """The server leading `stream` (None when standalone or electing)."""
        cluster = (await self.info(stream)).get("cluster") or {}
        leader = cluster.get("leader")
        return str(leader) if leader else None

    async def lead_elsewhere(self, stream: str, server: str) -> str | None:
        """If `server` leads `stream`, hand the lead to a current peer; the new leader."""
        cluster = (await self.info(stream)).get("cluster") or {}
        if cluster.get("leader") != server:
            return None
        peers = sorted(
            str(p["name"])
            for p in cluster.get("replicas") or ()
            if p.get("name") and p.get("current") and not p.get("offline")
        )
        if not peers:
            return None
        answer = await self._api(
            f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", {"placement": {"preferred": peers[0]}}
        )
        if not answer.get("success"):
            raise StoreUnavailable(f"move the leader of {stream}: {answer.get('error')}")
        return peers[0]


def current_copies(cluster: dict[str, Any], servers: list[str]) -> list[str]:
    """The servers holding a current copy of a stream, from its info's `cluster`: the leader
    and each replica that is current or only the writes in flight behind (standalone: the
    one server, the first of `servers`)."""
    leader = cluster.get("leader")
    if leader is None and not cluster.get("replicas"):
        return servers[:1]
    peers = [r["name"] for r in cluster.get("replicas") or () if _current(r)]
    return sorted(([leader] if leader else []) + peers)


def _current(replica: dict[str, Any]) -> bool:
    """Current as the leader says, or only the few writes in flight behind and heard from
    lately (the leader's flag drops for a moment on every burst of writes)."""
    if replica.get("current"):
        return True
    recent = int(replica.get("active", ACTIVE_WITHIN_NS)) < ACTIVE_WITHIN_NS
    return not replica.get("offline") and recent and int(replica.get("lag", LAG_OK + 1)) <= LAG_OK
