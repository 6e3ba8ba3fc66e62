"""The agent's Prometheus metrics (`GET /metrics` on its API port, docs/metrics.md), with the
official client library. One registry per agent process, not the library's global one: only
what is named here is served. Counters and histograms are module-level and updated where the
thing happens; what the agent already knows (instances, leases, the log shipper) is read at
scrape time by `AgentCollector`, never kept twice.

Names follow Prometheus's conventions: the `meshd_` prefix, units in the name, `_total` for
counters."""

from __future__ import annotations

import asyncio
from collections import Counter as Tally
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from meshd.agent.store import Store, StoreUnavailable
from protocol.messages import Allocation, InstanceState, NodeStatus

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(namespace="meshd", registry=REGISTRY)  # the agent's own CPU, RSS, open files

RTT_EVERY_S = 5.0
FAST = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
SLOW = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)

PROBE_SECONDS = Histogram(
    "meshd_health_probe_duration_seconds",
    "How long an instance's health probe took (http: its health path; datastore: by protocol)",
    ["kind"],
    buckets=FAST,
    registry=REGISTRY,
)
LEASE_TERMS = Counter(
    "meshd_lease_terms_total", "Terms this agent began as a role's leader", ["role"],
    registry=REGISTRY,
)  # fmt: skip
SUSPICIONS = Counter(
    "meshd_detector_suspicions_total", "Droplets this agent began to suspect", registry=REGISTRY
)
CONFIRMATIONS = Counter(
    "meshd_detector_confirmations_total",
    "Droplet failures confirmed by a majority, as this agent saw them",
    registry=REGISTRY,
)
RECOVERY_STEP_SECONDS = Histogram(
    "meshd_recovery_step_duration_seconds",
    "How long a recovery step took, from the previous step (or the confirmation) to this one",
    ["step"],
    buckets=SLOW,
    registry=REGISTRY,
)
ROLLOUT_SECONDS = Histogram(
    "meshd_rollout_duration_seconds",
    "From a release's rollout starting to every instance of it serving",
    buckets=SLOW,
    registry=REGISTRY,
)
RELEASE_SECONDS = Histogram(
    "meshd_release_duration_seconds",
    "From a deploy request to its release serving (build, release command, rollout)",
    buckets=SLOW,
    registry=REGISTRY,
)
NOTIFICATIONS_WAITING = Gauge(
    "meshd_notifications_waiting",
    "Notifications queued and not yet delivered (read by the heartbeat role's holder)",
    registry=REGISTRY,
)
NOTIFICATION_FAILURES = Counter(
    "meshd_notification_failures_total", "Deliveries that failed and will be tried again",
    ["channel"], registry=REGISTRY,
)  # fmt: skip
BACKUP_NEWEST = Gauge(
    "meshd_backup_newest_timestamp_seconds",
    "When a datastore's newest backup was taken (0: none yet); set by the backups role's holder",
    ["project", "env", "service"],
    registry=REGISTRY,
)
BACKUP_INTERVAL = Gauge(
    "meshd_backup_interval_seconds",
    "How often a datastore is backed up (overdue at twice this)",
    ["project", "env", "service"],
    registry=REGISTRY,
)
JETSTREAM_ANSWERS = Gauge(
    "meshd_jetstream_answers",
    "1 while JetStream answers this agent (it has a meta leader: a quorum of its servers)",
    registry=REGISTRY,
)
NATS_RTT_SECONDS = Gauge(
    "meshd_nats_round_trip_seconds",
    "Round trip to this agent's NATS server (PING to PONG); absent while disconnected",
    registry=REGISTRY,
)


@dataclass(frozen=True, slots=True)
class LogCounts:
    shipped: int
    dropped: Tally[str]
    waiting: int


