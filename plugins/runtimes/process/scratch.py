"""The drill of `backup verify`: a dump of a built-in datastore is loaded where it harms
nothing, and what it holds is counted, so that a backup is known to restore before it is needed.

PostgreSQL: a scratch server of its own in `<root>/.verify-<random>/` (a copy of the initdb
template, listening on a unix socket only, in a 0700 directory of the server's user, so that
nobody else reaches it and no password is needed), into which `pg_restore` loads the dump;
then every table's rows are counted exactly, and the server and its directory go, whatever
happened. Redis: no server; the file's framing is read through the dump format's own reader
(magic, records, the end's count) and its keys counted per database.
Blocking: the runtime calls `verify` in a thread.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

from plugins.runtimes import InstanceSpec, InstanceStartError, RuntimeFailure
from plugins.runtimes.process.datastores import (
    POSTGRES_ROOT,
    Places,
    _copy_template,
    _group,
    _make_passable,
    _owned_directory,
    _server_user,
    _template,
    postgres_binaries,
)
from plugins.runtimes.process.dumps import _records

PORT = 5432  # names the socket file only: the socket's directory is the scratch server's own
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
CLIENT_TIMEOUT_S = 3600.0
POLL_S = 0.1
DATABASE = "verify"
SERVER_LOG = "server.log"
SETTINGS = (
    "listen_addresses=",  # the unix socket only
    "unix_socket_permissions=0700",
    "shared_buffers=16MB",  # it shares the droplet with the datastores it checks
    "max_connections=10",
    "fsync=off",  # its data is thrown away: durability would only slow the load down
    "autovacuum=off",  # it lives for seconds; a vacuum would only compete with the counts
)
# Ordinary tables and partitions (not their partitioned parents: rows would count twice).
TABLES = (
    "SELECT n.nspname, c.relname, format('%I.%I', n.nspname, c.relname)"
    " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
    " AND n.nspname NOT LIKE 'pg\\_temp\\_%' AND n.nspname NOT LIKE 'pg\\_toast%'"
    " ORDER BY 1, 2"
)


class VerifyError(RuntimeFailure):
    """A dump could not be loaded into a scratch datastore (not a dump of its kind, cut
    short, refused by the server), or the scratch datastore could not be made; `reason`
    says why."""

    action: ClassVar[str] = "verify backup"


def verify(kind: str, spec: InstanceSpec, places: Places, source: Path) -> dict[str, Any]:
    """Load the dump `source` of the datastore `spec` (`database` or `redis`) into a scratch
    one and count what it holds: `{"tables": {"schema.table": rows}, "rows": total}` or
    `{"keys": total, "databases": {"0": keys}}`, each with the `seconds` it took. `spec`
    only names the datastore: nothing of it is read or touched."""
    began = time.monotonic()
    try:
        if kind == "database":
            tables = _verify_postgres(spec, places, source)
            found: dict[str, Any] = {"tables": tables, "rows": sum(tables.values())}
        else:
            databases = _verify_redis(spec, source)
            found = {"keys": sum(databases.values()), "databases": databases}
    except InstanceStartError as err:  # of the helpers that prepare datastores
        raise VerifyError(spec.key, f"preparing the scratch server: {err.reason}") from None
    except OSError as err:
        raise VerifyError(spec.key, f"{err.strerror or err}: {err.filename or source}") from None
    return found | {"seconds": round(time.monotonic() - began, 3)}


def _verify_redis(spec: InstanceSpec, source: Path) -> dict[str, int]:
    databases: dict[str, int] = {}
    current: str | None = None
    with source.open("rb") as file:
        try:
            for record in _records(file, payloads=False):
                if isinstance(record, int):
                    current = str(record)
                    databases.setdefault(current, 0)
                elif current is None:
                    raise ValueError("a key comes before any database")
                else:
                    # a key that SCAN named twice during the dump counts twice (rare: the
                    # table grew meanwhile); counting distinct keys would hold them all here
                    databases[current] += 1
        except ValueError as err:
            raise VerifyError(spec.key, f"not a Redis dump of meshd: {err}") from None
    return databases


def _verify_postgres(spec: InstanceSpec, places: Places, source: Path) -> dict[str, int]:
    binaries = postgres_binaries()
    if binaries is None:
        raise VerifyError(spec.key, f"PostgreSQL is not installed ({POSTGRES_ROOT})")
    with source.open("rb") as file:  # opened first: a missing file needs no server
        user = _server_user(spec.key, "database")
        return _load(spec.key, binaries, places, user, file)


def _load(
    key: str, binaries: Path, places: Places, user: str | None, file: BinaryIO
) -> dict[str, int]:
    template = _template(key, binaries, places, user)
    _make_passable(places.root, places.top)
    scratch = places.root / f".verify-{secrets.token_hex(8)}"
    scratch.mkdir(mode=0o700)
    try:
        _make_passable(scratch, places.top)  # the server's user passes it to its data
        _copy_template(scratch / "pgdata", template, user)
        _owned_directory(scratch / "run", user)
        with _server(key, binaries, scratch, user):
            client = _Client(key, binaries, scratch / "run", user)
            client.psql("postgres", f"CREATE DATABASE {DATABASE}")
            argv = [str(binaries / "pg_restore"), "--format=custom", "--exit-on-error"]
            argv += ["--no-owner", "--no-acl", *client.connection, "-d", DATABASE]
            client.run(argv, file)  # on stdin: the server's user may not read the file
            return _counts(client)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _counts(client: _Client) -> dict[str, int]:
    """Every table's rows, counted (statistics would only guess), in one session."""
    listed = client.psql(DATABASE, TABLES, "-z", "-0").split(b"\0")
    names = [part.decode() for part in listed if part]
    tables = [(f"{names[i]}.{names[i + 1]}", names[i + 2]) for i in range(0, len(names), 3)]
    if not tables:
        return {}
    counting = "".join(f"SELECT count(*) FROM {quoted};\n" for _, quoted in tables)
    counted = client.psql(DATABASE, counting).split()
    if len(counted) != len(tables):
        raise VerifyError(client.key, f"counted {len(counted)} of {len(tables)} tables")
    return {name: int(rows) for (name, _), rows in zip(tables, counted, strict=True)}


