"""A reconciler whose local copy of allocations cannot be read (a power loss mid-write)
stops nothing while the mesh has not answered: instances keep serving. Real processes."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

import meshd.agent.reconciler
from meshd.agent.reconciler import Reconciler
from meshd.agent.reconciler.instances import spec_for
from meshd.agent.reconciler.local_copy import FILE
from plugins.runtimes import InstanceInfo, InstancePhase, RuntimeContext
from plugins.runtimes.process import ProcessRuntime
from plugins.secrets.env import EnvSecrets
from tests.support import free_port
from tests.support.reconciling import ADDRESS, allocation
from tests.support.waiting import until


class CountingRuntime(ProcessRuntime):
    """The process runtime, counting the reconciler's passes (each lists once)."""

    lists = 0

    async def list(self) -> list[InstanceInfo]:
        self.lists += 1
        return await super().list()


async def test_an_unreadable_local_copy_stops_no_running_instance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(meshd.agent.reconciler, "RESYNC_S", 0.05)
    monkeypatch.setattr(meshd.agent.reconciler, "UNWANTED_GRACE_S", 0.1)
    runtime = CountingRuntime(RuntimeContext(mesh="m", droplet="web1", data_dir=tmp_path / "rt"))
    wanted = allocation(port=free_port(), droplets=("web1",))
    running = await runtime.ensure(spec_for(wanted, 0, ADDRESS, {"web1": ADDRESS}, EnvSecrets()))
    (tmp_path / FILE).write_bytes(b"")  # the copy a power loss left
    reconciler = Reconciler(runtime, "web1", ADDRESS, tmp_path, EnvSecrets())
    task = asyncio.create_task(reconciler.run())
    try:
        await until(lambda: runtime.lists >= 20, "twenty passes, far past the grace period")
        (still,) = await runtime.list()
        assert still.phase is InstancePhase.RUNNING and still.runtime_id == running.runtime_id

        await reconciler.apply({})  # the mesh answers: nothing is allocated here
        await until(lambda: _none_running(runtime), "the unwanted instance stopped", timeout=10)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for info in await runtime.list():
            await runtime.stop(info.key, grace=1.0)
        await runtime.close()


async def _none_running(runtime: ProcessRuntime) -> bool:
    return not [i for i in await runtime.list() if i.phase is InstancePhase.RUNNING]
