"""A real PostgreSQL 15 and a real redis-server for tests, each once per test session, on a
free loopback port, in a temporary directory, with a random password; stopped and removed
afterwards. Skipped with a reason where a binary is missing, a failure in CI (`CI=true`).

PostgreSQL refuses to run as root: as root, initdb and postgres run as the `postgres` system
user, in a directory under /var/tmp it can reach (pytest's own are private to root).
Passwords go through files and stdin, never a command line."""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from plugins.runtimes import RuntimeContext, mesh_data_root
from plugins.runtimes.process import ProcessRuntime, create
from plugins.runtimes.process import datastores as process_datastores
from tests.support import free_port, unavailable

POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")
REDIS_SERVER = "/usr/bin/redis-server"
PSQL = "/usr/bin/psql"
ADDRESS = "127.0.0.1"
READY_S = 30.0
STOP_S = 30.0
APP_ROLE = "meshapp"  # the role and database the tests' services use, like a DB_USER/DB_NAME


@dataclass(frozen=True, slots=True)
class Datastore:
    """Where a test's service finds a running store, as the mesh's DB_* or REDIS_* say."""

    host: str
    port: int
    user: str
    database: str
    password: str


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Datastore]:
    with running_postgres() as server:
        yield server


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Datastore]:
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


def postgres_binaries() -> Path:
    missing = [
        name for name in ("initdb", "postgres", "psql") if not (POSTGRES_BIN / name).is_file()
    ]
    if missing:
        unavailable(
            f"PostgreSQL 15 not installed: no {', '.join(missing)} in {POSTGRES_BIN}"
            " (Debian: apt-get install postgresql-15)"
        )
    return POSTGRES_BIN


def _server_user() -> dict[str, Any]:
    """Popen's arguments that run a PostgreSQL program as a user it accepts."""
    if os.geteuid() != 0:
        return {}
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        unavailable("running as root and there is no `postgres` system user to run PostgreSQL")
    return {"user": "postgres", "group": "postgres", "extra_groups": []}


@contextlib.contextmanager
def running_postgres(address: str = ADDRESS) -> Iterator[Datastore]:
    """A fresh cluster with a password-protected role and database of their own."""
    binaries, as_server = postgres_binaries(), _server_user()
    base = Path(tempfile.mkdtemp(prefix="meshd-postgres-", dir="/var/tmp"))
    try:
        base.chmod(0o711)  # the server user passes through, reads nothing else
        data, sockets = base / "data", base / "run"
        for private in (data, sockets):
            private.mkdir(mode=0o700)
            if as_server:
                shutil.chown(private, "postgres", "postgres")
        _initdb(binaries, data, as_server, base)
        port, password = free_port(address), secrets.token_hex(16)
        with _postgres_process(binaries, data, sockets, address, port, as_server, base):
            _create_app_role(binaries, sockets, port, password, as_server)
            yield Datastore(address, port, APP_ROLE, APP_ROLE, password)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _initdb(binaries: Path, data: Path, as_server: dict[str, Any], base: Path) -> None:
    # The superuser's password only has to exist (host logins need one); nobody uses it.
    with tempfile.NamedTemporaryFile("w", dir=base, prefix="pwfile-") as pwfile:
        pwfile.write(secrets.token_hex(16) + "\n")
        pwfile.flush()
        if as_server:
            shutil.chown(pwfile.name, "postgres", "postgres")
        done = subprocess.run(
            [
                str(binaries / "initdb"),
                *("-D", str(data), "-U", "postgres", f"--pwfile={pwfile.name}"),
                *("--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8"),
                *("--locale=C.UTF-8", "--no-instructions", "--no-sync"),
            ],
            cwd=data,
            env=_environment(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            **as_server,
        )
    if done.returncode != 0:
        raise RuntimeError(f"initdb failed ({done.returncode}): {done.stderr[-2000:]}")


@contextlib.contextmanager
def _postgres_process(
    binaries: Path,
    data: Path,
    sockets: Path,
    address: str,
    port: int,
    as_server: dict[str, Any],
    base: Path,
) -> Iterator[subprocess.Popen[bytes]]:
    log_path = base / "postgres.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [
                str(binaries / "postgres"),
                *("-D", str(data), "-p", str(port), "-k", str(sockets)),
                *("-c", f"listen_addresses={address}", "-c", "fsync=off"),
            ],
            cwd=data,
            env=_environment(),
            stdout=log,
            stderr=log,
            **as_server,
        )
    try:
        _wait_ready(process, log_path, "database system is ready to accept connections")
        yield process
    finally:
        _stop(process, signal.SIGINT)  # fast shutdown: roll back, disconnect, stop


