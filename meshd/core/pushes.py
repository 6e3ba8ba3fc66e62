"""What a `git push` to a bare repository asks the mesh to deploy: the branches it moved, read
from the post-receive hook's standard input, and the `git push -o` options it carried, read
from the hook's environment. Pure; `deploy/hooks/post-receive` feeds it and publishes one
deploy request per branch.

Git writes one `<old-sha> <new-sha> <refname>` line per updated ref (githooks(5),
"post-receive"). Only branches deploy: tags are skipped because the builder's own UAT tag push
comes back through the same hook, and deletions because there is nothing left to build.
Push options reach the hook only when the repository sets `receive.advertisePushOptions`;
git then sets `GIT_PUSH_OPTION_COUNT` and `GIT_PUSH_OPTION_0` ... `GIT_PUSH_OPTION_<n-1>`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from protocol.errors import MeshError

BRANCH_PREFIX = "refs/heads/"
# SHA-1 object names are 40 hex digits, SHA-256 ones (`git init --object-format=sha256`) 64.
SHA = re.compile(r"(?:[0-9a-f]{40}|[0-9a-f]{64})\Z")
NOWAIT = "nowait"  # `git push -o nowait`: the hook returns at once instead of following


@dataclass(frozen=True, slots=True)
class PushedBranch:
    """A branch that a push moved to `sha`; `before` is all zeros when the push created it,
    and `pusher` who pushed, when the source tells (empty otherwise)."""

    branch: str
    sha: str
    before: str
    pusher: str = ""

    @property
    def ref(self) -> str:
        return BRANCH_PREFIX + self.branch

    @property
    def created(self) -> bool:
        return is_zero(self.before)


@dataclass(frozen=True, slots=True)
class PushOptions:
    """The `git push -o` options a push carried: `nowait` recognised, the rest kept in
    `unknown` so that the hook can say it ignored them."""

    nowait: bool = False
    unknown: tuple[str, ...] = ()


class PushInputError(MeshError, ValueError):
    """The hook's input is not what git writes; `line_number` (1-based) and `line` name the
    offending line when there is one."""

    def __init__(self, reason: str, *, line_number: int | None = None, line: str = "") -> None:
        self.reason = reason
        self.line_number = line_number
        self.line = line
        where = f"line {line_number} {line!r}: " if line_number is not None else ""
        super().__init__(f"read the pushed refs: {where}{reason}")


def is_sha(value: str) -> bool:
    """Whether `value` is a full object name in lowercase hex, as git writes them."""
    return SHA.match(value) is not None


def is_zero(sha: str) -> bool:
    """Whether `sha` is git's all-zeros name for "no object" (a created or deleted ref)."""
    return set(sha) == {"0"}


def branch_of(ref: str) -> str | None:
    """The branch name of a full ref (`refs/heads/feature/x` -> `feature/x`); None for tags,
    notes and anything else that is not a branch."""
    if not ref.startswith(BRANCH_PREFIX) or len(ref) == len(BRANCH_PREFIX):
        return None
    return ref.removeprefix(BRANCH_PREFIX)


def parse_post_receive(text: str, pusher: str = "") -> tuple[PushedBranch, ...]:
    """The branches a push moved, in git's order, from the post-receive hook's standard input;
    tags, deletions and other refs are left out. Raises `PushInputError` naming the first line
    that is not `<old-sha> <new-sha> <refname>`."""
    branches: list[PushedBranch] = []
    # Split on "\n" and " " only: a ref name may hold other Unicode spaces and line breaks.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line:
            continue
        fields = line.split(" ")
        if len(fields) != 3:
            raise PushInputError(
                "expected '<old-sha> <new-sha> <refname>'", line_number=number, line=line
            )
        before, after, ref = fields
        for name, sha in (("old", before), ("new", after)):
            if not is_sha(sha):
                raise PushInputError(
                    f"the {name} object name {sha!r} is not 40 or 64 lowercase hex digits",
                    line_number=number,
                    line=line,
                )
        if len(before) != len(after):
            raise PushInputError(
                "the old and new object names differ in length (SHA-1 and SHA-256 mixed)",
                line_number=number,
                line=line,
            )
        branch = branch_of(ref)
        if branch is None or is_zero(after):
            continue
        branches.append(PushedBranch(branch=branch, sha=after, before=before, pusher=pusher))
    return tuple(branches)


def parse_push_options(environ: Mapping[str, str]) -> PushOptions:
    """The push options git passed to the hook in `environ` (the hook's environment); none
    when `GIT_PUSH_OPTION_COUNT` is unset. Raises `PushInputError` when the count is not a
    whole number or an option it counts is missing."""
    count_text = environ.get("GIT_PUSH_OPTION_COUNT")
    if count_text is None or not count_text.strip():
        return PushOptions()
    if not re.fullmatch(r"[0-9]+", count_text.strip()):
        raise PushInputError(f"GIT_PUSH_OPTION_COUNT is {count_text!r}, not a whole number")
    nowait = False
    unknown: list[str] = []
    for index in range(int(count_text.strip())):
        name = f"GIT_PUSH_OPTION_{index}"
        if name not in environ:
            raise PushInputError(f"GIT_PUSH_OPTION_COUNT is {count_text} but {name} is not set")
        option = environ[name]
        if option == NOWAIT:
            nowait = True
        else:
            unknown.append(option)
    return PushOptions(nowait=nowait, unknown=tuple(unknown))
