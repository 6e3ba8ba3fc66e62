"""The `local` provider with real processes: each droplet runs a tiny launcher that binds a TCP
listener on its droplet's address and starts one child, so a test can see the address work and
the whole process group die."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import stat
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from plugins.procfs import group_alive
from plugins.providers import (
    DropletNotFound,
    DropletStartError,
    DropletStatus,
    Fence,
    ProviderConfigError,
    ProviderContext,
    ProviderError,
    SnapshotNotFound,
    Snapshotter,
    StaleFence,
    UnknownProviderError,
    load_provider,
)
from plugins.providers.local import LocalProvider, create

ROOT = Path(__file__).resolve().parents[2]
P5 = Fence("provisioner", 5)

LAUNCHER = textwrap.dedent(
    """
    import json, os, socket, subprocess, sys, time
    from pathlib import Path

    droplet = Path(sys.argv[1])
    spec = json.loads((droplet / "droplet.json").read_text())
    listener = socket.socket()
    listener.bind((spec["address"], 0))
    listener.listen()
    child = subprocess.Popen(["sleep", "600"])
    ready = f"{os.getpid()} {child.pid} {listener.getsockname()[1]}"
    (droplet / "launcher.tmp").write_text(ready)
    os.replace(droplet / "launcher.tmp", droplet / "launcher.pid")
    print("droplet", spec["name"], "up on", spec["address"], flush=True)
    while True:
        time.sleep(3600)
    """
)

FAILING_LAUNCHER = textwrap.dedent(
    """
    import sys
    print("nats-server: address already in use", flush=True)
    sys.exit(3)
    """
)

OTHER_PROCESS = textwrap.dedent(
    """
    import asyncio, json, sys
    from plugins.providers import ProviderContext
    from plugins.providers.local import create

    async def main():
        provider = create(ProviderContext(mesh="test", config=json.loads(sys.argv[1])))
        records = await asyncio.gather(
            *(provider.create(f"far-{i}", "s-1", tags=["far"], user_data="", fence=None)
              for i in range(3))
        )
        print(json.dumps([[r.id, r.address] for r in records]))

    asyncio.run(main())
    """
)


@dataclass(frozen=True)
class Launched:
    pid: int
    child_pid: int
    port: int


@pytest.fixture
def account(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A provider config on a fresh account; afterwards every droplet left in it is killed."""
    launcher = tmp_path / "launcher.py"
    launcher.write_text(LAUNCHER)
    root = tmp_path / "account"
    yield {"dir": str(root), "launcher": [sys.executable, str(launcher)]}
    with contextlib.suppress(FileNotFoundError):
        for droplet in json.loads((root / "account.json").read_text())["droplets"].values():
            pgid, start_ticks = droplet["pgid"], droplet["start_ticks"]
            if pgid and group_alive(pgid, start_ticks):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)


def provider_on(config: dict[str, Any]) -> LocalProvider:
    return create(ProviderContext(mesh="test", config=config))


def droplet_dir(config: dict[str, Any], name: str, droplet_id: str) -> Path:
    return Path(config["dir"]) / "droplets" / f"{name}-{droplet_id}"


async def launched(directory: Path, previous: Launched | None = None) -> Launched:
    """Wait until the launcher in `directory` (a new one, if `previous`) reports its pids."""
    for _ in range(500):
        with contextlib.suppress(FileNotFoundError, ValueError):
            pid, child_pid, port = map(int, (directory / "launcher.pid").read_text().split())
            if previous is None or pid != previous.pid:
                return Launched(pid, child_pid, port)
        await asyncio.sleep(0.02)
    raise AssertionError(f"launcher in {directory} never became ready")


def answers(address: str, port: int) -> bool:
    with socket.create_connection((address, port), timeout=2):
        return True


def is_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def action_log(config: dict[str, Any]) -> list[dict[str, Any]]:
    lines = (Path(config["dir"]) / "actions.log").read_text().splitlines()
    return [json.loads(line) for line in lines]