def _create_app_role(
    binaries: Path, sockets: Path, port: int, password: str, as_server: dict[str, Any]
) -> None:
    # Through the unix socket (trust) and stdin: the password is on no command line.
    sql = (
        f"CREATE ROLE {APP_ROLE} LOGIN PASSWORD '{password}';\n"
        f"CREATE DATABASE {APP_ROLE} OWNER {APP_ROLE};\n"
    )
    done = subprocess.run(
        [
            str(binaries / "psql"),
            *("-h", str(sockets), "-p", str(port), "-U", "postgres", "-d", "postgres"),
            *("-v", "ON_ERROR_STOP=1", "-q", "-X"),
        ],
        input=sql,
        cwd=sockets,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        **as_server,
    )
    if done.returncode != 0:
        raise RuntimeError(f"psql failed ({done.returncode}): {done.stderr[-2000:]}")


def redis_binary() -> str:
    found = REDIS_SERVER if os.path.isfile(REDIS_SERVER) else shutil.which("redis-server")
    if found is None:
        unavailable("redis-server not installed (Debian: apt-get install redis-server)")
    return found


@contextlib.contextmanager
def running_redis(directory: Path, address: str = ADDRESS) -> Iterator[Datastore]:
    binary = redis_binary()
    port, password = free_port(address), secrets.token_hex(16)
    conf = directory / "redis.conf"
    # In a file of its own, the password appears in no command line.
    conf.touch(mode=0o600)
    conf.write_text(
        f'port {port}\nbind {address}\ndir {directory}\nrequirepass "{password}"\n'
        'appendonly yes\ndaemonize no\nsave ""\nlogfile ""\n'
    )
    log_path = directory / "redis.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [binary, str(conf)], cwd=directory, env=_environment(), stdout=log, stderr=log
        )
    try:
        _wait_ready(process, log_path, "Ready to accept connections")
        yield Datastore(address, port, "default", "0", password)
    finally:
        _stop(process, signal.SIGTERM)


def _environment() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}


def _wait_ready(process: subprocess.Popen[bytes], log: Path, ready: str) -> None:
    """Until the server's log says it accepts connections (it listens before it can serve)."""
    deadline = time.monotonic() + READY_S
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if ready in text:
            return
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited ({process.returncode}): {text[-2000:]}")
        time.sleep(0.05)
    raise TimeoutError(f"{process.args!r} not ready within {READY_S:.0f} s: {log}")


def _stop(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    if process.poll() is None:
        process.send_signal(sig)
    try:
        process.wait(timeout=STOP_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@contextlib.asynccontextmanager
async def process_runtime(tmp_path: Path) -> AsyncIterator[ProcessRuntime]:
    """A process runtime of droplet `web1` of a mesh of its own, whose state home is 0700 as
    root's is (the servers' users cannot enter it); afterwards every instance is stopped and
    the datastores' data removed. Unavailable without PostgreSQL, Redis and psql."""
    if process_datastores.postgres_binaries() is None or not shutil.which("redis-server"):
        unavailable("PostgreSQL or Redis not installed (apt: postgresql redis-server)")
    if not os.path.exists(PSQL):
        unavailable("psql not installed (apt: postgresql-client)")
    home = tmp_path / "state"
    home.mkdir(mode=0o700)
    mesh = f"t{uuid.uuid4().hex[:8]}"
    made = create(RuntimeContext(mesh=mesh, droplet="web1", data_dir=home / "runtime"))
    try:
        yield made
    finally:
        for info in await made.list():
            await made.stop(info.key)
        await made.close()
        shutil.rmtree(mesh_data_root(mesh), ignore_errors=True)
