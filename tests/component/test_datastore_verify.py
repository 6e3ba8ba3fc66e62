"""The drill of `backup verify` on the process runtime: a PostgreSQL dump loads into a scratch
server of its own, whose tables are counted exactly, and which goes away afterwards, the
running datastore untouched; a Redis dump's keys are counted per database; what does not load
is refused, and leaves neither a directory nor a process behind."""

from __future__ import annotations

import asyncio
import os
import pwd
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshd.agent.reconciler.probes import postgres_ready, redis_command, redis_pong
from plugins.runtimes import InstanceSpec, InstanceStartError
from plugins.runtimes.process import ProcessRuntime
from plugins.runtimes.process.scratch import VerifyError
from tests import support
from tests.support.datastores import process_runtime
from tests.support.waiting import until

HOST = "127.0.0.1"
PSQL = "/usr/bin/psql"
ROLE, NAME = "user_1a2b3c4d", "shop_prod_1a2b3c4d"


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[ProcessRuntime]:
    async with process_runtime(tmp_path) as made:
        yield made


def database(port: int) -> InstanceSpec:
    return InstanceSpec(
        project="shop",
        env="prod",
        service="database",
        generation=1,
        host=HOST,
        port=port,
        service_kind="database",
        env_vars={"DB_USER": ROLE, "DB_NAME": NAME},
        secrets={"db_password": b"prod-password"},
        memory_mb=96,
    )


def redis(port: int) -> InstanceSpec:
    return InstanceSpec(
        project="shop",
        env="prod",
        service="redis",
        generation=1,
        host=HOST,
        port=port,
        service_kind="redis",
        secrets={"redis_password": b"prod-secret"},
        memory_mb=32,
    )


async def started(runtime: ProcessRuntime, spec: InstanceSpec) -> None:
    await runtime.ensure(spec)
    await until(lambda: ready(spec), timeout=30, what=f"{spec.key} ready")


async def ready(spec: InstanceSpec) -> bool:
    assert spec.port is not None
    if spec.service_kind == "database":
        return await postgres_ready(HOST, spec.port, 1.0)
    return await redis_pong(HOST, spec.port, spec.secrets["redis_password"], 1.0)


