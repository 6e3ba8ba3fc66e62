"""Errors of the agent and the CLI that carry data, on top of `protocol.errors.MeshError`.

`InputErrors` collects every problem found in an operator's files so that one run reports all
of them; the CLI turns it into exit code 2.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from protocol.errors import MeshError


@dataclass(frozen=True, slots=True)
class InputIssue:
    """One problem in one input file.

    `where` is a line (`3`) or `line:column` (1-based), a JSON path like
    `$.projects.web.services`, or empty for the file as a whole; `message` says what is wrong
    and what would be right.
    """

    file: str
    where: str
    message: str

    def __str__(self) -> str:
        where = f":{self.where}" if self.where else ""
        return f"{self.file}{where}: {self.message}"


class InputErrors(MeshError, ValueError):
    """The operator's input is wrong; nothing was changed."""

    def __init__(self, issues: Sequence[InputIssue]) -> None:
        self.issues = tuple(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))


class InputError(MeshError, ValueError):
    """One thing wrong with what the operator asked for, said in one line; nothing was
    changed (exit code 2)."""


@dataclass(frozen=True, slots=True)
class Overcommit:
    """A droplet whose reservations exceed the memory it can give to services."""

    droplet: str
    size: str
    needed_mb: int
    free_mb: int

    def __str__(self) -> str:
        return (
            f"droplet {self.droplet} ({self.size}) needs {self.needed_mb} MB for its services "
            f"but has {self.free_mb} MB free; use a larger size, more servers or smaller "
            f"memory_mb reservations"
        )


class CapacityError(MeshError, ValueError):
    """The desired state does not fit on the droplets it asks for."""

    def __init__(self, overcommits: Sequence[Overcommit]) -> None:
        self.overcommits = tuple(overcommits)
        super().__init__("\n".join(str(o) for o in self.overcommits))