async def test_create_gives_active_droplets_on_distinct_addresses_of_one_block(
    account: dict[str, Any],
) -> None:
    provider = provider_on(account)
    web = await provider.create(
        "web1", "s-1vcpu-1gb", tags=["mesh:test"], user_data="#!/bin/sh\necho hi\n", fence=None
    )
    db = await provider.create("db1", "s-2vcpu-2gb", tags=["mesh:test"], user_data="", fence=None)

    assert (web.status, db.status) == (DropletStatus.ACTIVE, DropletStatus.ACTIVE)
    assert web.id != db.id
    assert web.address != db.address
    assert web.address.rpartition(".")[0] == db.address.rpartition(".")[0]
    assert web.address.startswith("127.") and not web.address.endswith(".1")
    directory = droplet_dir(account, "web1", web.id)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    spec = json.loads((directory / "droplet.json").read_text())
    assert spec == {
        "id": web.id,
        "name": "web1",
        "size": "s-1vcpu-1gb",
        "address": web.address,
        "tags": ["mesh:test"],
        "mesh": "test",
    }
    assert (directory / "user_data").read_text() == "#!/bin/sh\necho hi\n"
    assert stat.S_IMODE((directory / "user_data").stat().st_mode) == 0o600
    ready = await launched(directory)
    assert answers(web.address, ready.port)
    await provider.destroy(web.id, fence=None)
    await provider.destroy(db.id, fence=None)


async def test_list_filters_by_tag_and_get_finds_one(account: dict[str, Any]) -> None:
    provider = provider_on(account)
    web = await provider.create("web1", "s-1", tags=["web", "prod"], user_data="", fence=None)
    db = await provider.create("db1", "s-1", tags=["db", "prod"], user_data="", fence=None)

    assert [r.name for r in await provider.list("web")] == ["web1"]
    assert sorted(r.name for r in await provider.list("prod")) == ["db1", "web1"]
    assert sorted(r.name for r in await provider.list()) == ["db1", "web1"]
    assert await provider.list("nope") == []
    assert await provider.get(db.id) == db
    await provider.destroy(web.id, fence=None)
    await provider.destroy(db.id, fence=None)


async def test_create_refuses_a_name_that_is_taken(account: dict[str, Any]) -> None:
    provider = provider_on(account)
    web = await provider.create("web1", "s-1", tags=[], user_data="", fence=None)

    with pytest.raises(ProviderError, match="already has this name"):
        await provider.create("web1", "s-1", tags=[], user_data="", fence=None)
    assert [r.id for r in await provider.list()] == [web.id]
    await provider.destroy(web.id, fence=None)


async def test_power_off_kills_the_whole_group_and_spares_other_droplets(
    account: dict[str, Any],
) -> None:
    provider = provider_on(account)
    web = await provider.create("web1", "s-1", tags=[], user_data="", fence=None)
    db = await provider.create("db1", "s-1", tags=[], user_data="", fence=None)
    web_run = await launched(droplet_dir(account, "web1", web.id))
    db_run = await launched(droplet_dir(account, "db1", db.id))

    await provider.power_off(web.id, fence=None)
    await provider.power_off(web.id, fence=None)  # idempotent

    assert is_gone(web_run.pid) and is_gone(web_run.child_pid)
    assert not is_gone(db_run.pid) and not is_gone(db_run.child_pid)
    assert (await provider.get(web.id)).status is DropletStatus.OFF
    assert (await provider.get(db.id)).status is DropletStatus.ACTIVE
    await provider.destroy(web.id, fence=None)
    await provider.destroy(db.id, fence=None)


async def test_power_on_brings_a_droplet_back_on_the_same_address(
    account: dict[str, Any],
) -> None:
    provider = provider_on(account)
    web = await provider.create("web1", "s-1", tags=[], user_data="", fence=None)
    first = await launched(droplet_dir(account, "web1", web.id))
    await provider.power_off(web.id, fence=None)

    await provider.power_on(web.id, fence=None)
    await provider.power_on(web.id, fence=None)  # idempotent: no second launcher

    again = await provider.get(web.id)
    second = await launched(droplet_dir(account, "web1", web.id), previous=first)
    assert again.status is DropletStatus.ACTIVE
    assert again.address == web.address
    assert answers(web.address, second.port)
    await provider.destroy(web.id, fence=None)
    assert is_gone(second.pid) and is_gone(second.child_pid)


async def test_destroy_removes_the_directory_and_the_record_once(
    account: dict[str, Any],
) -> None:
    provider = provider_on(account)
    web = await provider.create("web1", "s-1", tags=[], user_data="", fence=None)
    run = await launched(droplet_dir(account, "web1", web.id))

    await provider.destroy(web.id, fence=None)

    assert not droplet_dir(account, "web1", web.id).exists()
    assert is_gone(run.pid) and is_gone(run.child_pid)
    assert await provider.list() == []
    with pytest.raises(DropletNotFound):
        await provider.get(web.id)
    with pytest.raises(DropletNotFound) as err:
        await provider.destroy(web.id, fence=None)
    assert str(err.value) == f"destroy droplet {web.id}: no droplet with id '{web.id}'"


