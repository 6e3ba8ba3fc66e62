"""Which droplet gets which secret (docs/secrets.md): pure functions over the allocations, the
stored values and the droplets' keys, for the `secrets` role.

A droplet gets a service's secret when it runs (or stands in for) one of the service's
instances, its build secrets too (the droplet builds the image), and `registry_password` when
the service's image is pulled from the project's private registry (the droplet pulls it):
sealed as `sealed.<droplet>.<project>.<env>.<name>` from the narrowest value there is
(project-environment, then project, then mesh). The trusted droplets (master, the JetStream
servers, and below three droplets every droplet, since the other one rescues master) also get
every mesh-scoped value, for the mesh itself (mail, SMS, the cloud's token and keys), and each
project's `webhook_secret` (project scope only), with which the entry point verifies the
project's push webhooks: sealed as `sealed.<droplet>.<project>.project.<name>` (`PROJECT_WIDE`
stands where an environment would). Nothing else is sealed to anyone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from meshd.core.spec import MASTER, TEMPLATE_SECRETS
from meshd.core.volumes import volume_droplets
from protocol import subjects
from protocol.messages import Allocation
from protocol.secrets import SecretScope, SecretValue

GENERATED = tuple(sorted(TEMPLATE_SECRETS.values()))  # db_password, redis_password
TRUST_ALL_BELOW = 3  # droplets: the other of two rescues master and alerts for it
WEBHOOK_SECRET = "webhook_secret"  # a project's key for its push webhooks' signatures
REGISTRY_PASSWORD = "registry_password"  # the login to a project's private registry
# The environment part of a secret sealed for a whole project, not one environment: no
# environment has this name (meshd.core.spec.ENVIRONMENTS), so no service's secret collides.
PROJECT_WIDE = "project"
# A cloud mesh's own, set by `meshctl up`: the provider's API token (the name the provider
# plugin's `token_secret` gives), the SSH key the account puts on every droplet, with which
# the provisioner, recovery and the builder reach droplets, and the key of the mesh CA, with
# which those that bootstrap droplets issue their NATS certificates.
CLOUD_TOKEN = "digitalocean_token"
INFRASTRUCTURE_KEY = "infrastructure_key"
MESH_CA_KEY = "mesh_ca_key"


@dataclass(frozen=True, slots=True, order=True)
class Need:
    """`droplet` needs secret `name` for `project`/`env` (both None: for the mesh itself)."""

    droplet: str
    name: str
    project: str | None = None
    env: str | None = None

    @property
    def key(self) -> str:
        return subjects.sealed_key(self.droplet, self.name, self.project, self.env)


@dataclass(frozen=True, slots=True)
class Sealing:
    """What `need.key` must hold: the value at `source`, version `version`, sealed to the
    droplet's key `key` (a fingerprint)."""

    need: Need
    source: str
    version: int
    key: str


def trusted(droplets: Iterable[str], servers: Iterable[str]) -> set[str]:
    """The droplets that may hold mesh-wide secrets and the roles that use them."""
    present = set(droplets)
    if len(present) < TRUST_ALL_BELOW:
        return present
    return present & ({MASTER} | set(servers))


def used(allocation: Allocation) -> tuple[str, ...]:
    """The secrets `allocation`'s droplets need: those of its instances, of its build and
    the registry login its image is pulled with."""
    login = (REGISTRY_PASSWORD,) if allocation.registry else ()
    return (*allocation.secrets, *allocation.build_secrets, *login)


def webhook_projects(values: Mapping[str, SecretValue]) -> set[str]:
    """The projects that have a `webhook_secret` of their own (project scope) stored."""
    return {
        v.project
        for v in values.values()
        if v.name == WEBHOOK_SECRET and v.scope is SecretScope.PROJECT and v.project
    }


def needs(
    allocations: Iterable[Allocation],
    mesh_names: Iterable[str],
    trust: set[str],
    hook_projects: Iterable[str] = (),
) -> set[Need]:
    """Every (droplet, secret) pair: the services' secrets (and build secrets) where their
    instances run, and on the trusted droplets the mesh's own secrets and the webhook secret
    of each of `hook_projects` (the entry point, a trusted droplet's role, verifies hooks).
    The cloud token also goes where a service keeps data: that droplet makes and attaches its
    own volume (meshd/agent/reconciler/volumes.py)."""
    allocations = list(allocations)
    mesh_names = set(mesh_names)
    found = {
        Need(droplet, name, a.project, a.env)
        for a in allocations
        for droplet in a.droplets
        for name in used(a)
    }
    found |= {Need(droplet, name) for droplet in trust for name in mesh_names}
    if CLOUD_TOKEN in mesh_names:
        found |= {Need(droplet, CLOUD_TOKEN) for droplet in volume_droplets(allocations)}
    found |= {
        Need(droplet, WEBHOOK_SECRET, project, PROJECT_WIDE)
        for droplet in trust
        for project in hook_projects
    }
    return found


def source(need: Need, values: Mapping[str, SecretValue]) -> str | None:
    """The key of the value `need` gets: the narrowest scope that has one."""
    if need.project is None:
        candidates = [subjects.secret_value_key(need.name)]
    elif need.env == PROJECT_WIDE:  # the project's own value: no environment, no mesh fallback
        candidates = [subjects.secret_value_key(need.name, need.project)]
    else:
        candidates = [
            subjects.secret_value_key(need.name, need.project, need.env),
            subjects.secret_value_key(need.name, need.project),
            subjects.secret_value_key(need.name),
        ]
    return next((key for key in candidates if key in values), None)


def sealings(
    wanted: Iterable[Need], values: Mapping[str, SecretValue], keys: Mapping[str, str]
) -> dict[str, Sealing]:
    """By sealed key: what each need gets, for droplets that have a key and needs that have
    a value (a missing value is the operator's to set; the service waits for it)."""
    result: dict[str, Sealing] = {}
    for need in sorted(wanted, key=lambda n: n.key):  # a mesh need has no project
        found = source(need, values)
        key = keys.get(need.droplet)
        if found is not None and key:
            result[need.key] = Sealing(need, found, values[found].version, key)
    return result


def missing_generated(
    allocations: Iterable[Allocation], values: Mapping[str, SecretValue]
) -> list[tuple[str, str, str]]:
    """(name, project, env) of every generated secret a service uses that has no value at any
    scope: made by the mesh at the project-environment scope."""
    found = {
        (name, a.project, a.env)
        for a in allocations
        for name in used(a)
        if name in GENERATED and source(Need("-", name, a.project, a.env), values) is None
    }
    return sorted(found)


def used_by(
    value_key: str, allocations: Iterable[Allocation], values: Mapping[str, SecretValue]
) -> list[str]:
    """The services (allocation keys) that get their secret from `value_key`."""
    return sorted(
        {
            subjects.alloc_key(a.project, a.env, a.service)
            for a in allocations
            for name in used(a)
            if source(Need("-", name, a.project, a.env), values) == value_key
        }
    )
