"""The load balancer interface: how the `lb` lease holder serves the mesh's entry point.

A plugin (`nginx`) implements `LoadBalancer`; the agent picks one by name with `load_lb`. The
core says what to serve (`LbConfig`: the upstreams of healthy instances and the sites of
domains, with their certificates); the plugin renders its server's configuration from it,
checks it, swaps it in without dropping traffic and keeps the server running.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

from protocol.errors import MeshError

LOAD_BALANCERS: dict[str, str] = {
    "nginx": "plugins.lb.nginx:create",
}


@dataclass(frozen=True, slots=True)
class Upstream:
    """One web service of one project-environment and its healthy instances."""

    project: str
    env: str
    service: str
    servers: tuple[str, ...]  # "address:port", sorted

    @property
    def name(self) -> str:
        return f"{self.project}_{self.env}_{self.service}"

    @property
    def route(self) -> str:
        return f"/{self.project}-{self.env}/{self.service}/"


@dataclass(frozen=True, slots=True)
class SiteTls:
    """A site's certificate as files of the plugin's directory, and the names it covers."""

    certificate: str  # the chain, PEM, leaf first
    key: str
    covers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Site:
    """A project-environment reached by its own host names: over HTTPS those its certificate
    covers (plain HTTP redirects there), over plain HTTP the others (no certificate yet)."""

    project: str
    env: str
    domains: tuple[str, ...]
    root: Upstream  # what `/` serves
    upstreams: tuple[Upstream, ...]
    tls: SiteTls | None = None

    @property
    def secure_domains(self) -> tuple[str, ...]:
        covered = self.tls.covers if self.tls else ()
        return tuple(d for d in self.domains if d in covered)

    @property
    def plain_domains(self) -> tuple[str, ...]:
        covered = self.tls.covers if self.tls else ()
        return tuple(d for d in self.domains if d not in covered)


@dataclass(frozen=True, slots=True)
class LbConfig:
    """What the entry point serves: where it listens, the seed's routes to every web service
    (`upstreams`), the sites of domains, and where push webhooks (`/_mesh/hooks/git/...`, on
    every host name) go: the holder's own agent API (`agent`; empty: nowhere, no route)."""

    listen: str  # "address:port" of the entry point
    upstreams: tuple[Upstream, ...]
    sites: tuple[Site, ...] = field(default=())
    agent: str = ""  # "address:port" of the holder's agent API
    tls_listen: str = ""  # "address:port" for HTTPS ("": none)

    @property
    def https_origin(self) -> str:
        """Where plain HTTP redirects to, in nginx's terms (the port only when not 443)."""
        port = self.tls_listen.rpartition(":")[2]
        return "https://$host" if port == "443" else f"https://$host:{port}"

    @property
    def secure(self) -> tuple[Site, ...]:
        """The sites with a certificate: the first HTTPS server is the port's default."""
        return tuple(site for site in self.sites if site.secure_domains)


class LbError(MeshError):
    """The load balancer could not do what was asked; `reason` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class LbUnavailable(LbError):
    """The load balancer's program is missing or does not start."""


class ConfigRejected(LbError):
    """A new configuration failed the server's own test; the running one was kept."""


def _default_logger() -> logging.Logger:
    return logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class LbContext:
    directory: Path  # owned by the plugin: configuration, pid, logs
    config: dict[str, Any] = field(default_factory=dict)
    logger: logging.Logger = field(default_factory=_default_logger)


class LoadBalancer(Protocol):
    name: str

    async def apply(self, config: LbConfig) -> bool:
        """Serve `config`: render and test it, then start the server or reload it gracefully.
        False when it is what already runs (nothing done). Raises `ConfigRejected` (the
        running configuration stays) or `LbUnavailable`."""
        ...

    async def ensure_running(self) -> bool:
        """Start the server again with the last good configuration if it died; True if it
        had to."""
        ...

    async def stop(self) -> None:
        """Stop serving (graceful, then forced). Idempotent."""
        ...


def load_lb(name: str, ctx: LbContext) -> LoadBalancer:
    target = LOAD_BALANCERS.get(name)
    if target is None:
        known = ", ".join(sorted(LOAD_BALANCERS))
        raise LbUnavailable(f"no load balancer called {name!r}; known: {known}")
    module_name, _, attribute = target.partition(":")
    factory = cast(
        Callable[[LbContext], LoadBalancer],
        getattr(importlib.import_module(module_name), attribute),
    )
    return factory(ctx)
