"""`meshctl hook`: git deploys from a bare repository. `install` writes the post-receive hook
(deploy/hooks/post-receive, with this meshctl's absolute path filled in) and the 0600 file of
what it needs to reach the mesh as the NATS user `deployer`; `post-receive` is what the hook
runs: one deploy request per pushed branch, then the builder's progress, printed for git to
show the pusher as `remote:` lines. A mesh that does not answer never fails a push."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path

import click

from meshd.agent.store import StoreError, StoreUnavailable, open_store
from meshd.cli import cause_chain
from meshd.cli.context import Context, NoMeshError, config_home, load_context, who
from meshd.cli.deploy import published_project
from meshd.cli.following import ProgressInbox, send
from meshd.cli.session import connect, read_published
from meshd.cli.tables import console
from meshd.core.deploys import (
    HOOK_MARK,
    HookCredentials,
    hook_script,
    progress_text,
    push_request,
    pusher_from,
)
from meshd.core.errors import InputError
from meshd.core.pushes import PushedBranch, PushInputError, parse_post_receive, parse_push_options
from plugins.fs import atomic_write
from protocol import subjects
from protocol.errors import MeshError

TEMPLATE = Path(__file__).resolve().parents[2] / "deploy" / "hooks" / "post-receive"
HOOK = "post-receive"
CREDENTIALS = "meshd-deploy.json"  # beside the hook, 0600
CONNECT_S = 3.0
FOLLOW_S = 600.0  # the hook stops following (the deploy goes on) after this long


@click.group()
def hook() -> None:
    """Git deploys: make pushes to a bare repository deploy (`hook install`)."""


@hook.command(no_args_is_help=True)
@click.argument("repo", type=click.Path(path_type=Path))
@click.option(
    "--project",
    help="The project pushes deploy. Default: the published project whose git_repo is REPO.",
)
@click.option("--force", is_flag=True, help="Replace a post-receive hook meshctl did not write.")
@click.option("--context", "context_name", metavar="NAME", help="Mesh to talk to.")
def install(repo: Path, project: str | None, force: bool, context_name: str | None) -> None:
    """Make every push of a branch to the bare repository REPO ask the mesh for a deploy.

    Writes REPO's hooks/post-receive (a re-install replaces it) and, beside it, the 0600 file
    of the mesh's servers and the password of the NATS user `deployer`, which may only queue
    deploy requests (never the operator's password). A push then queues one request per
    branch (main goes to uat, other branches to test, by the project's `deploy` mapping;
    tags and deletions deploy nothing) and prints the build's progress until the release is
    live or failed; `git push -o nowait` returns at once. A push always succeeds, even with
    the mesh down: the hook says so and deploys nothing.
    """
    hooks = hooks_directory(repo)
    context = load_context(context_name)
    if not context.deployer_password:
        raise MeshError(
            f"hook install: the context {context.name!r} has no password for the NATS user "
            'deployer (it was made before git deploys); add it as "deployer_password" to '
            f"{config_home() / 'contexts' / context.name}.json (passwords.deployer in a "
            "droplet's user_data)"
        )
    chosen = asyncio.run(_choose_project(context, repo, project))
    target = hooks / HOOK
    if target.exists() and not force and HOOK_MARK not in target.read_text(errors="replace"):
        raise InputError(
            f"{target} is a hook meshctl did not write; move it away, or replace it with --force"
        )
    hooks.mkdir(parents=True, exist_ok=True)
    credentials = hooks / CREDENTIALS
    data = HookCredentials(
        mesh=context.mesh,
        context=context.name,
        project=chosen,
        servers=tuple(context.servers),
        password=context.deployer_password,
        tls_ca=context.tls_ca or "",
    )
    atomic_write(credentials, data.to_json().encode(), 0o600)
    script = hook_script(
        TEMPLATE.read_text(),
        {
            "MESHCTL": str(meshctl_path()),
            "CREDENTIALS": str(credentials),
            "CONFIG_HOME": str(config_home().absolute()),
        },
    )
    atomic_write(target, script.encode(), 0o755)
    _git(repo, "config", "receive.advertisePushOptions", "true")
    console.print(
        f"Pushes to [bold]{repo}[/] now deploy project [bold]{chosen}[/] "
        f"(mesh {context.mesh}); `git push -o nowait` does not wait for the build."
    )


def hooks_directory(repo: Path) -> Path:
    """The hooks directory of the bare repository `repo` (core.hooksPath honoured); an
    InputError when `repo` is not one."""
    if not repo.is_dir():
        raise InputError(
            f"{repo} is not a directory; give a bare git repository (git init --bare -b main)"
        )
    result = _git(repo, "rev-parse", "--is-bare-repository", "--absolute-git-dir", check=False)
    lines = result.stdout.split("\n")
    if result.returncode != 0 or len(lines) < 2:
        reason = result.stderr.strip().splitlines()[-1:] or ["not a git repository"]
        raise InputError(f"{repo} is not a bare git repository: {reason[0]}")
    bare, git_dir = lines[0].strip(), Path(lines[1].strip())
    if bare != "true":
        raise InputError(
            f"{repo} is a work tree's repository, not a bare one; pushes go to a bare "
            "repository (git clone --bare, or git init --bare -b main)"
        )
    if git_dir != repo.resolve():
        raise InputError(f"{repo} is inside the bare repository {git_dir}, not one itself")
    hooks = Path(_git(repo, "rev-parse", "--git-path", "hooks").stdout.strip())
    return hooks if hooks.is_absolute() else repo.resolve() / hooks


def same_repository(git_repo: str, repo: Path) -> bool:
    """Whether a project's `git_repo` names the local repository `repo`."""
    path = Path(git_repo.removeprefix("file://")).expanduser()
    return path.is_absolute() and path.resolve() == repo.resolve()


async def _choose_project(context: Context, repo: Path, project: str | None) -> str:
    store = await connect(context)
    try:
        if project is not None:
            await published_project(store, project)
            return project
        state = await read_published(store)
    finally:
        await store.close()
    projects = state.projects if state else ()
    found = sorted(p.name for p in projects if p.git_repo and same_repository(p.git_repo, repo))
    if len(found) != 1:
        which = "no published project has" if not found else f"{', '.join(found)} all have"
        raise InputError(f"{which} git_repo {str(repo)!r}; name the project with --project")
    return found[0]


def meshctl_path() -> Path:
    """This meshctl, by absolute path: the hook runs with git's environment and PATH."""
    argv0 = Path(sys.argv[0])
    if argv0.name == "meshctl" and argv0.is_file():
        return argv0.absolute()
    beside = Path(sys.executable).parent / "meshctl"
    if beside.is_file():
        return beside
    found = shutil.which("meshctl")
    if found is None:
        raise MeshError("hook install: cannot find the meshctl program for the hook to run")
    return Path(found).absolute()


def _git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    # Without GIT_DIR and friends: meshctl may itself run from a hook.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    result = subprocess.run(
        ["git", "-C", str(repo), *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=30,
    )
    if check and result.returncode != 0:
        raise MeshError(f"git {' '.join(args)} in {repo}: {result.stderr.strip()}")
    return result


# --- what the installed hook runs ----------------------------------------------------------


def say(line: str) -> None:
    """One line for the pusher (git prefixes it with `remote:`), flushed at once."""
    click.echo(f"meshd: {line}")


@hook.command("post-receive", hidden=True)
@click.option(
    "--credentials",
    "credentials_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The hook's credentials file (written by `hook install`).",
)
def post_receive(credentials_path: Path) -> None:
    """Internal: what the installed git hook runs, with git's `<old> <new> <ref>` lines on
    standard input. It exits 0 whatever happens: the push is done already."""
    try:
        branches = parse_post_receive(sys.stdin.read(), pusher_from(os.environ, who()))
        options = parse_push_options(os.environ)
    except PushInputError as err:
        say(f"{err}; nothing deployed")
        return
    if options.unknown:
        say(f"ignored push options: {', '.join(options.unknown)} (known: nowait)")
    if not branches:
        return  # tags (the builder's own UAT tag push) and deletions deploy nothing
    try:
        credentials = HookCredentials.from_json(credentials_path.read_text())
        asyncio.run(_deploy(credentials, branches, options.nowait))
    except (OSError, MeshError) as err:
        say(f"{cause_chain(err)}; nothing more deployed (the push itself is done)")


def _servers(credentials: HookCredentials) -> list[str]:
    """The context's servers when this account can read it (they follow JetStream's moves),
    then those known at install."""
    try:
        known = load_context(credentials.context).servers
    except (NoMeshError, OSError, ValueError, TypeError):
        known = []
    return list(dict.fromkeys([*known, *credentials.servers]))


async def _deploy(
    credentials: HookCredentials, branches: tuple[PushedBranch, ...], nowait: bool
) -> None:
    project = credentials.project
    try:
        store = await open_store(
            _servers(credentials),
            credentials.user,
            credentials.password,
            name=f"git hook {project}",
            timeout=CONNECT_S,
            inbox_prefix=subjects.DEPLOY_INBOX,
            trust=credentials.trust(),
        )
    except StoreUnavailable as err:
        say(f"mesh {credentials.mesh!r} is not reachable ({cause_chain(err)}); nothing deployed")
        say(
            "the commits are in the repository: push again later, or "
            f"`meshctl deploy {project} ENV --ref BRANCH`"
        )
        return
    try:
        async with AsyncExitStack() as stack:
            inbox = None if nowait else await stack.enter_async_context(ProgressInbox(store))
            sent: dict[str, PushedBranch] = {}
            for pushed in branches:
                request = push_request(
                    project, pushed, progress=inbox.subject if inbox else None, now=time.time()
                )
                try:
                    await send(store, request)
                except StoreError as err:
                    say(f"{pushed.branch}: the deploy could not be queued: {cause_chain(err)}")
                    continue
                sent[request.request_id] = pushed
                queued = f"deploy queued (request {request.request_id})"
                say(f"{pushed.branch} {pushed.sha[:12]}: {queued}")
            if inbox is None or not sent:
                if sent:
                    say(
                        "not waiting (push option nowait); "
                        f"`meshctl releases {project}` shows how it goes"
                    )
                return
            say("waiting for the build (`git push -o nowait` does not wait)")
            await _follow(inbox, sent, project)
    finally:
        await store.close()


async def _follow(inbox: ProgressInbox, sent: dict[str, PushedBranch], project: str) -> None:
    several = len(sent) > 1
    finals = await inbox.follow(
        sent,
        lambda p: say(progress_text(p, sent[p.request_id].branch if several else None)),
        FOLLOW_S,
    )
    for request_id, pushed in sent.items():
        if request_id not in finals:
            say(
                f"{pushed.branch}: not finished within {FOLLOW_S / 60:.0f} min; it goes on: "
                f"`meshctl releases {project}`"
            )
