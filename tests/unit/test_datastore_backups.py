"""A droplet's agent asked to dump a datastore it does not run says why: not yet (it has just
started and read no allocations: the backups leader takes it again later), or not at all."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from meshd.agent.datastore_backups import DatastoreBackups
from protocol.backups import BackupRequest
from tests.support.memstore import MemoryStore


@pytest.mark.parametrize(
    ("loaded", "said"),
    [
        (False, "shop.prod.database is not running on web1 yet (no allocations read)"),
        (True, "shop.prod.database does not run on web1"),
    ],
)
async def test_a_datastore_not_run_here_is_refused_with_the_reason(
    tmp_path: Path, loaded: bool, said: str
) -> None:
    reconciler = SimpleNamespace(allocations={}, loaded=loaded)
    agent = DatastoreBackups(MemoryStore(), reconciler, "web1", None, tmp_path)  # type: ignore[arg-type]
    request = BackupRequest(project="shop", env="prod", service="database", key="k", fence=3)
    with pytest.raises(LookupError) as refused:
        await agent.back_up(request)
    assert str(refused.value) == said