class _Client:
    """PostgreSQL's clients, run against the scratch server's socket as the server's user
    when we are root (only it may enter the socket's 0700 directory)."""

    def __init__(self, key: str, binaries: Path, sockets: Path, user: str | None) -> None:
        self.key = key
        self.connection = ["-w", "-h", str(sockets), "-p", str(PORT), "-U", "postgres"]
        self._psql = str(binaries / "psql")
        self._user = user

    def psql(self, database: str, sql: str, *options: str) -> bytes:
        """The unaligned, header-less output of `sql` (read on stdin: it may be long)."""
        argv = [self._psql, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", *options]
        argv += [*self.connection, "-d", database]
        return self.run(argv, sql.encode())

    def run(self, argv: list[str], stdin: bytes | BinaryIO) -> bytes:
        data, stream = (stdin, None) if isinstance(stdin, bytes) else (None, stdin)
        name = Path(argv[0]).name
        try:
            done = subprocess.run(
                argv,
                input=data,
                stdin=stream,
                capture_output=True,
                timeout=CLIENT_TIMEOUT_S,
                user=self._user,
                group=_group(self._user),
                extra_groups=[] if self._user else None,
                cwd="/",
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PGCLIENTENCODING": "UTF8"},
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise VerifyError(self.key, f"{name} took more than {CLIENT_TIMEOUT_S:.0f} s") from None
        if done.returncode != 0:
            said = done.stderr.decode(errors="replace").strip().splitlines()
            raise VerifyError(
                self.key, f"{name} failed: {' / '.join(said[-3:]) or done.returncode}"
            )
        return done.stdout


@contextlib.contextmanager
def _server(key: str, binaries: Path, scratch: Path, user: str | None) -> Iterator[None]:
    """The scratch server, running and accepting connections on its socket until the end
    of the block; then stopped (fast shutdown, SIGKILL if it lingers)."""
    argv = [str(binaries / "postgres"), "-D", str(scratch / "pgdata"), "-p", str(PORT)]
    argv += ["-k", str(scratch / "run")]
    for setting in SETTINGS:
        argv += ["-c", setting]
    with (scratch / SERVER_LOG).open("wb") as log:
        server = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd="/",
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            user=user,
            group=_group(user),
            extra_groups=[] if user else None,  # none of root's groups
        )
    try:
        _wait_ready(key, binaries, scratch, user, server)
        yield
    finally:
        _stop(server)


def _wait_ready(
    key: str, binaries: Path, scratch: Path, user: str | None, server: subprocess.Popen[bytes]
) -> None:
    client = _Client(key, binaries, scratch / "run", user)
    argv = [str(binaries / "pg_isready"), "-q", "-h", str(scratch / "run"), "-p", str(PORT)]
    argv += ["-U", "postgres", "-d", "postgres"]
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            said = (scratch / SERVER_LOG).read_text(errors="replace").strip().splitlines()
            raise VerifyError(key, f"the scratch server exited: {' / '.join(said[-3:])}")
        with contextlib.suppress(VerifyError):  # not yet: pg_isready fails until it accepts
            client.run(argv, b"")
            return
        time.sleep(POLL_S)
    raise VerifyError(key, f"the scratch server was not ready in {READY_TIMEOUT_S:.0f} s")


def _stop(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is not None:
        return
    server.send_signal(signal.SIGINT)  # fast shutdown: it ends its sessions and stops
    try:
        server.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(server.pid, signal.SIGKILL)
        server.wait()
