"""The process runtime's built-in datastores are real: PostgreSQL and Redis from the host's
packages, run as their own users with data a 0700 state home cannot hide from them, healthy by
their own protocol, their data kept across restarts, and the current password set at each
start (a rotated secret takes effect in the datastore before any client uses it)."""

from __future__ import annotations

import asyncio
import os
import pwd
import signal
import subprocess
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from meshd.agent.reconciler.probes import postgres_ready, redis_command, redis_pong
from plugins.runtimes import (
    InstancePhase,
    InstanceSpec,
    InstanceStartError,
)
from plugins.runtimes.process import ProcessRuntime
from tests import support
from tests.support.datastores import process_runtime
from tests.support.waiting import until

HOST = "127.0.0.1"
PSQL = "/usr/bin/psql"


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[ProcessRuntime]:
    async with process_runtime(tmp_path) as made:
        yield made


def database(port: int, password: bytes, generation: int = 1) -> InstanceSpec:
    return InstanceSpec(
        project="shop",
        env="prod",
        service="database",
        generation=generation,
        host=HOST,
        port=port,
        service_kind="database",
        env_vars={"DB_USER": "user_1a2b3c4d", "DB_NAME": "shop_prod_1a2b3c4d"},
        secrets={"db_password": password + b"\n"},
        memory_mb=96,
        # what the docker runtime runs (the examples' stand-in): not what runs here
        build_context="app",
        command="serve DB_PORT",
    )


def redis(port: int, password: bytes, generation: int = 1) -> InstanceSpec:
    return InstanceSpec(
        project="shop",
        env="prod",
        service="redis",
        generation=generation,
        host=HOST,
        port=port,
        service_kind="redis",
        secrets={"redis_password": password},
        memory_mb=32,
    )


