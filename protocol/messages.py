"""The message types that cross the wire, each with a kind and a schema version.

Every message is a frozen, slotted, keyword-only dataclass deriving from `Message`, with a
class-level `KIND` (`"kind"` on the wire) and `VERSION` (`"v"`). Field types are what
`protocol.codec` checks: `str`, `int`, `float`, `bool`, `X | None`, `tuple[X, ...]`, `dict[str,
str]`, `dict[str, Any]` (plain data), the enums below (sent by value) and nested dataclasses
(sent as maps). Fields `v` and `kind` are the envelope's.

Changing a message: a new field *with a default* keeps the version (older senders omit it);
anything else bumps `VERSION` and may add a classmethod `upgrade(cls, version, fields) ->
fields` that reads an older version (raise `UnknownVersionError` to decline).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any, ClassVar

from protocol.base import Message
from protocol.cards import NodeCard, PlacedKeys
from protocol.envconfig import ConfigVars
from protocol.secrets import MeshKey, SealedSecret, SecretValue


class InstanceState(StrEnum):
    """Lifecycle state of one instance as its droplet's agent observes it."""

    STARTING = "starting"
    RUNNING = "running"
    UNHEALTHY = "unhealthy"
    CRASHED = "crashed"
    STOPPED = "stopped"


class Verdict(StrEnum):
    """What a monitor says about a target in the failure-detection vote."""

    SUSPECT = "suspect"
    CONFIRM = "confirm"
    REFUTE = "refute"


class FailureState(StrEnum):
    """Progress of a confirmed failure through recovery."""

    CONFIRMED = "confirmed"
    FENCED = "fenced"
    DISPLACED = "displaced"
    RECOVERING = "recovering"
    RECOVERED = "recovered"
    FAILED = "failed"


@dataclass(frozen=True, slots=True, kw_only=True)
class PublishedSpec(Message):
    """The desired state as published (KV `mesh_desired/spec`): `spec` is its plain data (the
    core's `DesiredState`), with who published it and when. The wire kind keeps its name."""

    KIND: ClassVar[str] = "desired_state"

    spec: dict[str, Any]
    published_by: str
    published_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Allocation(Message):
    """Where one service runs and how (KV `mesh_alloc/<project>.<env>.<service>`).

    `generation` grows with every change; `env_vars` never holds secrets (those are files).
    `service_kind` is the service's kind (web, database, redis, worker); `image` is built from
    `build_context` with `dockerfile` when the engine lacks it; `process_command` is what the
    process runtime runs instead of an image; `data_path` is where a named volume is mounted.
    `spare_port` is where a web service's replacement starts while the old instance still
    serves on `port` (or the other way round); `restart` counts `meshctl restart` requests, so
    that one changes the generation like any other change.
    """

    KIND: ClassVar[str] = "allocation"

    project: str
    env: str
    service: str
    generation: int
    droplets: tuple[str, ...]
    port: int | None
    image: str | None
    command: str | None
    memory_mb: int
    env_vars: dict[str, str] = field(default_factory=dict)
    health_path: str | None = None
    secrets: tuple[str, ...] = ()
    fence: int = 0
    hosts: dict[str, str] = field(default_factory=dict)  # variable -> droplet, resolved by agents
    service_kind: str = "web"
    process_command: str | None = None
    build_context: str | None = None
    dockerfile: str | None = None
    data_path: str | None = None
    spare_port: int | None = None
    restart: int = 0
    build_secrets: tuple[str, ...] = ()  # sealed like `secrets`, read by the build only
    artifact: str | None = None  # digest in the artifact store of what `release` runs
    release: int = 0  # the release of its environment (0: what `publish` says)
    # The private registry `image` is pulled from with a login (its password: the secret
    # `registry_password`, sealed like `secrets`), and the user; None for other images.
    registry: str | None = None
    registry_user: str | None = None
    # A datastore's backup interval and retention as its project sets them (None: the seed's),
    # read by the `backups` leader only: changed without a new generation, nothing restarts.
    backup_every_s: float | None = None
    backup_keep_s: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RestartRequest(Message):
    """`meshctl restart` of one service (KV `mesh_desired/restart.<project>.<env>.<service>`);
    `count` grows by one with every request, and the scheduler copies it into the allocation."""

    KIND: ClassVar[str] = "restart_request"

    project: str
    env: str
    service: str
    count: int
    requested_by: str
    requested_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class PlacementRecord(Message):
    """The scheduler's last placement (KV `mesh_desired/placement`), kept so that the next
    one keeps ports and droplets sticky. `placement` is plain data; `spec_revision` is the
    desired-state revision it was computed from."""

    KIND: ClassVar[str] = "placement"

    placement: dict[str, Any]
    spec_revision: int
    fence: int
    written_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerAddress:
    """One JetStream server: the droplet that runs it and the droplet's address."""

    name: str
    address: str


