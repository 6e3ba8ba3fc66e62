"""A reconciler of droplet `web1` on the process runtime, running real processes on 127.0.0.1,
and what tests ask of it."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from meshd.agent.reconciler import Reconciler
from plugins.runtimes import RuntimeContext
from plugins.runtimes.process import ProcessRuntime
from plugins.secrets.env import EnvSecrets
from protocol.messages import Allocation, NodeStatus
from tests.support.mesh import HELLO

ADDRESS = "127.0.0.1"


def allocation(**more: Any) -> Allocation:
    """A backend of shop/prod running the test web server; `more` overrides any field."""
    values: dict[str, Any] = {
        "project": "shop",
        "env": "prod",
        "service": "backend",
        "generation": 2,
        "droplets": ("web1", "web2", "web3"),
        "port": 8100,
        "spare_port": 8600,
        "image": None,
        "command": f"{sys.executable} {HELLO}",
        "memory_mb": 64,
        "health_path": "/health",
    }
    return Allocation(**{**values, **more})


@pytest.fixture
async def reconciler(tmp_path: Path) -> AsyncIterator[Reconciler]:
    runtime = ProcessRuntime(RuntimeContext(mesh="m", droplet="web1", data_dir=tmp_path / "rt"))
    reconciler = Reconciler(runtime, "web1", ADDRESS, tmp_path, EnvSecrets())
    task = asyncio.create_task(reconciler.run())
    try:
        yield reconciler
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for info in await runtime.list():
            await runtime.stop(info.key, grace=1.0)
        await runtime.close()


def served(reconciler: Reconciler) -> list[int]:
    """Ports a load balancer would use now: healthy instances that are not draining."""
    return sorted(s.port for s in reconciler.statuses() if s.healthy and not s.draining and s.port)


def publish_status(reconciler: Reconciler) -> None:
    """What the agent does after writing the droplet's report: the load balancer knows now."""
    reconciler.published(
        NodeStatus(
            droplet="web1",
            address=ADDRESS,
            incarnation=1,
            size="s-1vcpu-1gb",
            roles=(),
            instances=reconciler.statuses(),
            updated_at=0.0,
        )
    )
