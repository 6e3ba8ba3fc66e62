"""The only place that builds NATS subject, KV bucket, KV key and stream names.

Every variable part (a droplet, project, environment, service, role or event kind) is one
*token*: lowercase letters, digits, `_` and `-`, starting with a letter or digit, at most 63
characters (a DNS label, since droplet names become host names). Dots, spaces and the NATS
wildcards `*` and `>` are refused, so a name can never widen a subscription or split a key.
"""

from __future__ import annotations

import re
from enum import StrEnum

from protocol.errors import InvalidNameError

MAX_TOKEN_LENGTH = 63
_TOKEN = re.compile(r"[a-z0-9][a-z0-9_-]*")

# KV buckets.
DESIRED_BUCKET = "mesh_desired"
ALLOC_BUCKET = "mesh_alloc"
NODES_BUCKET = "mesh_nodes"
INDEX_BUCKET = "mesh_index"  # droplets' cards and placed keys (protocol.cards)
LEASES_BUCKET = "mesh_leases"
FAILURES_BUCKET = "mesh_failures"
SNAPSHOTS_BUCKET = "mesh_snapshots"
SECRETS_BUCKET = "mesh_secrets"
RELEASES_BUCKET = "mesh_releases"  # release records (protocol.releases.Release)
FENCES_BUCKET = "mesh_fences"  # the newest fence each role showed a provider, per droplet
CERTS_BUCKET = "mesh_certs"  # the domains' certificates, HTTP-01 challenges (protocol.certs)
ARTIFACTS_STORE = "mesh_artifacts"  # object store: built artifacts by digest, build logs
BACKUPS_STORE = "mesh_backups"  # object store: encrypted backups (plugins/backups/objects.py)
BUCKETS = (
    DESIRED_BUCKET,
    ALLOC_BUCKET,
    NODES_BUCKET,
    INDEX_BUCKET,
    LEASES_BUCKET,
    FAILURES_BUCKET,
    SNAPSHOTS_BUCKET,
    SECRETS_BUCKET,
    RELEASES_BUCKET,
    FENCES_BUCKET,
    CERTS_BUCKET,
)

# Keys of the desired-state bucket (restart requests: `restart_key`).
DESIRED_KEY = "spec"
PLACEMENT_KEY = "placement"
JETSTREAM_KEY = "jetstream"  # which droplets run the JetStream servers (JetStreamServers)
JETSTREAM_APPLIED_KEY = "jetstream.applied"  # ... as they run, once the state has moved
RESTARTS = "restart.>"
HOLDS = "hold.*"  # `meshctl hold`: failure detection held off (DetectionHold)
CARDS = "*"  # in mesh_index: every droplet's card (NodeCard), keyed by its name
PLACED = "placed.*"  # in mesh_index: the allocations' keys that name each droplet (PlacedKeys)
BACKUP_TARGET_KEY = "backup-target"  # where backups are kept (BackupTargetSpec)
CONFIG_VARS = "config.>"  # `meshctl config`: plain environment variables (ConfigVars)
RELEASE_TARGETS = "release.>"  # the release each environment runs (ReleaseTarget)

# Streams and the subjects they capture.
EVENTS_STREAM = "MESH_EVENTS"
EVENTS_SUBJECTS = "mesh.events.>"
DEPLOY_STREAM = "MESH_DEPLOY"
DEPLOY_SUBJECTS = "mesh.deploy.>"
NOTIFY_STREAM = "MESH_NOTIFY"  # notifications waiting for delivery (work queue)
NOTIFY_SUBJECTS = "mesh.notify.>"
NOTIFY_CONSUMER = "notifier"
LOGS_STREAM = "MESH_LOGS"  # instances' output and the mesh's own logs (protocol.logs)
LOGS_SUBJECTS = "mesh.logs.>"
LOGS_CONSUMER = "opensearch"  # the `logs` role's position in the stream
DEPLOY_CONSUMER = "builder"
# Deploy progress inboxes (`DeployRequest.progress`) and the `deployer` user's reply inboxes
# (its JetStream publish acknowledgements) live under this prefix: the `deployer` may listen
# here and nowhere else, and the builder answers progress only on subjects under it.
DEPLOY_INBOX = "_INBOX_deployer"
HEARTBEAT_MARK_KEY = "notify.heartbeat"  # in mesh_desired: the last heartbeat queued
ALERTED = "notify.alerted"  # in mesh_desired: `notify.alerted.<droplet>.<incarnation>`

