"""The runtime interface: how an agent starts, stops and lists the instances on its droplet.

A runtime plugin (`process`, later `docker`) implements `Runtime`; the agent picks one by name
from configuration with `load_runtime`, which imports the plugin lazily from `RUNTIMES`. The
values that cross this seam are `InstanceSpec` (what should run), `InstanceInfo` (what runs)
and the errors `RuntimeFailure` / `InstanceStartError`.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Protocol, cast, runtime_checkable

from protocol import subjects
from protocol.errors import MeshError

RUNTIMES: dict[str, str] = {
    "docker": "plugins.runtimes.docker:create",
    "process": "plugins.runtimes.process:create",
}
"""Built-in runtimes: name -> `module:factory`; the factory takes a `RuntimeContext`."""
OutputSink = Callable[[bytes], Awaitable[None]]  # a one-off's output as it comes (`run_once`)
ONE_OFF_OUTPUT_CHARS = 4000  # the tail of a one-off command's output that `run_once` returns


@dataclass(frozen=True, slots=True)
class RegistryAuth:
    """The login with which a missing image is pulled from a private registry: `server`
    (`host[:port]`), `username`, and `password` (never shown in `repr`)."""

    server: str
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class InstanceSpec:
    """What one instance of a service should run on this droplet.

    `generation` grows whenever what runs changes; `env_vars` never holds secrets: `secrets`
    (name -> value) are delivered as files and never shown in `repr`; `build_secrets` (likewise)
    reach only the build of `image`, never the running instance. `kind` is the service's
    kind (web, database, redis, worker); `command` runs in the image, `process_command` instead
    of it where there are no images; `build_context` and `dockerfile` build `image` when it is
    missing; `data_path` is where the instance's volume is mounted: `volume_path`, the
    provider volume it keeps its data on (a built-in datastore's data directory too), else a
    named volume of the runtime's. `artifact` is the
    digest of the built artifact it runs (loaded with `Runtime.load_artifact` first): docker
    runs `image` from it and never builds; process runs in the artifact's directory.
    `registry_auth` (not in `repr`) is the login docker pulls a missing `image` with; other
    runtimes ignore it.

    `slot` (0 or 1) lets a replacement run beside the instance it replaces; `port` is where
    this slot listens on the droplet, `service_port` where the service listens inside its
    container (the allocation's port, the same in both slots; None: `port`).
    """

    project: str
    env: str
    service: str
    generation: int
    host: str
    port: int | None = None
    command: str | None = None
    image: str | None = None
    env_vars: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, bytes] = field(default_factory=dict, repr=False)
    memory_mb: int = 256
    health_path: str | None = None
    service_kind: str = "web"
    process_command: str | None = None
    build_context: str | None = None
    dockerfile: str | None = None
    data_path: str | None = None
    volume_path: str | None = None
    slot: int = 0
    service_port: int | None = None
    build_secrets: dict[str, bytes] = field(default_factory=dict, repr=False)
    artifact: str | None = None
    registry_auth: RegistryAuth | None = field(default=None, repr=False)

    @property
    def key(self) -> str:
        """The instance's key: its allocation's key, `.1` appended in the second slot."""
        return subjects.instance_key(self.project, self.env, self.service, self.slot)


class InstancePhase(StrEnum):
    """Whether an instance's process or container is alive."""

    RUNNING = "running"
    EXITED = "exited"


@dataclass(frozen=True, slots=True, kw_only=True)
class InstanceInfo:
    """What a runtime observes of one instance (`key`: `InstanceSpec.key`).

    `runtime_id` is the pid (process) or container id (docker); `exit_code` is known only when
    the runtime could see it (negative: killed by that signal); `detail` says why it exited
    (the last lines of its output) or what went wrong. `restarts` counts the times the engine
    itself restarted this instance since the runtime was created (Docker's restart policy),
    with `exit_code` the last exit.
    """

    key: str
    generation: int
    runtime_id: str
    phase: InstancePhase
    started_at: float
    exit_code: int | None = None
    detail: str | None = None
    restarts: int = 0


class RuntimeFailure(MeshError):
    """A runtime could not do what was asked for instance `key`; `reason` says why."""

    action: ClassVar[str] = "manage instance"

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"{self.action} {key}: {reason}")


class InstanceStartError(RuntimeFailure):
    """An instance could not be started (no command, executable not found, ...)."""

    action = "start instance"


class InstanceStopError(RuntimeFailure):
    """An instance did not go away, even after SIGKILL."""

    action = "stop instance"


class OneOffTimeout(RuntimeFailure):
    """A one-off command (`Runtime.run_once`) ran longer than `timeout` seconds and was
    killed; `output` is the tail of what it wrote until then."""

    action = "run once with"

    def __init__(self, key: str, timeout: float, output: str) -> None:
        self.timeout = timeout
        self.output = output
        super().__init__(key, f"killed after {timeout:g} s")


class RuntimeUnavailable(MeshError):
    """The runtime's engine does not answer (the Docker daemon is down); `reason` says how."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class ArtifactError(MeshError):
    """An artifact could not be built or loaded: `what` was being done, `reason` says why,
    `log` holds the build's output (a failed build)."""

    def __init__(self, what: str, reason: str, log: str = "") -> None:
        self.what = what
        self.reason = reason
        self.log = log
        super().__init__(f"{what}: {reason}")


class RuntimeConfigError(MeshError, ValueError):
    """A runtime's configuration is wrong: `runtime` names it, `reason` says what is wrong."""

    def __init__(self, runtime: str, reason: str) -> None:
        self.runtime = runtime
        self.reason = reason
        super().__init__(f"configure runtime {runtime!r}: {reason}")


class UnknownRuntimeError(RuntimeConfigError, LookupError):
    """No runtime has this name; `known` lists the names there are."""

    def __init__(self, runtime: str, known: list[str]) -> None:
        self.known = known
        super().__init__(runtime, f"no such runtime; known runtimes: {', '.join(known)}")


def _default_logger() -> logging.Logger:
    return logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class RuntimeContext:
    """The narrow view of the agent a runtime plugin gets: its own config section, a data
    directory it owns, and a named logger."""

    mesh: str
    droplet: str
    data_dir: Path
    config: dict[str, Any] = field(default_factory=dict)
    logger: logging.Logger = field(default_factory=_default_logger)


class Runtime(Protocol):
    """Starts, stops and lists the instances of one droplet."""

    name: str

    async def ensure(self, spec: InstanceSpec) -> InstanceInfo:
        """Make `spec` run, idempotently.

        An instance with this key and generation that runs is returned untouched (a healthy
        instance is never restarted); another generation is stopped and the new one started;
        an exited one is started again. Raises `InstanceStartError` when it cannot start.
        """
        ...

    async def stop(self, key: str, *, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds; forget the instance. Idempotent."""
        ...

    async def restart(self, spec: InstanceSpec) -> InstanceInfo:
        """Stop and start again even if it runs (for hung or unhealthy instances)."""
        ...

    async def list(self) -> list[InstanceInfo]:
        """Every instance this runtime knows on this droplet, running or exited. Raises
        `RuntimeUnavailable` when the engine does not answer."""
        ...

    async def close(self) -> None:
        """Release resources. Instances keep running. Idempotent."""
        ...

    async def run_once(
        self,
        spec: InstanceSpec,
        command: str,
        timeout: float,  # noqa: ASYNC109
        output: OutputSink | None = None,
    ) -> tuple[int, str]:
        """Run `command` (split like a shell would, in place of the instance's command) once
        as `spec`'s instance would run: its artifact, environment and secret files (docker:
        its network too), but no port and no restarts; beside the instance, which it leaves
        alone. Its exit code and the last `ONE_OFF_OUTPUT_CHARS` of its output (stdout and
        stderr); `output` gets all of it as it comes, when given (within a fraction of a
        second). Killed after `timeout` seconds (`OneOffTimeout`); `InstanceStartError` when
        it cannot start. Nothing of it is left behind."""
        ...

    # --- artifacts: what a deploy builds once and every droplet loads --------------------

    async def build_artifact(
        self, context: Path, dockerfile: Path | None, image: str, out: Path
    ) -> str:
        """Build what this runtime runs from the build context `context` (docker: the image
        `image` from `dockerfile`) and write it as one file to `out`; the build's output.
        Raises `ArtifactError` (with the output) when the build fails."""
        ...

    async def has_artifact(self, digest: str, image: str | None) -> bool:
        """Whether the artifact `digest` (docker: its image `image`) is loaded here."""
        ...

    async def load_artifact(self, digest: str, image: str | None, path: Path) -> None:
        """Load the artifact file at `path` (its SHA-256 is `digest`, already checked), so
        that instances whose spec names it can run. Raises `ArtifactError`."""
        ...


@dataclass(frozen=True, slots=True)
class LogFile:
    """Where an instance's output is written: `plain` lines, or Docker's `json-file` lines
    (`{"log": ..., "stream": ..., "time": ...}`)."""

    key: str
    path: Path
    format: str = "plain"


@runtime_checkable
class LogFiles(Protocol):
    """Optional ability: the files the instances' output goes to, which the agent's log
    shipper reads (`meshd.agent.logship`) without a stream per instance."""

    async def log_files(self) -> list[LogFile]: ...


def load_runtime(name: str, ctx: RuntimeContext) -> Runtime:
    """Import the runtime called `name` and create it; raise UnknownRuntimeError if none is.
    A docker runtime with `datastores: process` runs the built-in datastores apart, under the
    process runtime (`plugins.runtimes.apart`)."""
    if name == "docker" and ctx.config.get("datastores") == "process":
        from plugins.runtimes.apart import DatastoresApart

        config = {k: v for k, v in ctx.config.items() if k != "datastores"}
        docker = load_runtime(name, dataclasses.replace(ctx, config=config))
        apart = dataclasses.replace(ctx, data_dir=ctx.data_dir / "datastores", config={})
        return DatastoresApart(docker, load_runtime("process", apart))
    target = RUNTIMES.get(name)
    if target is None:
        raise UnknownRuntimeError(name, sorted(RUNTIMES))
    module_name, _, attribute = target.partition(":")
    factory = cast(
        Callable[[RuntimeContext], Runtime],
        getattr(importlib.import_module(module_name), attribute),
    )
    return factory(ctx)


SYSTEM_DATA_ROOT = Path("/var/lib/meshd")  # run as root: data the servers' own users reach


def mesh_data_root(mesh: str) -> Path:
    """Where the process runtime, run as root, keeps the built-in datastores of `mesh`'s
    droplets on this machine (`meshctl down` removes it unless told to keep data)."""
    return SYSTEM_DATA_ROOT / mesh


BUILTIN_DATASTORES = ("database", "redis")  # the kinds a runtime can run from its own template


class Runnable(Protocol):
    """What says how a service runs: an `InstanceSpec`, or an allocation."""

    @property
    def service_kind(self) -> str: ...
    @property
    def image(self) -> str | None: ...
    @property
    def build_context(self) -> str | None: ...
    @property
    def command(self) -> str | None: ...
    @property
    def process_command(self) -> str | None: ...


def builtin_datastore(runtime: str, service: Runnable) -> str | None:
    """The kind of built-in datastore (PostgreSQL, Redis) `runtime` runs for a service that
    names nothing of its own to run there, else None. Docker runs its template unless an
    image or build is named; the process runtime unless a `process_command` is (or a
    `command` that is not meant to run inside an image). The agent probes those by protocol."""
    if service.service_kind not in BUILTIN_DATASTORES:
        return None
    in_image = service.image is not None or service.build_context is not None
    if runtime == "docker":
        own = in_image
    else:
        own = bool(service.process_command) or (service.command is not None and not in_image)
    return None if own else service.service_kind


def secret_file_variables(names: Iterable[str], directory: str) -> dict[str, str]:
    """`DB_PASSWORD_FILE=<directory>/db_password` for each secret file an instance gets (what
    the seed's `DB_PASSWORD_FILE` style expects; the values stay in the files)."""
    return {f"{name.upper()}_FILE": f"{directory}/{name}" for name in sorted(names)}
