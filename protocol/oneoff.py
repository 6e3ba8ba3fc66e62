"""One-off commands beside a running instance (`meshctl exec`, docs/exec.md), on the wire.

`meshctl exec` subscribes to `<output>.out` (raw output bytes, in order) and `<output>.end`
(`OneOffEnd`), then asks the agent of a droplet that runs the service (core NATS request on
`mesh.oneoff.<droplet>`, `OneOffRequest`). The agent answers at once (`OneOffStarted`: started,
or why not), runs the command as the service's instance runs (its artifact, environment and
secret files), publishes what it writes, then its end. A message on `<output>.cancel` stops it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from protocol.base import Message


@dataclass(frozen=True, slots=True, kw_only=True)
class OneOffRequest(Message):
    KIND: ClassVar[str] = "oneoff_request"

    project: str
    env: str
    service: str
    command: str  # split like a shell would; no shell runs it
    timeout: float
    output: str  # the subjects' prefix (`subjects.oneoff_output`)
    requested_by: str


@dataclass(frozen=True, slots=True, kw_only=True)
class OneOffStarted(Message):
    KIND: ClassVar[str] = "oneoff_started"

    error: str | None = None  # None: it runs, its output follows


@dataclass(frozen=True, slots=True, kw_only=True)
class OneOffEnd(Message):
    """How it ended: its `exit_code` (None: it could not start, ran out of time or was
    cancelled, `error` says which), `seconds` how long it ran."""

    KIND: ClassVar[str] = "oneoff_end"

    exit_code: int | None = None
    error: str | None = None
    seconds: float = 0.0
