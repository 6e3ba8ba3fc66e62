"""The buckets, streams and object stores a mesh has, as data: `NatsStore.ensure` creates what
is missing and raises replicas as the mesh grows. One is added here when the feature that uses
it lands, not before: each is a Raft group on droplets that keep 256 MB for the system."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

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


@dataclass(frozen=True, slots=True)
class ObjectStore:
    """An object store (JetStream keeps it in the stream `OBJ_<name>`)."""

    name: str

    @property
    def stream(self) -> str:
        return f"OBJ_{self.name}"


BUCKETS = (
    Bucket(subjects.DESIRED_BUCKET, history=20),
    Bucket(subjects.ALLOC_BUCKET),
    Bucket(subjects.NODES_BUCKET),
    Bucket(subjects.LEASES_BUCKET),
    Bucket(subjects.FAILURES_BUCKET),
    Bucket(subjects.SNAPSHOTS_BUCKET),
    Bucket(subjects.SECRETS_BUCKET),
    Bucket(subjects.RELEASES_BUCKET),
    Bucket(subjects.FENCES_BUCKET),
)
STREAMS = (
    Stream(
        subjects.EVENTS_STREAM,
        subjects.EVENTS_SUBJECTS,
        Retention.LIMITS,
        max_age_s=30 * 24 * 3600,
        max_bytes=64 * 2**20,
    ),
    Stream(subjects.NOTIFY_STREAM, subjects.NOTIFY_SUBJECTS, Retention.WORK_QUEUE),
    Stream(subjects.DEPLOY_STREAM, subjects.DEPLOY_SUBJECTS, Retention.WORK_QUEUE),
)
OBJECT_STORES = (ObjectStore(subjects.ARTIFACTS_STORE), ObjectStore(subjects.BACKUPS_STORE))
