"""A project's release command (migrations), run once before a release rolls out, for every
release that carries the artifact of the project's `release_service` (deploy, push, promote,
rollback alike: a promotion to prod migrates prod's database).

It runs on one droplet that runs the release service in the environment: the first of the
service's allocation (then the survivors that run its displaced instances) that has not
failed, since the secrets it needs are sealed there. The builder asks that droplet's agent
with a core NATS request (`mesh.release.<droplet>`, meshd.agent.release_commands) and waits
for its answer for the command's timeout and a margin; a command that exits non-zero, runs
out of time, cannot start or is not answered for fails the release.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection

from meshd.agent.lease import Term
from meshd.agent.meshview import MeshView
from meshd.agent.store import Store
from meshd.core.spec import ProjectSpec
from protocol import subjects
from protocol.codec import decode, encode
from protocol.errors import ProtocolError
from protocol.messages import Allocation
from protocol.releases import Release, ReleaseCommandAnswer, ReleaseCommandRequest

ANSWER_MARGIN_S = 15.0  # beyond the command's timeout, which the agent keeps
TAIL_LINES = 10  # of its output in the release's detail (`meshctl releases` shows 12 lines)
Say = Callable[[str], Awaitable[None]]


class ReleaseCommandFailed(Exception):
    """The release command failed: `reason` in one line, `tail` the last lines it wrote."""

    def __init__(self, reason: str, tail: str = "") -> None:
        self.reason = reason
        self.tail = tail
        super().__init__(reason)

    @property
    def detail(self) -> str:
        """The failed release's detail: the reason, then the output's last lines."""
        return f"{self.reason}\n{self.tail}".strip()


def release_droplet(allocation: Allocation | None, failed: Collection[str]) -> str | None:
    """Where the release command runs: the first droplet of the release service's allocation
    (with the survivors of displaced instances after its own) that has not failed."""
    if allocation is None:
        return None
    return next((d for d in allocation.droplets if d not in failed), None)


def judged(droplet: str, answer: ReleaseCommandAnswer | None, waited: float) -> float:
    """How long a command that succeeded ran; `ReleaseCommandFailed` for one that did not."""
    if answer is None:
        raise ReleaseCommandFailed(
            f"release command: no answer from {droplet} within {waited:.0f} s"
        )
    tail = "\n".join(answer.output.strip().splitlines()[-TAIL_LINES:])
    if answer.error is not None:
        raise ReleaseCommandFailed(f"release command on {droplet}: {answer.error}", tail)
    if answer.exit_code != 0:
        raise ReleaseCommandFailed(
            f"release command exited with {answer.exit_code} on {droplet}", tail
        )
    return answer.seconds


async def run_release_command(
    store: Store, view: MeshView, term: Term, project: ProjectSpec, release: Release, say: Say
) -> None:
    """Run `project`'s release command for `release` before it rolls out, if it has one;
    `ReleaseCommandFailed` when it fails (the release must not roll out)."""
    command = project.release_command
    if command is None:
        return
    artifact = next((a for a in release.artifacts if a.service == command.service), None)
    if artifact is None:  # back to what publish runs: no artifact to run the command with
        await say(f"release command not run: the release has no artifact of {command.service}")
        return
    key = subjects.alloc_key(project.name, release.env, command.service)
    droplet = release_droplet(view.hosted().get(key), view.failures)
    if droplet is None:
        raise ReleaseCommandFailed(
            f"release command: {command.service} of {project.name} {release.env} runs on no "
            "droplet to run it on"
        )
    request = ReleaseCommandRequest(
        project=project.name,
        env=release.env,
        service=command.service,
        release=release.number,
        artifact=artifact,
        command=command.command,
        timeout=float(command.timeout_s),
        fence=term.fence,
    )
    await say(f"running the release command on {droplet}")
    term.ensure_held()
    wait = command.timeout_s + ANSWER_MARGIN_S
    data = await store.request(subjects.release_command(droplet), encode(request), wait)
    try:
        answer = decode(data, ReleaseCommandAnswer) if data is not None else None
    except ProtocolError as err:
        why = f"release command: unreadable answer from {droplet}: {err}"
        raise ReleaseCommandFailed(why) from None
    seconds = judged(droplet, answer, wait)
    await say(f"release command exited with 0 on {droplet} in {seconds:.1f} s")
