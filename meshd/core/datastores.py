"""Which allocations a runtime runs as a built-in datastore (PostgreSQL, Redis): those the
agent probes by protocol, changes passwords of in place, and backs up."""

from __future__ import annotations

from plugins.runtimes import builtin_datastore
from protocol.messages import Allocation


def builtin_of(runtime: str, allocation: Allocation) -> str | None:
    """`database` or `redis` when `runtime` runs `allocation` from its own template."""
    return builtin_datastore(
        runtime,
        allocation.service_kind,
        image=allocation.image,
        build_context=allocation.build_context,
        command=allocation.command,
        process_command=allocation.process_command,
    )