@dataclass(frozen=True, slots=True, kw_only=True)
class JetStreamServers(Message):
    """Which droplets run the mesh's JetStream servers, `master` first (KV
    `mesh_desired/jetstream`, chosen by the scheduler with lease revision `fence`; also sent to
    each droplet's agent during a move). `epoch` grows with every change of the servers; the
    streams have three replicas with three servers, else one."""

    KIND: ClassVar[str] = "jetstream_servers"

    epoch: int
    servers: tuple[ServerAddress, ...]
    fence: int


@dataclass(frozen=True, slots=True, kw_only=True)
class InstanceStatus:
    """One instance's observed state, nested in `NodeStatus` (versioned with it).

    A service has one instance per droplet, two while it is being replaced: `slot` tells them
    apart, `port` is where each listens, and `draining` marks the old one once its
    replacement serves (load balancers drop it; it is stopped shortly after).
    """

    project: str
    env: str
    service: str
    state: InstanceState
    healthy: bool
    restarts: int
    last_error: str | None = None
    generation: int = 0
    runtime_id: str | None = None
    slot: int = 0
    port: int | None = None
    draining: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeStatus(Message):
    """A droplet's observed state (KV `mesh_nodes/<droplet>`)."""

    KIND: ClassVar[str] = "node_status"

    droplet: str
    address: str
    incarnation: int
    size: str
    roles: tuple[str, ...]
    instances: tuple[InstanceStatus, ...]
    updated_at: float
    seal_key: str = ""  # the droplet's public X25519 key (base64): secrets are sealed to it
    env_secrets: tuple[str, ...] = ()  # secrets found only in the agent's environment
    tls_expires: float = 0.0  # when its NATS certificate ends (epoch seconds); 0: it has none


@dataclass(frozen=True, slots=True, kw_only=True)
class LivenessBeat(Message):
    """A droplet's liveness beat on `mesh.hb.<droplet>`, twice a second: its monitors'
    evidence of life (not the heartbeat *mail*). The wire kind keeps its name."""

    KIND: ClassVar[str] = "heartbeat"

    droplet: str
    incarnation: int
    seq: int
    sent_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Lease(Message):
    """The holder of a role (KV `mesh_leases/<role>`); the KV revision is the fence."""

    KIND: ClassVar[str] = "lease"

    role: str
    holder: str
    incarnation: int
    acquired_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Suspicion(Message):
    """A monitor's vote about `target` on `mesh.suspect.<target>`.

    `incarnation` is the target's incarnation the vote is about; a live target refutes with a
    higher one.
    """

    KIND: ClassVar[str] = "suspicion"

    target: str
    by: str
    incarnation: int
    verdict: Verdict


