"""Private registries (docs/secrets.md, "Private registries"): which registry an image
reference pulls from, what a project's `registry` server may look like, and whether the
project's login is the one for a service's image. Pure functions over names."""

from __future__ import annotations

import re

from meshd.core.spec import RegistryLogin

DOCKER_HUB = "docker.io"
# Docker Hub's other names, which a login for it may give (Docker itself says docker.io).
HUB_NAMES = frozenset({DOCKER_HUB, "index.docker.io", "registry-1.docker.io"})
LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
SERVER = re.compile(rf"(?P<host>{LABEL}(?:\.{LABEL})*)(?::(?P<port>[0-9]{{1,5}}))?\Z")
SERVER_EXAMPLES = "like 'registry.example.com' or '127.0.0.1:5000'"


def normal_server(server: str) -> str:
    """`server` as image references name it: lower case, Docker Hub as `docker.io`."""
    lowered = server.lower()
    return DOCKER_HUB if lowered in HUB_NAMES else lowered


def image_registry(image: str) -> str:
    """The registry `image` is pulled from, as Docker decides: its first path component when
    that is a host (it has a '.' or a ':', or is `localhost`), else Docker Hub."""
    first, slash, _ = image.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return normal_server(first)
    return DOCKER_HUB


def server_problem(server: str) -> str | None:
    """Why `server` is not a registry's `host[:port]`, or None when it is."""
    if "://" in server:
        return f"give the registry's host without a scheme, {SERVER_EXAMPLES}"
    found = SERVER.match(server)
    if found is None:
        return f"expected a registry host in lower case with an optional port, {SERVER_EXAMPLES}"
    port = found.group("port")
    if port is not None and not 1 <= int(port) <= 65535:
        return f"port {port} is not from 1 to 65535"
    return None


def username_problem(username: str) -> str | None:
    """Why `username` cannot be a registry login's user name, or None."""
    if re.search(r"[\s:]", username) or len(username) > 255:
        return "expected a user name without spaces or ':', at most 255 characters"
    return None


def login_for(registry: RegistryLogin | None, image: str | None) -> RegistryLogin | None:
    """The project's login `registry` when `image` is pulled from its server, else None
    (another registry's image, or none: built or run from a template)."""
    if registry is None or not image:
        return None
    return registry if image_registry(image) == normal_server(registry.server) else None