async def test_a_snapshot_is_a_copy_and_a_rebuild_starts_from_it_or_from_the_base_image(
    account: dict[str, Any],
) -> None:
    provider = provider_on(account)
    assert isinstance(provider, Snapshotter)
    web = await provider.create("web1", "s-1", tags=["mesh"], user_data="{}", fence=None)
    directory = droplet_dir(account, "web1", web.id)
    first = await launched(directory)
    (directory / "agent").mkdir()
    (directory / "agent" / "allocations.msgpack").write_bytes(b"deployed")
    (directory / "agent.log").write_text("logs are not state\n")

    snapshot = await provider.snapshot(web.id, "web1-deploy-1", fence=Fence("snapshots", 4))
    (directory / "agent" / "allocations.msgpack").write_bytes(b"changed after the snapshot")
    assert [s.id for s in await provider.list_snapshots()] == [snapshot.id]
    assert (snapshot.name, snapshot.droplet_id) == ("web1-deploy-1", web.id)
    assert snapshot.size_gb > 0

    # From the snapshot: its files, not the dead droplet's later ones; no logs, no pid files.
    rebuilt = await provider.rebuild(web.id, fence=Fence("recovery", 5), snapshot_id=snapshot.id)
    new_dir = droplet_dir(account, "web1", rebuilt.id)
    second = await launched(new_dir, previous=first)
    assert (rebuilt.name, rebuilt.address, rebuilt.tags) == ("web1", web.address, ("mesh",))
    assert rebuilt.id != web.id and not directory.exists()
    assert is_gone(first.pid) and is_gone(first.child_pid)
    assert (new_dir / "agent" / "allocations.msgpack").read_bytes() == b"deployed"
    assert not (new_dir / "agent.log").exists()
    assert (new_dir / "user_data").read_text() == "{}"

    # From the base image: the user data alone (the mesh deploys onto it).
    base = await provider.rebuild(rebuilt.id, fence=Fence("recovery", 6))
    base_dir = droplet_dir(account, "web1", base.id)
    await launched(base_dir, previous=second)
    assert sorted(p.name for p in base_dir.iterdir() if p.name != "launcher.pid") == [
        "console.log",
        "droplet.json",
        "user_data",
    ]

    with pytest.raises(SnapshotNotFound):
        await provider.rebuild(base.id, fence=Fence("recovery", 7), snapshot_id="no-such-snapshot")
    assert (await provider.get(base.id)).status is DropletStatus.ACTIVE  # refused: untouched
    with pytest.raises(StaleFence):
        await provider.snapshot(base.id, "web1-deploy-2", fence=Fence("snapshots", 3))
    await provider.delete_snapshot(snapshot.id, fence=Fence("snapshots", 7))
    assert await provider.list_snapshots() == []
    assert list((Path(account["dir"]) / "snapshots").iterdir()) == []
    with pytest.raises(SnapshotNotFound):
        await provider.delete_snapshot(snapshot.id, fence=Fence("snapshots", 7))
    with pytest.raises(ProviderError, match="snapshot name"):
        await provider.snapshot(base.id, "no spaces/allowed", fence=None)
    await provider.destroy(base.id, fence=None)


async def test_two_providers_on_one_account_share_droplets_and_never_share_an_address(
    account: dict[str, Any],
) -> None:
    first, second = provider_on(account), provider_on(account)
    await first.list()  # nothing yet, and no account file either
    far = asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        OTHER_PROCESS,
        json.dumps(account),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    other_process = await far

    records = await asyncio.gather(
        *(
            provider.create(f"{provider_name}-{i}", "s-1", tags=["near"], user_data="", fence=None)
            for provider_name, provider in (("first", first), ("second", second))
            for i in range(3)
        )
    )
    out, _ = await other_process.communicate()

    assert other_process.returncode == 0
    far_records = json.loads(out)
    ids = [r.id for r in records] + [item[0] for item in far_records]
    addresses = [r.address for r in records] + [item[1] for item in far_records]
    assert len(set(ids)) == len(ids) == 9
    assert len(set(addresses)) == len(addresses) == 9
    seen_by_second = await second.list()
    assert {r.id for r in seen_by_second} == set(ids)
    assert {r.status for r in seen_by_second} == {DropletStatus.ACTIVE}
    for record in seen_by_second:
        await second.destroy(record.id, fence=None)
    assert await first.list() == []


