"""Log lines on the wire (stream `MESH_LOGS`), written as protocol.messages says.

An agent ships what it reads in batches: the new lines of one source (an instance's output,
its own log, nginx's) since the last batch, each with the time it was read or, where the
source says (Docker's json-file), the time it was written. `dropped` counts the lines of the
source the shipper left out just before these (over the project's byte budget, or while the
stream was unavailable and its buffer full): a reader shows the gap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from protocol.base import Message


@dataclass(frozen=True, slots=True, kw_only=True)
class LogLine:
    at: float
    text: str
    stream: str = "out"  # out or err, where the source tells them apart


@dataclass(frozen=True, slots=True, kw_only=True)
class LogBatch(Message):
    """New lines of one source. An instance's: `project`, `env`, `service` and `slot`; the
    mesh's own: `component` (`agent`, `nginx`) and the others empty."""

    KIND: ClassVar[str] = "log_batch"

    droplet: str
    lines: tuple[LogLine, ...]
    project: str = ""
    env: str = ""
    service: str = ""
    slot: int = 0
    component: str = ""
    dropped: int = 0
    batch_id: str = ""  # unique in the mesh: a forwarded line's id is `<batch_id>-<index>`
