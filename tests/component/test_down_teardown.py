"""`meshctl down`'s teardown against a droplet frozen while one of its processes holds the
local provider's account lock (a leader's rebuild in flight when `down` froze the mesh): the
lock must not keep `down` waiting; killing the frozen droplet releases it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from meshd.agent.config import mesh_tag
from meshd.cli.down import _teardown
from plugins.procfs import group_alive
from plugins.providers import ProviderContext
from plugins.providers.local import create
from tests.support.waiting import wait_for

HOLDS_THE_LOCK = textwrap.dedent(
    """
    import fcntl, os, sys, time
    from pathlib import Path
    droplet = Path(sys.argv[1])
    account = droplet.parents[1]
    lock = os.open(account / "account.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)  # as a provider call in an agent does
    (droplet / "locked").write_text("yes")
    while True:
        time.sleep(3600)
    """
)


async def test_down_destroys_a_droplet_frozen_while_holding_the_account_lock(
    tmp_path: Path,
) -> None:
    launcher = tmp_path / "launcher.py"
    launcher.write_text(HOLDS_THE_LOCK)
    config: dict[str, Any] = {
        "dir": str(tmp_path / "account"),
        "launcher": [sys.executable, str(launcher)],
    }
    provider = create(ProviderContext(mesh="frozen", config=config))
    record = await provider.create(
        "master", "s-1vcpu-1gb", tags=[mesh_tag("frozen")], user_data="", fence=None
    )
    directory = next((tmp_path / "account" / "droplets").iterdir())
    try:
        wait_for((directory / "locked").exists, timeout=30, what="the lock taken")

        await asyncio.wait_for(_teardown(provider, SimpleNamespace(mesh="frozen")), 60)

        assert await provider.list(mesh_tag("frozen")) == []
        assert not directory.exists()
    finally:
        with contextlib.suppress(FileNotFoundError, KeyError):
            account = json.loads((tmp_path / "account" / "account.json").read_text())
            state = account["droplets"][record.id]
            if group_alive(state["pgid"], state["start_ticks"]):
                os.killpg(state["pgid"], signal.SIGKILL)