# Core NATS subjects (no JetStream) and their subscription wildcards.
_BEATS = "mesh.hb"
_SUSPECT = "mesh.suspect"
_PROBE = "mesh.probe"
_JETSTREAM = "mesh.jetstream"
_RELEASE = "mesh.release"
_DATASTORE = "mesh.datastore"
_ONEOFF = "mesh.oneoff"
ONEOFF_OUTPUT = "mesh.oneoff_out"
_BACKUP = "mesh.backup"
_RESTORE = "mesh.restore"
BACKUP_ORDERS = "mesh.backups.order"  # meshctl backup now|restore -> the `backups` leader
JETSTREAM_MOVED = "mesh.jetstream-moved"  # master, once the state has moved: watch anew
BEATS_ALL = f"{_BEATS}.*"
SUSPECTS_ALL = f"{_SUSPECT}.*"
PROBES_ALL = f"{_PROBE}.*"


class Role(StrEnum):
    """A task that exactly one agent does at a time, held through a lease."""

    SCHEDULER = "scheduler"
    PROVISIONER = "provisioner"
    LB = "lb"
    HEARTBEAT = "heartbeat"
    RECOVERY = "recovery"
    SNAPSHOTS = "snapshots"
    BUILDER = "builder"
    SECRETS = "secrets"
    BACKUPS = "backups"
    LOGS = "logs"
    CERTIFICATES = "certificates"


def token(value: object, what: str = "name") -> str:
    """Return `value` if it is a valid subject token or key part; raise InvalidNameError."""
    context = f"{what} {value!r}"
    if not isinstance(value, str):
        raise InvalidNameError(context, value, f"must be a string, not {type(value).__name__}")
    if not value:
        raise InvalidNameError(context, value, "must not be empty")
    if len(value) > MAX_TOKEN_LENGTH:
        raise InvalidNameError(
            context, value, f"is {len(value)} characters long, more than {MAX_TOKEN_LENGTH}"
        )
    if _TOKEN.fullmatch(value) is None:
        raise InvalidNameError(
            context,
            value,
            "must use only lowercase letters, digits, '_' and '-', starting with a letter or "
            "digit (no dots, spaces or wildcards)",
        )
    return value


def beats(droplet: str) -> str:
    """Subject of `droplet`'s liveness beats: `mesh.hb.<droplet>`."""
    return f"{_BEATS}.{token(droplet, 'droplet')}"


def suspect(droplet: str) -> str:
    """Subject of suspicions about `droplet`: `mesh.suspect.<droplet>`."""
    return f"{_SUSPECT}.{token(droplet, 'droplet')}"


def probe(droplet: str) -> str:
    """Request/reply subject of indirect probes of `droplet`: `mesh.probe.<droplet>`."""
    return f"{_PROBE}.{token(droplet, 'droplet')}"


def jetstream_servers(droplet: str) -> str:
    """Request/reply subject on which `droplet`'s agent is told the JetStream servers of a
    move: `mesh.jetstream.<droplet>`."""
    return f"{_JETSTREAM}.{token(droplet, 'droplet')}"


def release_command(droplet: str) -> str:
    """Request/reply subject on which the builder asks `droplet`'s agent to run a project's
    release command before a release rolls out: `mesh.release.<droplet>`."""
    return f"{_RELEASE}.{token(droplet, 'droplet')}"


def datastore_password(droplet: str) -> str:
    """Request/reply subject on which `meshctl secret` asks `droplet`'s agent to give a
    datastore running there its new password without a restart: `mesh.datastore.<droplet>`."""
    return f"{_DATASTORE}.{token(droplet, 'droplet')}"


def oneoff(droplet: str) -> str:
    """Request/reply subject on which `meshctl exec` asks `droplet`'s agent to run a one-off
    command beside an instance it runs: `mesh.oneoff.<droplet>` (protocol.oneoff)."""
    return f"{_ONEOFF}.{token(droplet, 'droplet')}"


def oneoff_output(name: str) -> str:
    """Where a one-off's output, end and cancel go: `mesh.oneoff_out.<name>` with `.out`,
    `.end` and `.cancel` (`name` a fresh random token)."""
    return f"{ONEOFF_OUTPUT}.{token(name, 'output name')}"


def backup(droplet: str) -> str:
    """Request/reply subject on which the `backups` leader asks `droplet`'s agent to back up
    a datastore it runs: `mesh.backup.<droplet>`."""
    return f"{_BACKUP}.{token(droplet, 'droplet')}"


def restore(droplet: str) -> str:
    """... and to load a staged backup into one: `mesh.restore.<droplet>`."""
    return f"{_RESTORE}.{token(droplet, 'droplet')}"