async def test_a_stale_fence_is_refused_and_a_higher_one_is_logged(
    account: dict[str, Any],
) -> None:
    provider = provider_on(account)
    web = await provider.create("web1", "s-1", tags=[], user_data="", fence=P5)

    with pytest.raises(StaleFence) as err:
        await provider.destroy(web.id, fence=Fence("provisioner", 3))
    assert (err.value.fence, err.value.seen) == (Fence("provisioner", 3), 5)
    assert str(err.value) == (
        f"destroy droplet {web.id}: stale fence provisioner@3: provisioner fence 5 was already seen"
    )
    assert (await provider.get(web.id)).status is DropletStatus.ACTIVE

    # Roles are compared with themselves only: an older recovery term still acts after a newer
    # provisioner term did.
    await provider.power_off(web.id, fence=Fence("recovery", 2))
    await provider.resize(web.id, "s-2", fence=P5)
    await provider.power_off(web.id, fence=Fence("recovery", 7))
    with pytest.raises(StaleFence):
        await provider.power_on(web.id, fence=Fence("recovery", 6))
    await provider.power_on(web.id, fence=None)  # an operator's action has no fence

    log = [
        (e["action"], e["droplet"], e["role"], e["fence"], e["outcome"])
        for e in action_log(account)
    ]
    assert log == [
        ("create", web.id, "provisioner", 5, "done"),
        ("destroy", web.id, "provisioner", 3, "refused: stale fence"),
        ("power_off", web.id, "recovery", 2, "done"),
        ("resize", web.id, "provisioner", 5, "done"),
        ("power_off", web.id, "recovery", 7, "done"),
        ("power_on", web.id, "recovery", 6, "refused: stale fence"),
        ("power_on", web.id, None, None, "done"),
    ]
    assert (await provider.get(web.id)).size == "s-2"
    await provider.destroy(web.id, fence=Fence("provisioner", 8))


async def test_a_launcher_that_exits_at_once_fails_with_its_console_output(
    account: dict[str, Any], tmp_path: Path
) -> None:
    failing = tmp_path / "failing.py"
    failing.write_text(FAILING_LAUNCHER)
    provider = provider_on({**account, "launcher": [sys.executable, str(failing)]})

    with pytest.raises(DropletStartError) as err:
        await provider.create("web1", "s-1", tags=[], user_data="", fence=None)

    assert "nats-server: address already in use" in str(err.value)
    assert (await provider.get(err.value.droplet_id)).status is DropletStatus.OFF
    await provider.destroy(err.value.droplet_id, fence=None)


async def test_a_missing_launcher_is_a_provider_error_and_leaves_nothing_behind(
    account: dict[str, Any], tmp_path: Path
) -> None:
    provider = provider_on({**account, "launcher": [str(tmp_path / "no-such-launcher")]})

    with pytest.raises(ProviderError, match="cannot run"):
        await provider.create("web1", "s-1", tags=[], user_data="", fence=None)

    assert await provider.list() == []
    assert list((Path(account["dir"]) / "droplets").iterdir()) == []


async def test_the_account_keeps_its_block_and_a_configured_block_is_used(
    account: dict[str, Any], tmp_path: Path
) -> None:
    provider = provider_on(account)
    web = await provider.create("web1", "s-1", tags=[], user_data="", fence=None)
    block = json.loads((Path(account["dir"]) / "account.json").read_text())["block"]
    assert web.address == f"{block}.2"
    await provider.destroy(web.id, fence=None)

    fixed = provider_on({**account, "dir": str(tmp_path / "fixed"), "block": "127.77.3"})
    db = await fixed.create("db1", "s-1", tags=[], user_data="", fence=None)
    assert db.address == "127.77.3.2"
    await fixed.destroy(db.id, fence=None)


def test_create_refuses_a_bad_configuration(account: dict[str, Any]) -> None:
    for bad in ({"launcher": []}, {"block": "10.0.0"}, {"colour": "blue"}):
        with pytest.raises(ProviderConfigError, match="configure provider .local."):
            provider_on({**account, **bad})


def test_load_provider_names_the_known_providers_for_an_unknown_one() -> None:
    with pytest.raises(UnknownProviderError, match="known providers: digitalocean, local"):
        load_provider("nope", ProviderContext(mesh="test"))


def test_load_provider_creates_the_local_provider(account: dict[str, Any]) -> None:
    provider = load_provider("local", ProviderContext(mesh="test", config=account))
    assert isinstance(provider, LocalProvider) and provider.name == "local"
