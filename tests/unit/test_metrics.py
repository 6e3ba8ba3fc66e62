"""What an agent's /metrics says at scrape time, from what it knows: instances by state (every
state present, zeros too), healthy instances per service here beside the mesh's desired count,
leases held, restarts, and the log shipper's counts; rendered in Prometheus's text format."""

from __future__ import annotations

from collections import Counter

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from meshd.agent.metrics import AgentCollector, LogCounts
from tests.support.factories import allocation, instance, node


def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status = node(
        "web1",
        instance(),
        instance(service="frontend", healthy=False, restarts=3),
        instance(slot=1, draining=True),
        roles=("lb", "scheduler"),
    )
    allocations = {"a": allocation(), "b": allocation(service="frontend", droplets=("web1",))}
    logs = LogCounts(shipped=40, dropped=Counter(budget=7), waiting=2)
    registry = CollectorRegistry()
    registry.register(AgentCollector(lambda: status, lambda: logs, lambda: allocations))
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_instances_by_state_services_leases_and_logs() -> None:
    found = scrape()
    assert found[("meshd_instances", (("state", "running"),))] == 2
    assert found[("meshd_instances", (("state", "unhealthy"),))] == 1
    assert found[("meshd_instances", (("state", "crashed"),))] == 0
    backend = (("env", "prod"), ("project", "shop"), ("service", "backend"))
    assert found[("meshd_service_instances_desired", backend)] == 3
    assert found[("meshd_service_instances_healthy_here", backend)] == 1  # the draining one not
    frontend = (("env", "prod"), ("project", "shop"), ("service", "frontend"))
    assert ("meshd_service_instances_healthy_here", frontend) not in found
    assert found[("meshd_instance_restarts", (*frontend, ("slot", "0")))] == 3
    assert found[("meshd_leases_held", (("role", "lb"),))] == 1
    assert found[("meshd_log_lines_shipped_total", ())] == 40
    assert found[("meshd_log_lines_dropped_total", (("reason", "budget"),))] == 7
    assert found[("meshd_log_batches_waiting", ())] == 2