def droplet_of(subject: str) -> str:
    """The droplet named by a heartbeat, suspect or probe subject; raise InvalidNameError."""
    prefix, _, name = subject.rpartition(".")
    if prefix not in (_BEATS, _SUSPECT, _PROBE):
        raise InvalidNameError(
            f"subject {subject!r}", subject, "is not a heartbeat, suspect or probe subject"
        )
    return token(name, "droplet")


def event(kind: str) -> str:
    """Subject of an event of `kind` in the events stream: `mesh.events.<kind>`."""
    return f"mesh.events.{token(kind, 'event kind')}"


def deploy(project: str) -> str:
    """Subject of a project's deploy requests: `mesh.deploy.<project>` (its environment is
    in the request, or decided by the builder for a push)."""
    return f"mesh.deploy.{token(project, 'project')}"


def deploy_inbox(name: str) -> str:
    """A deploy progress inbox: `_INBOX_deployer.<name>` (`name` a fresh random token)."""
    return f"{DEPLOY_INBOX}.{token(name, 'inbox name')}"


def is_deploy_inbox(subject: str) -> bool:
    """Whether `subject` is a deploy progress inbox: the only subjects the builder answers on
    (a request names its `progress` subject, and the `deployer` user may send requests)."""
    name = subject.removeprefix(DEPLOY_INBOX + ".")
    if name == subject or len(name) > MAX_TOKEN_LENGTH:
        return False
    return _TOKEN.fullmatch(name) is not None


def release_target_key(project: str, env: str) -> str:
    """Key in `mesh_desired` of the release an environment runs: `release.<project>.<env>`."""
    return f"release.{token(project, 'project')}.{token(env, 'environment')}"


def release_key(project: str, env: str, number: int) -> str:
    """Key of a release record in `mesh_releases`: `<project>.<env>.<number>`."""
    if number < 1:
        raise InvalidNameError("release number", number, "must be 1 or more")
    return f"{token(project, 'project')}.{token(env, 'environment')}.{number}"


def alloc_key(project: str, env: str, service: str) -> str:
    """Key of one service's allocation in `mesh_alloc`: `<project>.<env>.<service>`."""
    return f"{token(project, 'project')}.{token(env, 'environment')}.{token(service, 'service')}"


def parse_alloc_key(key: str) -> tuple[str, str, str]:
    """Split an allocation key into (project, env, service); raise InvalidNameError."""
    parts = key.split(".")
    if len(parts) != 3:
        raise InvalidNameError(f"allocation key {key!r}", key, "must be <project>.<env>.<service>")
    project, env, service = parts
    return token(project, "project"), token(env, "environment"), token(service, "service")


def instance_key(project: str, env: str, service: str, slot: int = 0) -> str:
    """Key of one instance on its droplet: the allocation key, with `.<slot>` for the second
    slot a replacement uses while the first still serves."""
    base = alloc_key(project, env, service)
    if slot not in (0, 1):
        raise InvalidNameError(f"instance slot {slot!r}", str(slot), "must be 0 or 1")
    return f"{base}.1" if slot else base


def parse_instance_key(key: str) -> tuple[str, str, str, int]:
    """Split an instance key into (project, env, service, slot); raise InvalidNameError."""
    base, slot = (key[:-2], 1) if key.endswith(".1") else (key, 0)
    try:
        return (*parse_alloc_key(base), slot)
    except InvalidNameError:
        raise InvalidNameError(
            f"instance key {key!r}", key, "must be <project>.<env>.<service>[.1]"
        ) from None


def restart_key(project: str, env: str, service: str) -> str:
    """Key of a service's restart requests in `mesh_desired`: `restart.<alloc key>`."""
    return f"restart.{alloc_key(project, env, service)}"


def hold_key(droplet: str) -> str:
    """Key of a droplet's detection hold in `mesh_desired`: `hold.<droplet>`."""
    return f"hold.{token(droplet, 'droplet')}"


def config_key(project: str, env: str | None = None) -> str:
    """Key of a project's or environment's variables in `mesh_desired`: `config.<project>`
    or `config.<project>.<env>`."""
    base = f"config.{token(project, 'project')}"
    return base if env is None else f"{base}.{token(env, 'environment')}"


MESH_KEY = "mesh-key"  # in mesh_secrets: the mesh key's public half (MeshKey)
SECRET_VALUES = "value.>"
SECRETS_SEALED = "sealed.>"
SECRET_HOLDERS = "holder.*"
ESCROW_KEY = "escrow-key"  # the operator's escrow key, public half (`secret export-key`)
ESCROWED_MESH_KEY = "escrowed-mesh-key"  # the mesh key sealed to it (SealedSecret)


