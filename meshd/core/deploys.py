"""The operator's side of git deploys, without I/O: the deploy requests a push and
`meshctl deploy|promote|rollback` send, the branch `meshctl deploy` takes when given none, who
pushed, the git hook as installed with what it needs to reach the mesh, how progress lines
are shown, and release records as `meshctl releases` lists them.

The builder role consumes the requests and answers `DeployProgress` lines on their inbox; this
module decides nothing the builder decides (which environment a push goes to, which release a
promotion takes).
"""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from meshd.core.deploy_refs import DEFAULT_DEPLOY, PROMOTED_ONLY, WILDCARDS
from meshd.core.errors import InputError
from meshd.core.pushes import PushedBranch
from meshd.core.trust import ClientTrust, trust
from protocol.errors import MeshError
from protocol.releases import DeployAction, DeployProgress, DeployRequest, Release

HOOK_MARK = "written by `meshctl hook install`"  # in every hook meshctl writes
DEPLOYER = "deployer"  # the NATS user of git hooks: may only queue requests and hear answers
PUSHER_VARIABLES = ("MESHD_PUSHER", "GIT_PUSHER", "GL_USERNAME", "GITEA_PUSHER_NAME")
_PLACEHOLDER = re.compile(r"@([A-Z_]+)@")


class DeployInputError(InputError):
    """A deploy that cannot be asked for as given (`meshctl` exits 2)."""


def new_request_id() -> str:
    """A fresh request id: 16 hex digits, unique enough to tell requests apart for ever."""
    return secrets.token_hex(8)


def push_request(
    project: str, pushed: PushedBranch, *, progress: str | None, now: float
) -> DeployRequest:
    """The request of one pushed branch: the builder maps its ref to an environment."""
    return DeployRequest(
        project=project,
        action=DeployAction.PUSH,
        env=None,
        ref=pushed.ref,
        sha=pushed.sha,
        requested_by=pushed.pusher,
        requested_at=now,
        request_id=new_request_id(),
        progress=progress,
    )


def operator_request(
    project: str,
    action: DeployAction,
    env: str,
    *,
    requested_by: str,
    now: float,
    progress: str | None,
    ref: str = "",
    release: int = 0,
    cancel: bool = False,
) -> DeployRequest:
    """A request of `meshctl deploy|promote|rollback`: `ref` resolved by the builder."""
    return DeployRequest(
        project=project,
        action=action,
        env=env,
        ref=ref,
        sha="",
        requested_by=requested_by,
        requested_at=now,
        request_id=new_request_id(),
        release=release,
        progress=progress,
        cancel=cancel,
    )


def deploy_ref(env: str, ref: str | None, mapping: Mapping[str, str] = DEFAULT_DEPLOY) -> str:
    """What `meshctl deploy PROJECT ENV [--ref REF]` builds: REF, or the branch the project's
    `deploy` mapping names for ENV. Prod is refused: only a promotion deploys it."""
    if env == PROMOTED_ONLY:
        raise DeployInputError(
            f"{PROMOTED_ONLY} is deployed only by `meshctl promote` (the artifacts of a live "
            "UAT release, never a new build)"
        )
    if ref is not None:
        if not ref.strip():
            raise DeployInputError("--ref is empty; give a branch, a tag or a commit")
        return ref
    pattern = mapping.get(env)
    if not isinstance(pattern, str):
        raise DeployInputError(
            f"no branch deploys to {env} by default (the project's deploy mapping names none); "
            "give one with --ref"
        )
    if any(c in pattern for c in WILDCARDS):
        raise DeployInputError(
            f"{env} takes any branch matching {pattern!r}; give the one to deploy with --ref"
        )
    return pattern


def pusher_from(environ: Mapping[str, str], fallback: str) -> str:
    """Who pushed, as the hook's environment tells: a forced SSH command or a git server's
    variable (`MESHD_PUSHER`, `GIT_PUSHER`, GitLab's, Gitea's), else `fallback` (the account
    the hook runs as)."""
    for name in PUSHER_VARIABLES:
        value = environ.get(name, "").strip()
        if value:
            return value
    return fallback


@dataclass(frozen=True, slots=True)
class HookCredentials:
    """What an installed hook needs to reach the mesh (a 0600 file beside it): the mesh and
    context it was installed from, the servers then, the project, and the `deployer` user's
    password, never the operator's."""

    mesh: str
    context: str
    project: str
    servers: tuple[str, ...]
    password: str
    user: str = DEPLOYER
    tls_ca: str = ""  # the mesh CA's certificate (PEM) where NATS is TLS; empty: plain

    def trust(self) -> ClientTrust | None:
        return trust(self.mesh, self.tls_ca)

    def to_json(self) -> str:
        return json.dumps({**dataclasses.asdict(self), "servers": list(self.servers)}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> HookCredentials:
        try:
            data = json.loads(text)
            return cls(
                mesh=str(data["mesh"]),
                context=str(data["context"]),
                project=str(data["project"]),
                servers=tuple(str(s) for s in data["servers"]),
                password=str(data["password"]),
                user=str(data.get("user", DEPLOYER)),
                tls_ca=str(data.get("tls_ca", "")),
            )
        except (ValueError, KeyError, TypeError) as err:
            raise MeshError(f"read the hook's credentials: {err}") from None


def hook_script(template: str, values: Mapping[str, str]) -> str:
    """The hook `template` (deploy/hooks/post-receive) with each `@NAME@` replaced by the
    shell-quoted `values[NAME]`; every placeholder must have a value and every value a place."""
    used = set(_PLACEHOLDER.findall(template))
    if used != set(values):
        missing = ", ".join(sorted(used - set(values))) or "none"
        unused = ", ".join(sorted(set(values) - used)) or "none"
        raise MeshError(f"render the git hook: values missing: {missing}; unused: {unused}")
    return _PLACEHOLDER.sub(lambda m: shlex.quote(values[m.group(1)]), template)


def progress_text(progress: DeployProgress, label: str | None = None) -> str:
    """One progress line as shown: `[label] line`, with a failed final line marked."""
    text = progress.line
    if progress.final and not progress.ok:
        text = f"failed: {text}"
    return f"[{label}] {text}" if label else text


def newest_first(
    releases: Iterable[Release], env: str | None = None, limit: int | None = None
) -> list[Release]:
    """Releases of `env` (all environments: None), newest first, at most `limit`."""
    chosen = [r for r in releases if env is None or r.env == env]
    chosen.sort(key=lambda r: (r.created_at, r.number), reverse=True)
    return chosen if limit is None else chosen[:limit]


def age(seconds: float) -> str:
    """`42s`, `7m`, `5h`, `3d`: how long ago, coarsely."""
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


def release_row(release: Release, now: float) -> dict[str, str]:
    """A release as `meshctl releases` shows it, one string per column."""
    return {
        "release": f"v{release.number}",
        "env": release.env,
        "action": release.action.value,
        "status": release.status.value,
        "ref": release.ref.removeprefix("refs/heads/") or "-",
        "sha": release.sha[:12] or "-",
        "tag": release.tag or "-",
        "by": release.requested_by or "-",
        "age": age(now - release.created_at),
        "from": f"v{release.from_release}" if release.from_release else "-",
    }
