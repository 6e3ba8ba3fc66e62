"""The buckets, streams and object stores a mesh has, as data, and the NATS settings of a
stream (`stream_config`): `NatsStore.ensure` creates what is missing and raises replicas as the
mesh grows. One is added here when the feature that uses it lands, not before: each is a Raft
group on droplets that keep 256 MB for the system."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from protocol import subjects


class Retention(StrEnum):
    LIMITS = "limits"  # kept until too old or too big (the audit log)
    WORK_QUEUE = "work_queue"  # kept until acknowledged


@dataclass(frozen=True, slots=True)
class Bucket:
    name: str
    history: int = 1


@dataclass(frozen=True, slots=True)
class Stream:
    name: str
    subjects: str
    retention: Retention
    max_age_s: float | None = None
    max_bytes: int | None = None
    max_msgs_per_subject: int | None = None


@dataclass(frozen=True, slots=True)
class ObjectStore:
    """An object store (JetStream keeps it in the stream `OBJ_<name>`)."""

    name: str

    @property
    def stream(self) -> str:
        return f"OBJ_{self.name}"


LOG_BATCHES_PER_SUBJECT = 1024  # batches of at most 16 KB (`meshd.agent.logship`)
BUCKETS = (
    Bucket(subjects.DESIRED_BUCKET, history=20),
    Bucket(subjects.ALLOC_BUCKET),
    Bucket(subjects.NODES_BUCKET),
    Bucket(subjects.INDEX_BUCKET),
    Bucket(subjects.LEASES_BUCKET),
    Bucket(subjects.FAILURES_BUCKET),
    Bucket(subjects.SNAPSHOTS_BUCKET),
    Bucket(subjects.SECRETS_BUCKET),
    Bucket(subjects.RELEASES_BUCKET),
    Bucket(subjects.FENCES_BUCKET),
    Bucket(subjects.CERTS_BUCKET),
)
STREAMS = (
    Stream(
        subjects.EVENTS_STREAM,
        subjects.EVENTS_SUBJECTS,
        Retention.LIMITS,
        max_age_s=30 * 24 * 3600,
        max_bytes=64 * 2**20,
    ),
    # Instances' output: a subject per service and droplet, each keeping its newest batches,
    # so that a noisy service evicts its own lines, not another's (docs/logs.md).
    Stream(
        subjects.LOGS_STREAM,
        subjects.LOGS_SUBJECTS,
        Retention.LIMITS,
        max_age_s=7 * 24 * 3600,
        max_bytes=128 * 2**20,  # of the 512 MB a server keeps (objects need the rest)
        max_msgs_per_subject=LOG_BATCHES_PER_SUBJECT,
    ),
    Stream(subjects.NOTIFY_STREAM, subjects.NOTIFY_SUBJECTS, Retention.WORK_QUEUE),
    Stream(subjects.DEPLOY_STREAM, subjects.DEPLOY_SUBJECTS, Retention.WORK_QUEUE),
)
OBJECT_STORES = (ObjectStore(subjects.ARTIFACTS_STORE), ObjectStore(subjects.BACKUPS_STORE))


def stream_config(stream: Stream, replicas: int) -> StreamConfig:
    """The NATS settings of `stream` at `replicas`."""
    if stream.retention is Retention.WORK_QUEUE:
        return StreamConfig(
            name=stream.name,
            subjects=[stream.subjects],
            retention=RetentionPolicy.WORK_QUEUE,
            num_replicas=replicas,
            storage=StorageType.FILE,
        )
    return StreamConfig(
        name=stream.name,
        subjects=[stream.subjects],
        retention=RetentionPolicy.LIMITS,
        max_age=stream.max_age_s,
        max_bytes=stream.max_bytes,
        max_msgs_per_subject=stream.max_msgs_per_subject or -1,
        discard=DiscardPolicy.OLD,
        num_replicas=replicas,
        storage=StorageType.FILE,
    )
