"""A running built-in datastore of the process runtime dumps to a file and takes a dump back
while it runs: a PostgreSQL dump of prod restores into test's database, owned by test's role;
a Redis dump restores values and ttls and leaves nothing else behind; what is not a whole dump
of its kind is refused."""

from __future__ import annotations

import asyncio
import os
import pwd
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshd.agent.reconciler.probes import postgres_ready, redis_command, redis_pong
from plugins.runtimes import InstanceSpec, InstanceStartError
from plugins.runtimes.process import ProcessRuntime
from plugins.runtimes.process.dumps import DumpError, RestoreError
from tests import support
from tests.support.datastores import process_runtime
from tests.support.waiting import until

HOST = "127.0.0.1"
PSQL = "/usr/bin/psql"
ROLES = {"prod": ("user_1a2b3c4d", "shop_prod_1a2b3c4d"), "test": ("user_9f8e7d6c", "shop_test")}
RedisReply = bytes | int | None | list["RedisReply"]


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[ProcessRuntime]:
    async with process_runtime(tmp_path) as made:
        yield made


def ports(count: int) -> list[int]:
    chosen: set[int] = set()
    while len(chosen) < count:
        chosen.add(support.free_port())
    return sorted(chosen)


def database(env: str, port: int, memory_mb: int = 96) -> InstanceSpec:
    role, name = ROLES[env]
    return InstanceSpec(
        project="shop",
        env=env,
        service="database",
        generation=1,
        host=HOST,
        port=port,
        service_kind="database",
        env_vars={"DB_USER": role, "DB_NAME": name},
        secrets={"db_password": f"{env}-password".encode()},
        memory_mb=memory_mb,
    )


def redis(env: str, port: int) -> InstanceSpec:
    return InstanceSpec(
        project="shop",
        env=env,
        service="redis",
        generation=1,
        host=HOST,
        port=port,
        service_kind="redis",
        secrets={"redis_password": f"{env}-secret".encode()},
        memory_mb=32,
    )


async def started(runtime: ProcessRuntime, *specs: InstanceSpec) -> None:
    for spec in specs:
        await runtime.ensure(spec)
    for spec in specs:
        await until(lambda spec=spec: ready(spec), timeout=30, what=f"{spec.key} ready")


async def ready(spec: InstanceSpec) -> bool:
    assert spec.port is not None
    if spec.service_kind == "database":
        return await postgres_ready(HOST, spec.port, 1.0)
    return await redis_pong(HOST, spec.port, spec.secrets["redis_password"], 1.0)