class AgentCollector(Collector):
    """What the agent knows, read at scrape time."""

    def __init__(
        self,
        status: Callable[[], NodeStatus],
        logs: Callable[[], LogCounts],
        allocations: Callable[[], Mapping[str, Allocation]],
    ) -> None:
        self._status = status
        self._logs = logs
        self._allocations = allocations

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        node = self._status()
        instances = GaugeMetricFamily(
            "meshd_instances", "Instances on this droplet by state", labels=["state"]
        )
        states = Tally(i.state.value for i in node.instances)
        for state in InstanceState:
            instances.add_metric([state.value], states.get(state.value, 0))
        yield instances
        healthy = GaugeMetricFamily(
            "meshd_instances_healthy", "Instances on this droplet that pass their health check"
        )
        healthy.add_metric([], sum(1 for i in node.instances if i.healthy))
        yield healthy
        yield from _services(node, self._allocations())
        restarts = GaugeMetricFamily(
            "meshd_instance_restarts",
            "Restarts of an instance since it last ran healthy for a while (resets then)",
            labels=["project", "env", "service", "slot"],
        )
        for i in node.instances:
            restarts.add_metric([i.project, i.env, i.service, str(i.slot)], i.restarts)
        yield restarts
        leases = GaugeMetricFamily(
            "meshd_leases_held", "Roles this agent leads (1 per role held)", labels=["role"]
        )
        for role in node.roles:
            leases.add_metric([role], 1)
        yield leases
        counts = self._logs()
        shipped = CounterMetricFamily("meshd_log_lines_shipped", "Log lines shipped into the mesh")
        shipped.add_metric([], counts.shipped)
        yield shipped
        dropped = CounterMetricFamily(
            "meshd_log_lines_dropped", "Log lines the shipper dropped", labels=["reason"]
        )
        for reason in ("budget", "buffer"):
            dropped.add_metric([reason], counts.dropped.get(reason, 0))
        yield dropped
        waiting = GaugeMetricFamily(
            "meshd_log_batches_waiting", "Log batches waiting for the logs stream"
        )
        waiting.add_metric([], counts.waiting)
        yield waiting


def _services(
    node: NodeStatus, allocations: Mapping[str, Allocation]
) -> Iterator[GaugeMetricFamily]:
    """Per service: how many instances the mesh wants (every agent that reads its allocation
    says it: take the max), and how many are healthy here (sum over the agents; a droplet
    that cannot be scraped counts none). Together they say when a service is not whole."""
    labels = ["project", "env", "service"]
    desired = GaugeMetricFamily(
        "meshd_service_instances_desired", "Instances the mesh places of a service", labels=labels
    )
    for a in allocations.values():
        desired.add_metric([a.project, a.env, a.service], len(a.droplets))
    yield desired
    healthy = GaugeMetricFamily(
        "meshd_service_instances_healthy_here",
        "Healthy instances of a service on this droplet (not draining)",
        labels=labels,
    )
    here = Tally(
        (i.project, i.env, i.service) for i in node.instances if i.healthy and not i.draining
    )
    for (project, env, service), count in sorted(here.items()):
        healthy.add_metric([project, env, service], count)
    yield healthy


def backup_seen(datastore: tuple[str, str, str], newest_at: float | None, every_s: float) -> None:
    BACKUP_NEWEST.labels(*datastore).set(newest_at or 0.0)
    BACKUP_INTERVAL.labels(*datastore).set(every_s)


def serve(
    status: Callable[[], NodeStatus],
    logs: Callable[[], LogCounts],
    allocations: Callable[[], Mapping[str, Allocation]],
) -> Callable[[], bytes]:
    """Register what the agent knows; the renderer of `/metrics` (blocking: it reads /proc)."""
    REGISTRY.register(AgentCollector(status, logs, allocations))
    return partial(generate_latest, REGISTRY)


async def measure_round_trips(store: Callable[[], Store | None]) -> None:
    """NATS_RTT_SECONDS and JETSTREAM_ANSWERS every RTT_EVERY_S (NaN and 0: no answer)."""
    while True:
        connected = store()
        try:
            if connected is None:
                raise StoreUnavailable("not connected")
            NATS_RTT_SECONDS.set(await connected.round_trip())
        except StoreUnavailable:
            NATS_RTT_SECONDS.set(float("nan"))
        answers = connected is not None and await connected.jetstream_answers()
        JETSTREAM_ANSWERS.set(1 if answers else 0)
        await asyncio.sleep(RTT_EVERY_S)