def secret_value_key(name: str, project: str | None = None, env: str | None = None) -> str:
    """Key of a secret's value in `mesh_secrets`: `value.mesh.<name>`,
    `value.project.<project>.<name>` or `value.env.<project>.<env>.<name>`."""
    name = token(name, "secret")
    if project is None:
        return f"value.mesh.{name}"
    if env is None:
        return f"value.project.{token(project, 'project')}.{name}"
    return f"value.env.{token(project, 'project')}.{token(env, 'environment')}.{name}"


def sealed_key(droplet: str, name: str, project: str | None = None, env: str | None = None) -> str:
    """Key of a secret sealed to a droplet: `sealed.<droplet>.<project>.<env>.<name>`, or
    `sealed.<droplet>.mesh.<name>` for the mesh's own (four parts, never five)."""
    if project is None:
        where = "mesh"
    else:
        where = f"{token(project, 'project')}.{token(env, 'environment')}"
    return f"sealed.{token(droplet, 'droplet')}.{where}.{token(name, 'secret')}"


def sealed_of(droplet: str) -> str:
    """The keys sealed to `droplet` (a watch filter)."""
    return f"sealed.{token(droplet, 'droplet')}.>"


def holder_key(droplet: str) -> str:
    """Key of the mesh key's private half sealed to a trusted droplet: `holder.<droplet>`."""
    return f"holder.{token(droplet, 'droplet')}"


def node_key(droplet: str) -> str:
    """Key of a droplet's observed state in `mesh_nodes`: `<droplet>`."""
    return token(droplet, "droplet")


def placed_key(droplet: str) -> str:
    """Key in `mesh_index` of the allocations that name a droplet (PlacedKeys):
    `placed.<droplet>`."""
    return f"placed.{token(droplet, 'droplet')}"


def lease_key(role: Role | str) -> str:
    """Key of a role's lease in `mesh_leases`: `<role>`; only known roles have leases."""
    try:
        return Role(role).value
    except ValueError:
        known = ", ".join(r.value for r in Role)
        raise InvalidNameError(
            "lease key", role, f"{role!r} is not a known role (known: {known})"
        ) from None


def fence_key(role: str, resource: str) -> str:
    """Key of the newest fence `role` used on a provider's resource: `<role>.<resource>`."""
    return f"{token(role, 'role')}.{token(resource, 'resource')}"


def failure_key(droplet: str) -> str:
    """Key of a droplet's failure record in `mesh_failures`: `<droplet>`."""
    return token(droplet, "droplet")


def snapshot_key(droplet: str) -> str:
    """Key of a droplet's snapshot index (newest first) in `mesh_snapshots`: `<droplet>`."""
    return token(droplet, "droplet")


def notify(channel: str) -> str:
    """Subject of a notification waiting for delivery on `channel` (email, sms)."""
    return f"mesh.notify.{token(channel, 'channel')}"


def alerted_key(droplet: str, incarnation: int) -> str:
    """Key in `mesh_desired` that records the critical alert about one failed life."""
    return f"{ALERTED}.{token(droplet, 'droplet')}.{int(incarnation)}"


def app_log(project: str, env: str, service: str, droplet: str) -> str:
    """Subject of an instance's output: `mesh.logs.app.<project>.<env>.<service>.<droplet>`
    (one subject per service and droplet: the stream keeps a number of batches of each)."""
    return f"mesh.logs.app.{alloc_key(project, env, service)}.{token(droplet, 'droplet')}"


def mesh_log(component: str, droplet: str) -> str:
    """Subject of the mesh's own log lines (`agent`, `nginx`) on a droplet."""
    return f"mesh.logs.mesh.{token(component, 'component')}.{token(droplet, 'droplet')}"


def app_logs(
    project: str, env: str | None = None, service: str | None = None, droplet: str | None = None
) -> str:
    """The subscription that selects a project's output, narrowed by what is given."""
    parts = [token(project, "project")]
    parts += [token(env, "environment") if env else "*"]
    parts += [token(service, "service") if service else "*"]
    parts += [token(droplet, "droplet") if droplet else "*"]
    return "mesh.logs.app." + ".".join(parts)


def mesh_logs(droplet: str | None = None) -> str:
    """The subscription that selects the mesh's own log lines (of one droplet)."""
    return f"mesh.logs.mesh.*.{token(droplet, 'droplet') if droplet else '*'}"