def sql(runtime: ProcessRuntime, spec: InstanceSpec, statement: str) -> str:
    """`statement`'s result as the environment's role sees it, through the server's socket
    (trusted there: no password), as the server's user when we are root."""
    home = runtime._places.home(spec)  # noqa: SLF001
    role, name = spec.env_vars["DB_USER"], spec.env_vars["DB_NAME"]
    user = "postgres" if os.geteuid() == 0 else None
    done = subprocess.run(
        [PSQL, "-X", "-qtA", "-v", "ON_ERROR_STOP=1", "-h", str(home / "run"), "-p", str(spec.port)]
        + ["-U", role, "-d", name, "-c", statement],
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


async def redis_call(spec: InstanceSpec, *command: bytes, db: int = 0) -> RedisReply:
    assert spec.port is not None
    reader, writer = await asyncio.open_connection(HOST, spec.port)
    try:
        writer.write(redis_command(b"AUTH", spec.secrets["redis_password"]))
        writer.write(redis_command(b"SELECT", b"%d" % db) + redis_command(*command))
        await writer.drain()
        assert await reader.readline() == b"+OK\r\n"
        assert await reader.readline() == b"+OK\r\n"
        return await redis_reply(reader)
    finally:
        writer.close()


async def redis_reply(reader: asyncio.StreamReader) -> RedisReply:
    line = await reader.readline()
    tag, rest = line[:1], line[1:-2]
    if tag == b"+":
        return rest
    if tag == b"-":
        raise AssertionError(rest.decode())
    if tag == b":" or int(rest) < 0:
        return int(rest) if tag == b":" else None
    if tag == b"*":
        return [await redis_reply(reader) for _ in range(int(rest))]
    return (await reader.readexactly(int(rest) + 2))[:-2]


async def test_a_prod_database_restores_into_test_owned_by_tests_role_again_and_again(
    runtime: ProcessRuntime, tmp_path: Path
) -> None:
    prod, test = (database(env, port) for env, port in zip(ROLES, ports(2), strict=True))
    await started(runtime, prod, test)
    sql(runtime, prod, "CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL)")
    sql(
        runtime,
        prod,
        "INSERT INTO items (name) SELECT md5(g::text) FROM generate_series(1, 10000) g",
    )
    dumped = tmp_path / "prod.dump"

    await runtime.dump_datastore(prod, dumped)

    assert dumped.stat().st_mode & 0o777 == 0o600
    assert dumped.read_bytes().startswith(b"PGDMP")  # pg_dump's custom format
    for _ in range(3):  # --clean: each restore replaces what the one before made
        await runtime.restore_datastore(test, dumped)
        assert sql(runtime, test, "SELECT count(*) FROM items") == "10000"
        assert sql(runtime, test, "INSERT INTO items (name) VALUES ('new') RETURNING id") == "10001"
        owner = sql(runtime, test, "SELECT tableowner FROM pg_tables WHERE tablename = 'items'")
        assert owner == ROLES["test"][0]
    assert sql(runtime, prod, "SELECT count(*) FROM items") == "10000"  # the source untouched


async def test_a_database_refuses_what_is_not_a_whole_dump_and_keeps_its_rows(
    runtime: ProcessRuntime, tmp_path: Path
) -> None:
    prod, test = (database(env, port) for env, port in zip(ROLES, ports(2), strict=True))
    await started(runtime, prod, test)
    sql(runtime, prod, "CREATE TABLE items AS SELECT g AS n FROM generate_series(1, 10000) g")
    sql(runtime, test, "CREATE TABLE items AS SELECT 7 AS n")
    dumped = tmp_path / "prod.dump"
    await runtime.dump_datastore(prod, dumped)
    garbage, cut = tmp_path / "garbage.dump", tmp_path / "cut.dump"
    garbage.write_bytes(b"SELECT 'not a dump';\n" * 100)
    cut.write_bytes(dumped.read_bytes()[: dumped.stat().st_size * 2 // 3])

    with pytest.raises(RestoreError, match="pg_restore failed"):
        await runtime.restore_datastore(test, garbage)
    with pytest.raises(RestoreError, match="pg_restore failed"):
        await runtime.restore_datastore(test, cut)

    assert sql(runtime, test, "SELECT count(*), sum(n) FROM items") == "1|7"  # rolled back


async def test_a_failed_dump_leaves_no_file_and_an_existing_file_is_not_overwritten(
    runtime: ProcessRuntime, tmp_path: Path
) -> None:
    prod_port, redis_port = ports(2)
    stopped, existing = tmp_path / "stopped.dump", tmp_path / "existing.dump"
    existing.write_bytes(b"keep me")
    await started(runtime, database("prod", prod_port))

    with pytest.raises(DumpError, match="pg_dump failed"):
        await runtime.dump_datastore(database("prod", support.free_port()), stopped)
    with pytest.raises(DumpError, match="talking to Redis|connecting to Redis|admin login"):
        await runtime.dump_datastore(redis("prod", redis_port), stopped)
    with pytest.raises(DumpError, match="cannot create"):
        await runtime.dump_datastore(database("prod", prod_port), existing)
    with pytest.raises(InstanceStartError, match="not a built-in datastore"):
        web = InstanceSpec(project="shop", env="prod", service="web", generation=1, host=HOST)
        await runtime.dump_datastore(web, stopped)

    assert not stopped.exists()
    assert existing.read_bytes() == b"keep me"


async def test_redis_restores_values_and_ttls_and_drops_what_only_the_target_had(
    runtime: ProcessRuntime, tmp_path: Path
) -> None:
    prod, test = (redis(env, port) for env, port in zip(ROLES, ports(2), strict=True))
    await started(runtime, prod, test)
    await redis_call(prod, b"SET", b"greeting", b"hello \x00 binary \xff")
    await redis_call(prod, b"SET", b"visits", b"42")
    await redis_call(prod, b"HSET", b"user:1", b"name", b"Ada", b"plan", b"pro")
    await redis_call(prod, b"RPUSH", b"queue", b"a", b"b", b"c")
    await redis_call(prod, b"SET", b"session", b"s3cr3t", b"PX", b"600000")
    await redis_call(prod, b"SET", b"elsewhere", b"in db 3", db=3)
    await redis_call(test, b"SET", b"only-in-test", b"x")
    dumped = tmp_path / "prod.redis"

    await runtime.dump_datastore(prod, dumped)
    await runtime.restore_datastore(test, dumped)

    assert dumped.stat().st_mode & 0o777 == 0o600
    assert await redis_call(test, b"GET", b"greeting") == b"hello \x00 binary \xff"
    assert await redis_call(test, b"GET", b"visits") == b"42"
    assert await redis_call(test, b"HGETALL", b"user:1") == [b"name", b"Ada", b"plan", b"pro"]
    assert await redis_call(test, b"LRANGE", b"queue", b"0", b"-1") == [b"a", b"b", b"c"]
    ttl = await redis_call(test, b"PTTL", b"session")
    assert isinstance(ttl, int) and 0 < ttl <= 600000
    assert await redis_call(test, b"PTTL", b"visits") == -1
    assert await redis_call(test, b"EXISTS", b"only-in-test") == 0
    assert await redis_call(test, b"DBSIZE") == 5
    assert await redis_call(test, b"GET", b"elsewhere", db=3) == b"in db 3"


async def test_redis_refuses_what_is_not_a_whole_dump_and_stays_as_it_was(
    runtime: ProcessRuntime, tmp_path: Path
) -> None:
    prod, test = (redis(env, port) for env, port in zip(ROLES, ports(2), strict=True))
    await started(runtime, prod, test)
    for n in range(100):
        await redis_call(prod, b"SET", b"key:%d" % n, b"value %d" % n)
    await redis_call(test, b"SET", b"only-in-test", b"x")
    dumped, garbage, cut = (tmp_path / name for name in ("prod.redis", "garbage", "cut"))
    await runtime.dump_datastore(prod, dumped)
    garbage.write_bytes(b"PGDMP not a Redis dump")
    cut.write_bytes(dumped.read_bytes()[:-20])

    with pytest.raises(RestoreError, match="not a Redis dump of meshd"):
        await runtime.restore_datastore(test, garbage)
    with pytest.raises(RestoreError, match="not a Redis dump of meshd: it is cut short"):
        await runtime.restore_datastore(test, cut)
    with pytest.raises(RestoreError, match="reading"):
        await runtime.restore_datastore(test, tmp_path / "missing")

    assert await redis_call(test, b"GET", b"only-in-test") == b"x"
    assert await redis_call(test, b"DBSIZE") == 1


async def test_a_database_of_about_100_mb_dumps_and_restores(
    runtime: ProcessRuntime, tmp_path: Path
) -> None:
    prod, test = (database(env, port, 512) for env, port in zip(ROLES, ports(2), strict=True))
    await started(runtime, prod, test)
    sql(runtime, prod, "CREATE TABLE big (id bigint PRIMARY KEY, body text NOT NULL)")
    sql(
        runtime,
        prod,
        "INSERT INTO big SELECT g, repeat(md5(g::text), 2) FROM generate_series(1, 1000000) g",
    )
    size = int(sql(runtime, prod, "SELECT pg_database_size(current_database())"))
    dumped = tmp_path / "big.dump"

    began = time.perf_counter()
    await runtime.dump_datastore(prod, dumped)
    dumping = time.perf_counter() - began
    began = time.perf_counter()
    await runtime.restore_datastore(test, dumped)
    restoring = time.perf_counter() - began

    assert sql(runtime, test, "SELECT count(*) FROM big") == "1000000"
    print(  # the figures for the record; no test of time
        f"\n100 MB database: size {size / 1e6:.0f} MB, dump {dumped.stat().st_size / 1e6:.0f} MB"
        f" in {dumping:.1f} s, restore in {restoring:.1f} s"
    )