def sql(runtime: ProcessRuntime, spec: InstanceSpec, statement: str) -> str:
    """`statement`'s result as the environment's role sees it, through the server's socket
    (trusted there: no password), as the server's user when we are root."""
    home = runtime._places.home(spec)  # noqa: SLF001
    user = "postgres" if os.geteuid() == 0 else None
    done = subprocess.run(
        [PSQL, "-X", "-qtA", "-v", "ON_ERROR_STOP=1", "-h", str(home / "run"), "-p", str(spec.port)]
        + ["-U", ROLE, "-d", NAME, "-c", statement],
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        capture_output=True,
        text=True,
        timeout=600,
        user=user,
        group=pwd.getpwnam(user).pw_gid if user else None,
        extra_groups=[] if user else None,
        cwd="/",
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(done.stderr.strip())
    return done.stdout.strip()


async def redis_set(spec: InstanceSpec, key: bytes, value: bytes, db: int = 0) -> None:
    assert spec.port is not None
    reader, writer = await asyncio.open_connection(HOST, spec.port)
    try:
        writer.write(redis_command(b"AUTH", spec.secrets["redis_password"]))
        writer.write(redis_command(b"SELECT", b"%d" % db) + redis_command(b"SET", key, value))
        await writer.drain()
        assert [await reader.readline() for _ in range(3)] == [b"+OK\r\n"] * 3
    finally:
        writer.close()


def leftovers(runtime: ProcessRuntime) -> tuple[list[str], list[str]]:
    """The scratch directories, and the command lines of the processes running in one."""
    root = runtime._places.root  # noqa: SLF001
    directories = sorted(path.name for path in root.glob(".verify-*"))
    scratch = str(root / ".verify-").encode()
    processes = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes() if entry.name.isdigit() else b""
        except OSError:  # it exited meanwhile
            continue
        if scratch in command:
            processes.append(command.replace(b"\0", b" ").decode(errors="replace"))
    return directories, processes


async def test_a_database_dump_loads_into_a_scratch_server_whose_rows_are_counted_exactly(
    runtime: ProcessRuntime, tmp_path: Path
) -> None:
    prod = database(support.free_port())
    await started(runtime, prod)
    sql(runtime, prod, "CREATE TABLE visits AS SELECT g AS n FROM generate_series(1, 1000) g")
    sql(runtime, prod, 'CREATE SCHEMA billing; CREATE TABLE billing."Invoices" (id int)')
    sql(runtime, prod, 'INSERT INTO billing."Invoices" VALUES (1), (2), (3)')
    dumped = tmp_path / "prod.dump"
    await runtime.dump_datastore(prod, dumped)

    found = await runtime.verify_datastore(prod, dumped)

    assert found["tables"] == {"billing.Invoices": 3, "public.visits": 1000}
    assert found["rows"] == 1003
    assert isinstance(found["seconds"], float)
    assert found["seconds"] > 0
    assert leftovers(runtime) == ([], [])
    assert sql(runtime, prod, "SELECT count(*) FROM visits") == "1000"  # the source untouched
    assert sql(runtime, prod, "SELECT count(*) FROM pg_database WHERE datname = 'verify'") == "0"
    assert sql(runtime, prod, "INSERT INTO visits VALUES (1001) RETURNING n") == "1001"


async def test_an_empty_database_dump_verifies_with_no_tables(
    runtime: ProcessRuntime, tmp_path: Path
) -> None:
    prod = database(support.free_port())
    await started(runtime, prod)
    dumped = tmp_path / "empty.dump"
    await runtime.dump_datastore(prod, dumped)

    found = await runtime.verify_datastore(prod, dumped)

    assert (found["tables"], found["rows"]) == ({}, 0)
    assert leftovers(runtime) == ([], [])


async def test_a_cut_or_foreign_database_dump_is_refused_and_leaves_nothing_behind(
    runtime: ProcessRuntime, tmp_path: Path
) -> None:
    prod = database(support.free_port())
    await started(runtime, prod)
    sql(
        runtime,
        prod,
        "CREATE TABLE items AS SELECT md5(g::text) AS n FROM generate_series(1, 20000) g",
    )
    dumped, cut, garbage = (tmp_path / name for name in ("prod.dump", "cut.dump", "garbage"))
    await runtime.dump_datastore(prod, dumped)
    cut.write_bytes(dumped.read_bytes()[: dumped.stat().st_size * 2 // 3])
    garbage.write_bytes(b"SELECT 'not a dump';\n" * 100)

    with pytest.raises(
        VerifyError, match=r"^verify backup shop\.prod\.database: pg_restore failed"
    ):
        await runtime.verify_datastore(prod, cut)
    assert leftovers(runtime) == ([], [])
    with pytest.raises(VerifyError, match="pg_restore failed"):
        await runtime.verify_datastore(prod, garbage)
    assert leftovers(runtime) == ([], [])
    with pytest.raises(VerifyError, match="No such file"):
        await runtime.verify_datastore(prod, tmp_path / "missing")
    assert leftovers(runtime) == ([], [])
    assert sql(runtime, prod, "SELECT count(*) FROM items") == "20000"


async def test_a_redis_dump_has_its_keys_counted_per_database_without_a_server(
    runtime: ProcessRuntime, tmp_path: Path
) -> None:
    prod = redis(support.free_port())
    await started(runtime, prod)
    for key in (b"visits", b"greeting", b"user:1"):
        await redis_set(prod, key, b"value of " + key)
    await redis_set(prod, b"elsewhere", b"in db 2", db=2)
    dumped = tmp_path / "prod.redis"
    await runtime.dump_datastore(prod, dumped)
    await runtime.stop(prod.key)  # the drill needs no Redis running

    found = await runtime.verify_datastore(prod, dumped)

    assert (found["keys"], found["databases"]) == (4, {"0": 3, "2": 1})
    assert isinstance(found["seconds"], float)


async def test_what_is_not_a_whole_redis_dump_of_meshd_is_refused(
    runtime: ProcessRuntime, tmp_path: Path
) -> None:
    prod = redis(support.free_port())
    await started(runtime, prod)
    for n in range(10):
        await redis_set(prod, b"key:%d" % n, b"value")
    dumped, cut, garbage = (tmp_path / name for name in ("prod.redis", "cut", "garbage"))
    await runtime.dump_datastore(prod, dumped)
    cut.write_bytes(dumped.read_bytes()[:-20])
    garbage.write_bytes(b"PGDMP not a Redis dump")

    with pytest.raises(VerifyError, match=r"^verify backup shop\.prod\.redis: not a Redis dump"):
        await runtime.verify_datastore(prod, garbage)
    with pytest.raises(VerifyError, match="not a Redis dump of meshd: it is cut short"):
        await runtime.verify_datastore(prod, cut)
    with pytest.raises(VerifyError, match="No such file"):
        await runtime.verify_datastore(prod, tmp_path / "missing")
    with pytest.raises(InstanceStartError, match="not a built-in datastore"):
        web = InstanceSpec(project="shop", env="prod", service="web", generation=1, host=HOST)
        await runtime.verify_datastore(web, dumped)