def sql(port: int, password: bytes, statement: str) -> str:
    """`statement`'s result as the application's role sees it, over TCP with the password."""
    if not os.path.exists(PSQL):
        support.unavailable("psql not installed (apt: postgresql-client)")
    done = subprocess.run(
        [PSQL, "-h", HOST, "-p", str(port), "-U", "user_1a2b3c4d", "-d", "shop_prod_1a2b3c4d"]
        + ["-tA", "-v", "ON_ERROR_STOP=1", "-c", statement],
        env={"PGPASSWORD": password.decode(), "PATH": "/usr/bin:/bin", "PGCONNECT_TIMEOUT": "5"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(done.stderr.strip())
    return done.stdout.strip()


async def redis_call(port: int, password: bytes, *command: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(redis_command(b"AUTH", password) + redis_command(*command))
        await writer.drain()
        assert await reader.readline() == b"+OK\r\n"
        return await reader.readline()
    finally:
        writer.close()


async def test_postgresql_runs_as_its_user_keeps_rows_and_takes_a_new_password_at_start(
    runtime: ProcessRuntime,
) -> None:
    port = support.free_port()
    assert not await postgres_ready(HOST, port, 1.0)  # nothing listens: not healthy
    started = await runtime.ensure(database(port, b"first'pass"))
    await until(lambda: postgres_ready(HOST, port, 1.0), timeout=30, what="PostgreSQL ready")
    owner = Path(f"/proc/{started.runtime_id}").stat().st_uid
    assert owner == (os.geteuid() if os.geteuid() != 0 else pwd.getpwnam("postgres").pw_uid)
    sql(port, b"first'pass", "CREATE TABLE rows (n int); INSERT INTO rows VALUES (1), (2)")

    # A new generation with a rotated secret: the role's password is the new one at once.
    await runtime.ensure(database(port, b"second", generation=2))
    await until(lambda: postgres_ready(HOST, port, 1.0), timeout=30, what="PostgreSQL again")
    assert sql(port, b"second", "SELECT sum(n) FROM rows") == "3"
    with pytest.raises(AssertionError, match="password authentication failed"):
        sql(port, b"first'pass", "SELECT 1")

    log = (runtime._root / "shop.prod.database" / "output.log").read_text()  # noqa: SLF001
    assert "first'pass" not in log and "second" not in log
    assert "received fast shutdown request" in log  # stopped with SIGINT, not made to wait


async def test_a_socket_lock_a_dead_machine_left_does_not_keep_postgresql_down(
    runtime: ProcessRuntime,
) -> None:
    port = support.free_port()
    started = await runtime.ensure(database(port, b"pw"))
    await until(lambda: postgres_ready(HOST, port, 1.0), timeout=30, what="PostgreSQL ready")
    argv = Path(f"/proc/{started.runtime_id}/cmdline").read_bytes().decode().split("\0")
    lock = Path(argv[argv.index("-k") + 1]) / f".s.PGSQL.{port}.lock"
    # The machine dies with the server; rebuilt, another process has the pid its lock names.
    os.kill(int(started.runtime_id), signal.SIGKILL)

    async def down() -> bool:
        return not await postgres_ready(HOST, port, 1.0)

    await until(down, timeout=30, what="the server gone")
    assert lock.exists()
    # A process of the server's own user (another datastore, on a droplet) has that pid now.
    other = await asyncio.create_subprocess_exec("sleep", "60", user=lock.parent.stat().st_uid)
    try:
        lock.write_text(f"{other.pid}\n")

        await runtime.ensure(database(port, b"pw", generation=2))

        await until(lambda: postgres_ready(HOST, port, 1.0), timeout=30, what="PostgreSQL again")
    finally:
        other.kill()
        await other.wait()


async def test_redis_answers_its_password_only_and_keeps_what_it_was_told(
    runtime: ProcessRuntime,
) -> None:
    port = support.free_port()
    password = b'a "quoted" \\ secret'
    await runtime.ensure(redis(port, password))
    await until(lambda: redis_pong(HOST, port, password, 1.0), timeout=30, what="Redis ready")
    assert not await redis_pong(HOST, port, b"wrong", 1.0)
    assert not await redis_pong(HOST, port, None, 1.0)  # NOAUTH is not healthy
    assert await redis_call(port, password, b"INCR", b"visits") == b":1\r\n"

    await runtime.ensure(redis(port, password, generation=2))  # stopped and started again
    await until(lambda: redis_pong(HOST, port, password, 1.0), timeout=30, what="Redis again")
    assert await redis_call(port, password, b"INCR", b"visits") == b":2\r\n"  # the AOF kept it
    info = next(i for i in await runtime.list() if i.key == "shop.prod.redis")
    assert info.phase is InstancePhase.RUNNING
    command_line = Path(f"/proc/{info.runtime_id}/cmdline").read_bytes()
    assert b"secret" not in command_line  # the configuration came on stdin


async def test_a_datastore_without_its_password_or_port_does_not_start(
    runtime: ProcessRuntime,
) -> None:
    with pytest.raises(InstanceStartError, match="db_password is not given"):
        await runtime.ensure(replace(database(support.free_port(), b"x"), secrets={}))
    with pytest.raises(InstanceStartError, match="line break"):
        await runtime.ensure(redis(support.free_port(), b"two\nlines"))
    with pytest.raises(InstanceStartError, match="needs a port"):
        await runtime.ensure(replace(redis(1, b"x"), port=None))


async def test_passwords_change_without_a_restart_and_open_connections_stay(
    runtime: ProcessRuntime,
) -> None:
    db_port, redis_port = support.free_port(), support.free_port()
    started = await runtime.ensure(database(db_port, b"old-db"))
    await runtime.ensure(redis(redis_port, b"old-redis"))
    await until(lambda: postgres_ready(HOST, db_port, 1.0), timeout=30, what="PostgreSQL ready")
    await until(lambda: redis_pong(HOST, redis_port, b"old-redis", 1.0), what="Redis ready")
    held = subprocess.Popen(  # noqa: ASYNC220 - a client holding a session, as a pool would
        [PSQL, "-h", HOST, "-p", str(db_port), "-U", "user_1a2b3c4d", "-d", "shop_prod_1a2b3c4d"]
        + ["-tA", "-X"],
        env={"PGPASSWORD": "old-db", "PATH": "/usr/bin:/bin"},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert held.stdin is not None and held.stdout is not None
    try:
        held.stdin.write("SELECT 'before';\n")
        held.stdin.flush()
        assert held.stdout.readline().strip() == "before"

        await runtime.change_password(replace(database(db_port, b"new-db"), generation=1))
        await runtime.change_password(redis(redis_port, b"new-redis"))

        assert sql(db_port, b"new-db", "SELECT 1") == "1"
        with pytest.raises(AssertionError, match="password authentication failed"):
            sql(db_port, b"old-db", "SELECT 1")
        held.stdin.write("SELECT 'after';\n")
        held.stdin.flush()
        assert held.stdout.readline().strip() == "after"  # its session was not cut
        assert await redis_pong(HOST, redis_port, b"new-redis", 1.0)
        assert not await redis_pong(HOST, redis_port, b"old-redis", 1.0)
        running = {i.key: i.runtime_id for i in await runtime.list()}
        assert running["shop.prod.database"] == started.runtime_id  # never restarted
    finally:
        held.kill()
        held.wait()