@dataclass(frozen=True, slots=True, kw_only=True)
class FailureRecord(Message):
    """A confirmed failure (KV `mesh_failures/<droplet>`) and how far its recovery got.

    `fence` is the lease revision of the recovery leader that took the last step (0 until one
    did); `incarnation` is the life of the droplet that failed; `droplet_id` the provider's id
    of the droplet that was fenced, `replacement_id` that of its replacement; `step_at` when
    the current state began; `displaced` maps the allocation keys of stateless instances that
    run on a survivor meanwhile to that droplet (meshd.core.displacement); `volumes` are the
    ids of the volumes detached from the fenced droplet, to be attached to its replacement."""

    KIND: ClassVar[str] = "failure_record"

    droplet: str
    confirmed_by: tuple[str, ...]
    confirmed_at: float
    state: FailureState
    fence: int
    incarnation: int = 0
    droplet_id: str | None = None
    replacement_id: str | None = None
    step_at: float = 0.0
    displaced: dict[str, str] = field(default_factory=dict)
    volumes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class DetectionHold(Message):
    """The operator holds off failure detection of a droplet until `until` (KV
    `mesh_desired/hold.<droplet>`, written by `meshctl hold`): its monitors still suspect it
    when it is silent, but none confirms, so it is not rebuilt (an agent upgrade, a reboot,
    a drill that must not turn into a recovery). Past `until` the hold is void."""

    KIND: ClassVar[str] = "detection_hold"

    droplet: str
    until: float
    reason: str
    held_by: str
    held_at: float

    def holds(self, now: float) -> bool:
        return now < self.until


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """One post-deployment snapshot of a droplet: the provider's `id` and `name`, the
    droplet it was taken of, and the generation of every allocation the droplet ran healthy
    then (allocation key -> generation) and the release of those a deploy gave an artifact
    (`releases`), taken by the leader with lease revision `fence`."""

    id: str
    name: str
    droplet_id: str
    created_at: float
    generations: dict[str, int]
    fence: int
    releases: dict[str, int] = field(default_factory=dict)  # allocation key -> its release


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotIndex(Message):
    """A droplet's snapshots, newest first (KV `mesh_snapshots/<droplet>`); the seed keeps
    the last three."""

    KIND: ClassVar[str] = "snapshot_index"

    droplet: str
    snapshots: tuple[Snapshot, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Notification(Message):
    """A message to the operator waiting for delivery (stream `MESH_NOTIFY`): `channel` is
    `email` or `sms`, `purpose` what it is (`heartbeat`, `backup_heartbeat`, `critical`,
    `test`; not `kind`, which belongs to the envelope), `fence` the lease revision of the
    leader that queued it."""

    KIND: ClassVar[str] = "notification"

    channel: str
    purpose: str
    subject: str
    text: str
    html: str | None = None
    created_at: float
    fence: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class HeartbeatMark(Message):
    """The last heartbeat mail queued (KV `mesh_desired/notify.heartbeat`), claimed with
    compare-and-set, so that one mail goes out per interval across holders of the role."""

    KIND: ClassVar[str] = "heartbeat_mark"

    purpose: str  # heartbeat, backup_heartbeat
    sent_at: float
    by: str
    fence: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Event(Message):
    """One entry of the audit log (stream `MESH_EVENTS`, subject `mesh.events.<name>`).

    `name` is the event kind (a subject token such as `lease_taken`); it is not called `kind`
    because that key belongs to the envelope. `subject` is what the event is about (a droplet,
    a project, ...), `fence` the lease revision of the leader that acted, if any."""

    KIND: ClassVar[str] = "event"

    name: str
    actor: str
    subject: str
    detail: dict[str, Any] = field(default_factory=dict)
    fence: int | None = None
    at: float


MESSAGE_TYPES: Mapping[str, type[Message]] = MappingProxyType(
    {
        cls.KIND: cls
        for cls in (
            PublishedSpec,
            Allocation,
            RestartRequest,
            PlacementRecord,
            JetStreamServers,
            NodeStatus,
            NodeCard,
            PlacedKeys,
            LivenessBeat,
            Lease,
            Suspicion,
            FailureRecord,
            DetectionHold,
            SecretValue,
            SealedSecret,
            MeshKey,
            SnapshotIndex,
            Notification,
            HeartbeatMark,
            Event,
            ConfigVars,
        )
    }
)
"""Every top-level message type by its `KIND`."""
