"""The messages of git deploys (docs/deploys.md), written as protocol.messages says.

A `DeployRequest` asks the builder for a release (stream `MESH_DEPLOY`); each release of a
project environment is a numbered `Release` record (KV `mesh_releases`); the release an
environment is to run is its `ReleaseTarget` (KV `mesh_desired/release.<project>.<env>`), which
the scheduler copies into the allocations; `DeployProgress` lines answer on the request's inbox.
A project's release command runs before a release rolls out: the builder sends a
`ReleaseCommandRequest` to one droplet (`mesh.release.<droplet>`), which answers with a
`ReleaseCommandAnswer`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar

from protocol.base import Message


class DeployAction(StrEnum):
    """What a request or release is: a build from git, or old artifacts to a new place."""

    PUSH = "push"  # a branch was pushed: the builder maps it to an environment
    DEPLOY = "deploy"  # `meshctl deploy PROJECT ENV --ref REF`
    PROMOTE = "promote"  # a live UAT release's artifacts to prod
    ROLLBACK = "rollback"  # an earlier release's artifacts, as a new release


class ReleaseStatus(StrEnum):
    QUEUED = "queued"
    BUILDING = "building"
    ROLLING = "rolling"
    LIVE = "live"
    FAILED = "failed"
    SUPERSEDED = "superseded"  # a newer request for the same environment came first
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self not in (ReleaseStatus.QUEUED, ReleaseStatus.BUILDING, ReleaseStatus.ROLLING)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeployRequest(Message):
    """A request for a release (stream `MESH_DEPLOY`, subject `mesh.deploy.<project>`).

    `ref` is a branch (`refs/heads/main` or `main`), a tag or a sha; `sha` what it pointed at
    when pushed ("" for `meshctl deploy`: the builder resolves `ref`). `env` is None for a push
    (the deployment config's `deploy` mapping decides); `release` names the release to promote
    or roll back to (0: the newest live one). Progress lines go to `progress` (an inbox; None:
    nobody follows). `request_id` tells a request's release and progress apart."""

    KIND: ClassVar[str] = "deploy_request"
    VERSION: ClassVar[int] = 2

    project: str
    action: DeployAction
    env: str | None
    ref: str
    sha: str
    requested_by: str
    requested_at: float
    request_id: str
    release: int = 0
    progress: str | None = None
    cancel: bool = False  # stop the queued or running request of `env` instead

    @classmethod
    def upgrade(cls, version: int, fields: dict[str, Any]) -> dict[str, Any]:
        if version != 1:
            raise ValueError(f"no upgrade from version {version}")
        return {
            "project": fields["project"],
            "action": DeployAction.DEPLOY.value,
            "env": fields["env"],
            "ref": fields["git_ref"],
            "sha": "",
            "requested_by": fields["requested_by"],
            "requested_at": fields["requested_at"],
            "request_id": f"v1-{fields['requested_at']}",
        }


@dataclass(frozen=True, slots=True)
class Artifact:
    """One service's built artifact: an object of the artifact store named by the SHA-256 of
    its bytes (`digest`, hex), of `runtime`'s kind (docker: an image archive whose image is
    `image`; process: a tarball of the build context). `source` identifies what it was built
    from (git tree of the context and Dockerfile), so an unchanged context is not rebuilt."""

    service: str
    digest: str
    runtime: str
    size: int
    source: str
    image: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Release(Message):
    """Release `number` of a project environment (KV `mesh_releases/<project>.<env>.<number>`).

    `artifacts` are those of the services built from git; `from_release` is the release whose
    artifacts a promotion or rollback reuses; `tag` the UAT version tag (a prod release: the
    tag of the UAT release it promotes). `detail` says why it failed (a build log's tail);
    `log` names the build log in the artifact store; `snapshots` the post-deployment
    snapshots taken with it live."""

    KIND: ClassVar[str] = "release"

    project: str
    env: str
    number: int
    action: DeployAction
    status: ReleaseStatus
    ref: str
    sha: str
    requested_by: str
    created_at: float
    updated_at: float
    request_id: str
    artifacts: tuple[Artifact, ...] = ()
    config_digest: str = ""
    from_release: int = 0
    tag: str | None = None
    tag_pushed: bool = False
    detail: str | None = None
    log: str | None = None
    live_at: float | None = None
    snapshots: tuple[str, ...] = ()
    fence: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ReleaseTarget(Message):
    """The release a project environment is to run (KV `mesh_desired/release.<project>.<env>`):
    the scheduler gives each service in `artifacts` its artifact, whatever `publish` says."""

    KIND: ClassVar[str] = "release_target"

    project: str
    env: str
    number: int
    artifacts: tuple[Artifact, ...]
    fence: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DeployProgress(Message):
    """One line of a request's progress, on its inbox; `final` ends it (`ok` says how;
    `refused`: the request itself was wrong, nothing was changed)."""

    KIND: ClassVar[str] = "deploy_progress"

    request_id: str
    line: str
    final: bool = False
    ok: bool = True
    release: int = 0
    refused: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ReleaseCommandRequest(Message):
    """Run `command` once with `artifact` (of `service`, release `release` of the project
    environment), as an instance of that service runs on the droplet asked: its environment,
    its secret files, its network; killed after `timeout` seconds. Sent by the builder (its
    term's `fence`) as a core NATS request on `mesh.release.<droplet>`."""

    KIND: ClassVar[str] = "release_command_request"

    project: str
    env: str
    service: str
    release: int
    artifact: Artifact
    command: str
    timeout: float
    fence: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ReleaseCommandAnswer(Message):
    """How a release command went: its `exit_code` (None: it did not run, or ran out of time)
    and the last lines of its `output` (stdout and stderr), `error` saying what went wrong
    around it (no allocation here, an artifact that cannot be loaded, the timeout), `seconds`
    how long it ran."""

    KIND: ClassVar[str] = "release_command_answer"

    exit_code: int | None = None
    output: str = ""
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.error is None
