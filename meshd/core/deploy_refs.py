"""Which environment a pushed branch deploys to. The deployment config's project key `deploy`
maps an environment to a branch pattern; the default `{"uat": "main", "test": "*"}` sends main
to UAT and any other branch to test. A given mapping replaces the default: `{"uat": "main"}`
deploys main and nothing else.

Patterns are `fnmatch`'s (`*`, `?`, `[...]`), matched case-sensitively as git names are; `*`
also matches `/`, so `*` is any branch and `feature/*` any branch under `feature/`. A branch
that a pattern names exactly goes there; otherwise the matching pattern with the most literal
characters wins (`release/*` over `*`), and on a tie UAT. Prod is never deployed by a push,
only by promoting a UAT release, so a mapping naming prod is an input error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from types import MappingProxyType

DEFAULT_DEPLOY: Mapping[str, str] = MappingProxyType({"uat": "main", "test": "*"})
PUSH_ENVIRONMENTS = ("uat", "test")  # in the order that breaks ties
PROMOTED_ONLY = "prod"
WILDCARDS = "*?["
# What git never allows in a branch name (git-check-ref-format(1)): a pattern holding one of
# these could never match, so it is a typo to report rather than a rule that stays silent.
NEVER_IN_BRANCHES = re.compile(r"[\x00-\x20\x7f~^:\\]|\.\.|@\{")
# A bracket expression as fnmatch reads it: `[`, an optional `!`, a leading `]` taken
# literally, then anything up to the next `]`. It stands for one character of several.
BRACKETS = re.compile(r"\[!?\]?[^\]]*\]")


@dataclass(frozen=True, slots=True)
class MappingProblem:
    """One thing wrong with a `deploy` mapping: `environment` is the key at fault (None for
    the mapping as a whole) and `message` says what is wrong and what would be right."""

    environment: str | None
    message: str

    def __str__(self) -> str:
        return f"{self.environment}: {self.message}" if self.environment else self.message


def environment_for(branch: str, mapping: Mapping[str, str] = DEFAULT_DEPLOY) -> str | None:
    """The environment a push to `branch` deploys to, or None when no pattern takes it.
    Only UAT and test are ever answered, whatever `mapping` holds."""
    rules = [(env, mapping[env]) for env in PUSH_ENVIRONMENTS if isinstance(mapping.get(env), str)]
    for env, pattern in rules:
        if pattern == branch:  # git forbids `*?[` in branch names: only a literal is equal
            return env
    matching = [
        (literal_characters(pattern), -rank, env)
        for rank, (env, pattern) in enumerate(rules)
        if any(c in pattern for c in WILDCARDS) and fnmatchcase(branch, pattern)
    ]
    return max(matching)[2] if matching else None


def literal_characters(pattern: str) -> int:
    """How many characters of `pattern` must appear as written: its specificity."""
    return sum(c not in "*?" for c in BRACKETS.sub("", pattern))


def validate_deploy_mapping(value: object) -> list[MappingProblem]:
    """Everything wrong with `value` as a project's `deploy` mapping; empty when it is good.
    An empty mapping is good: no push deploys that project."""
    if not isinstance(value, dict):
        return [
            MappingProblem(
                None,
                f"expected an object of environment to branch pattern, like "
                f'{{"uat": "main", "test": "*"}}, got {_shown(value)}',
            )
        ]
    problems: list[MappingProblem] = []
    seen: dict[str, str] = {}
    for env, pattern in value.items():
        problem = _environment_problem(env) or _pattern_problem(pattern)
        if problem is None and pattern in seen:
            problem = (
                f"the same pattern as {seen[pattern]!r} ({pattern!r}): a branch deploys to one "
                "environment only; give each environment its own pattern"
            )
        if problem is not None:
            problems.append(MappingProblem(str(env), problem))
        elif isinstance(pattern, str):
            seen[pattern] = str(env)
    return problems


def _environment_problem(env: object) -> str | None:
    if env == PROMOTED_ONLY:
        return (
            "prod is never deployed by a push, only by promoting a live UAT release "
            "(meshctl promote); remove it"
        )
    if env not in PUSH_ENVIRONMENTS:
        known = " or ".join(repr(e) for e in PUSH_ENVIRONMENTS)
        return f"{_shown(env)} is not an environment a push deploys to; expected {known}"
    return None


def _pattern_problem(pattern: object) -> str | None:
    if not isinstance(pattern, str) or not pattern:
        return f"expected a branch pattern like 'main' or 'feature/*', got {_shown(pattern)}"
    if pattern.startswith("refs/"):
        return (
            f"{_shown(pattern)} is a full ref; give the branch name as a push names it, "
            "like 'main' for refs/heads/main"
        )
    if NEVER_IN_BRANCHES.search(pattern):
        return (
            f"{_shown(pattern)} can never match a branch: git branch names hold no spaces, "
            "control characters, '~', '^', ':', '\\', '..' or '@{'"
        )
    return None


def _shown(value: object) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):  # not from a JSON document: a caller's own value
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
