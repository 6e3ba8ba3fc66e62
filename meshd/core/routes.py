"""What the load balancer routes where (pure): upstreams of healthy web instances from the
observed state, and sites for the domains of the deployment config. The load balancer plugin
turns them into its server's configuration (`plugins.lb`).

Routes: the seed's `/<project>-<env>/<service>/` on the entry address, for every web service;
and, for a project-environment with domains, a server for those names where `/` goes to the
frontend (the backend when there is no frontend) and `/<service>/` to each web service.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping

from meshd.core.health import healthy_servers
from meshd.core.spec import DesiredState, ServiceKind
from plugins.lb import Site, SiteTls, Upstream
from protocol.messages import Allocation, NodeStatus


def upstreams(
    allocations: Iterable[Allocation], nodes: Mapping[str, NodeStatus], now: float
) -> tuple[Upstream, ...]:
    """Every web service with the instances that run its current generation, pass their
    health check and sit on a droplet that reports; workers and datastores never."""
    result = []
    for allocation in allocations:
        if allocation.service_kind != ServiceKind.WEB.value or allocation.port is None:
            continue
        servers = tuple(healthy_servers(allocation, nodes, now))
        result.append(Upstream(allocation.project, allocation.env, allocation.service, servers))
    return tuple(sorted(result, key=lambda u: (u.project, u.env, u.service)))


def sites(
    state: DesiredState,
    found: tuple[Upstream, ...],
    tls: Mapping[tuple[str, str], SiteTls] | None = None,
) -> tuple[Site, ...]:
    """A site per project-environment that the deployment config gives domains, with its
    certificate where `tls` (by project and environment) has one."""
    by_env: defaultdict[tuple[str, str], list[Upstream]] = defaultdict(list)
    for upstream in found:  # once: a site per environment is not a pass over every upstream
        by_env[(upstream.project, upstream.env)].append(upstream)
    result = []
    for project in state.projects:
        for env, domains in sorted(project.domains.items()):
            mine = tuple(by_env.get((project.name, env), ()))
            by_service = {u.service: u for u in mine}
            root = by_service.get("frontend") or by_service.get("backend")
            if root is None:
                continue
            served = (tls or {}).get((project.name, env))
            result.append(Site(project.name, env, tuple(domains), root, mine, served))
    return tuple(result)
