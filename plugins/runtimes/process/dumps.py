"""Dumps of a running built-in datastore, and their restore into one that runs (for backups).

PostgreSQL: `pg_dump -Fc` of the environment's database through the server's 0700 unix socket
as `postgres` (trusted there: no password anywhere), restored by `pg_restore` in one
transaction as the environment's own role, so that a dump of prod restores into test's
database owned by test's role. Redis: a logical dump made online over the runtime's admin
login, `DUMP` and `PTTL` of every key `SCAN` finds, in a framed file of our own (`MAGIC`),
restored with `RESTORE` after `FLUSHALL`. DUMP's payload is Redis's own serialisation with its
version and a checksum: portable between servers of the same version, checked by RESTORE.

The Redis file: `MAGIC`, then records, each a one-byte tag: `D` + u16 database (the keys that
follow belong to it), `K` + u32 length + key + i64 ttl ms (-1: none) + u32 length + payload,
and last `E` + u64 count of `K` records, so that a cut file is refused before anything is
flushed. Blocking: the runtime calls these in a thread.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import socket
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, ClassVar, TypeAlias

from plugins.runtimes import InstanceSpec, RuntimeFailure
from plugins.runtimes.process.datastores import (
    POSTGRES_ROOT,
    REDIS_ADMIN,
    REDIS_ADMIN_FILE,
    SERVER_USERS,
    Places,
    _resp,
    postgres_binaries,
)

MAGIC = b"meshd-redis-dump/1\n"
PG_TIMEOUT_S = 3600.0
LOCK_WAIT = "120s"  # a client's long lock fails the dump instead of holding it up
REDIS_TIMEOUT_S = 60.0
SCAN_COUNT = b"1000"
BATCH_COMMANDS = 1000  # RESTOREs sent before their answers are read
BATCH_BYTES = 8 * 1024 * 1024
_DB, _KEY, _END = b"D", b"K", b"E"
_U16, _U32, _I64, _U64 = (struct.Struct(f">{code}") for code in "HIqQ")
_KEYSPACE = re.compile(rb"^db(\d+):", re.MULTILINE)


class DumpError(RuntimeFailure):
    """A running datastore could not be dumped; `reason` says why."""

    action: ClassVar[str] = "dump datastore"


class RestoreError(RuntimeFailure):
    """A dump could not be restored into a running datastore (not a dump of its kind, or
    the datastore refused it); `reason` says why."""

    action: ClassVar[str] = "restore datastore"


def dump(kind: str, spec: InstanceSpec, places: Places, instance: Path, out: Path) -> None:
    """Write a dump of the running datastore `spec` (`database` or `redis`) to `out`, a new
    file (0600), removed again if the dump fails; `instance` is the runtime's directory of it."""
    if spec.port is None:
        raise DumpError(spec.key, f"a {kind} needs a port")
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as err:
        raise DumpError(spec.key, f"cannot create {out}: {err.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as file:
            if kind == "database":
                _pg_dump(spec, places, file)
            else:
                _redis_dump(spec, instance, file)
            file.flush()
            os.fsync(file.fileno())  # a backup is only taken once it is on disk
    except OSError as err:  # of the file; the datastores' own errors are wrapped where met
        out.unlink(missing_ok=True)
        raise DumpError(spec.key, f"writing {out}: {err.strerror or err}") from None
    except BaseException:
        out.unlink(missing_ok=True)
        raise


def restore(kind: str, spec: InstanceSpec, places: Places, instance: Path, source: Path) -> None:
    """Replace the content of the running datastore `spec` with the dump in `source`."""
    if spec.port is None:
        raise RestoreError(spec.key, f"a {kind} needs a port")
    try:
        with source.open("rb") as file:
            if kind == "database":
                _pg_restore(spec, places, file)
            else:
                _redis_restore(spec, instance, file)
    except OSError as err:  # of the file; the datastores' own errors are wrapped where met
        raise RestoreError(spec.key, f"reading {source}: {err.strerror or err}") from None


def _pg_dump(spec: InstanceSpec, places: Places, file: BinaryIO) -> None:
    binaries, database, _ = _postgres(spec, DumpError)
    argv = [str(binaries / "pg_dump"), "-Fc", f"--lock-wait-timeout={LOCK_WAIT}"]
    argv += [*_connection(spec, places), "-d", database]
    _pg_run(spec.key, argv, subprocess.DEVNULL, file, DumpError)


def _pg_restore(spec: InstanceSpec, places: Places, file: BinaryIO) -> None:
    binaries, database, role = _postgres(spec, RestoreError)
    argv = [str(binaries / "pg_restore"), "--format=custom", "--single-transaction"]
    argv += ["--clean", "--if-exists", "--no-owner", "--no-acl", f"--role={role}"]
    argv += [*_connection(spec, places), "-d", database]
    # the dump comes on stdin: the server's user, who runs pg_restore, may not read the file
    _pg_run(spec.key, argv, file, subprocess.DEVNULL, RestoreError)


def _postgres(spec: InstanceSpec, error: type[RuntimeFailure]) -> tuple[Path, str, str]:
    binaries = postgres_binaries()
    if binaries is None:
        raise error(spec.key, f"PostgreSQL is not installed ({POSTGRES_ROOT})")
    database, role = spec.env_vars.get("DB_NAME"), spec.env_vars.get("DB_USER")
    if not database or not role:
        raise error(spec.key, "DB_USER and DB_NAME must be set")
    return binaries, database, role


def _connection(spec: InstanceSpec, places: Places) -> list[str]:
    sockets = places.home(spec) / "run"
    return ["-w", "-h", str(sockets), "-p", str(spec.port), "-U", "postgres"]


def _pg_run(
    key: str,
    argv: list[str],
    stdin: BinaryIO | int,
    stdout: BinaryIO | int,
    error: type[RuntimeFailure],
) -> None:
    """Run a PostgreSQL client as the server's user when we are root: only it may enter the
    0700 directory of the socket."""
    name = Path(argv[0]).name
    user = SERVER_USERS["database"] if os.geteuid() == 0 else None
    try:
        group = pwd.getpwnam(user).pw_gid if user else None
        done = subprocess.run(
            argv,
            stdin=stdin,
            stdout=stdout,
            stderr=subprocess.PIPE,
            timeout=PG_TIMEOUT_S,
            user=user,
            group=group,
            extra_groups=[] if user else None,
            cwd="/",
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            check=False,
        )
    except KeyError:
        raise error(key, f"no system user {user!r} to run {name} as") from None
    except (OSError, subprocess.TimeoutExpired) as err:
        raise error(key, f"{name}: {err}") from None
    if done.returncode != 0:
        said = done.stderr.decode(errors="replace").strip().splitlines()
        raise error(key, f"{name} failed: {' / '.join(said[-3:]) or done.returncode}")


@dataclass(frozen=True, slots=True)
class Refusal:
    """An error reply of Redis, read as a value so that a pipeline's answers are all read."""

    message: str


Reply: TypeAlias = "bytes | int | None | list[Reply] | Refusal"


class _RedisFailure(Exception):
    """The conversation with Redis failed: the connection, its protocol, or a refusal."""


class _Redis:
    """A connection to one Redis speaking RESP2: commands out, replies parsed; a broken
    connection is a `_RedisFailure`, as a refusal is when asked to check."""

    def __init__(self, connection: socket.socket) -> None:
        self._connection = connection
        self._replies = connection.makefile("rb")

    def send(self, *commands: tuple[bytes, ...]) -> None:
        try:
            self._connection.sendall(b"".join(_resp(*command) for command in commands))
        except OSError as err:
            raise _RedisFailure(str(err)) from None

    def call(self, *command: bytes) -> Reply:
        self.send(command)
        return self.reply(checked=True)

    def reply(self, *, checked: bool = False) -> Reply:
        try:
            answer = _read_reply(self._replies)
        except OSError as err:
            raise _RedisFailure(str(err)) from None
        if checked and isinstance(answer, Refusal):
            raise _RedisFailure(f"Redis said {answer.message!r}")
        return answer


def _read_reply(stream: BinaryIO) -> Reply:
    line = stream.readline()
    if not line.endswith(b"\r\n"):
        raise _RedisFailure("Redis closed the connection")
    tag, rest = line[:1], line[1:-2]
    if tag == b"+":
        return rest
    if tag == b"-":
        return Refusal(rest.decode(errors="replace"))
    try:
        number = int(rest)
    except ValueError:
        number = None
    if number is None or tag not in (b":", b"$", b"*"):
        raise _RedisFailure(f"not a RESP reply: {line[:40]!r}")
    if tag == b":":
        return number
    if number < 0:  # a nil bulk string or array
        return None
    if tag == b"*":
        return [_read_reply(stream) for _ in range(number)]
    data = stream.read(number + 2)
    if len(data) != number + 2:
        raise _RedisFailure("Redis closed the connection")
    return data[:-2]


@contextlib.contextmanager
def _admin(spec: InstanceSpec, instance: Path, error: type[RuntimeFailure]) -> Iterator[_Redis]:
    """A connection logged in as the runtime's own Redis user; what fails in it becomes
    `error` with what Redis said (never a key or a value)."""
    try:
        password = (instance / REDIS_ADMIN_FILE).read_bytes()
    except OSError as err:
        raise error(spec.key, f"no admin login of this Redis: {err.strerror}") from None
    try:
        connection = socket.create_connection((spec.host, spec.port), timeout=REDIS_TIMEOUT_S)
    except OSError as err:
        raise error(spec.key, f"connecting to Redis: {err}") from None
    with connection:
        try:
            redis = _Redis(connection)
            redis.call(b"AUTH", REDIS_ADMIN.encode(), password)
            yield redis
        except _RedisFailure as err:
            raise error(spec.key, f"talking to Redis: {err}") from None


def _redis_dump(spec: InstanceSpec, instance: Path, file: BinaryIO) -> None:
    with _admin(spec, instance, DumpError) as redis:
        file.write(MAGIC)
        count = 0
        keyspace = redis.call(b"INFO", b"keyspace")
        databases = _KEYSPACE.findall(keyspace) if isinstance(keyspace, bytes) else []
        for database in databases:
            redis.call(b"SELECT", database)
            file.write(_DB + _U16.pack(int(database)))
            for key, ttl, payload in _dumped(redis):
                file.write(_KEY + _U32.pack(len(key)) + key + _I64.pack(ttl))
                file.write(_U32.pack(len(payload)) + payload)
                count += 1
        file.write(_END + _U64.pack(count))


def _dumped(redis: _Redis) -> Iterator[tuple[bytes, int, bytes]]:
    """(key, ttl ms or -1, payload) of every key of the selected database, each batch that
    SCAN names read in one MULTI (a key's value and ttl agree). SCAN may name a key twice
    (the table grew meanwhile): RESTORE ... REPLACE makes that harmless."""
    cursor = b"0"
    while True:
        answer = redis.call(b"SCAN", cursor, b"COUNT", SCAN_COUNT)
        match answer:
            case [bytes() as cursor, list() as keys]:
                names = [key for key in keys if isinstance(key, bytes)]
            case _:
                raise _RedisFailure("unexpected answer to SCAN")
        if names:
            asked = [(b"DUMP", k) for k in names] + [(b"PTTL", k) for k in names]
            redis.send((b"MULTI",), *asked, (b"EXEC",))
            for _ in range(len(asked) + 1):
                redis.reply(checked=True)  # OK, then QUEUED for each
            done = redis.reply(checked=True)
            if not isinstance(done, list) or len(done) != len(asked):
                raise _RedisFailure("unexpected answer to EXEC")
            _refused(done)
            payloads, ttls = done[: len(names)], done[len(names) :]
            for key, payload, ttl in zip(names, payloads, ttls, strict=True):
                if not isinstance(payload, bytes) or not isinstance(ttl, int) or ttl == -2:
                    continue  # gone between SCAN and DUMP (deleted or expired)
                yield key, max(ttl, 1) if ttl >= 0 else -1, payload  # 0 left is not "none"
        if cursor == b"0":
            return


def _redis_restore(spec: InstanceSpec, instance: Path, file: BinaryIO) -> None:
    try:
        for _ in _records(file, payloads=False):
            pass
    except ValueError as err:
        raise RestoreError(spec.key, f"not a Redis dump of meshd: {err}") from None
    file.seek(0)
    with _admin(spec, instance, RestoreError) as redis:
        redis.call(b"FLUSHALL")
        batch: list[tuple[bytes, ...]] = []
        size = 0
        for record in _records(file, payloads=True):
            if isinstance(record, int):
                batch.append((b"SELECT", b"%d" % record))
            else:
                key, ttl, payload = record
                batch.append((b"RESTORE", key, b"%d" % max(ttl, 0), payload, b"REPLACE"))
                size += len(key) + len(payload)
            if len(batch) >= BATCH_COMMANDS or size >= BATCH_BYTES:
                _pipeline(redis, batch)
                batch, size = [], 0
        _pipeline(redis, batch)


def _pipeline(redis: _Redis, commands: list[tuple[bytes, ...]]) -> None:
    redis.send(*commands)
    _refused([redis.reply() for _ in commands])  # all read: the connection stays in step


def _refused(answers: list[Reply]) -> None:
    refused = next((a for a in answers if isinstance(a, Refusal)), None)
    if refused is not None:
        raise _RedisFailure(f"Redis said {refused.message!r}")


def _records(file: BinaryIO, *, payloads: bool) -> Iterator[int | tuple[bytes, int, bytes]]:
    """The file's records: a database number, or (key, ttl, payload); without `payloads`
    only the framing is checked (payloads skipped, b"" in their place). ValueError when it
    is not a whole dump."""
    if file.read(len(MAGIC)) != MAGIC:
        raise ValueError("it does not start with " + repr(MAGIC.strip().decode()))
    count = 0
    while True:
        tag = file.read(1)
        if tag == _DB:
            yield _U16.unpack(_exactly(file, 2))[0]
        elif tag == _KEY:
            key = _exactly(file, _U32.unpack(_exactly(file, 4))[0])
            ttl = _I64.unpack(_exactly(file, 8))[0]
            length = _U32.unpack(_exactly(file, 4))[0]
            if payloads:
                yield key, ttl, _exactly(file, length)
            else:
                _skip(file, length)
                yield key, ttl, b""
            count += 1
        elif tag == _END:
            if _U64.unpack(_exactly(file, 8))[0] != count or file.read(1):
                raise ValueError("its records do not match its end")
            return
        else:
            raise ValueError("it is cut short or damaged")


def _exactly(file: BinaryIO, size: int) -> bytes:
    data = file.read(size)
    if len(data) != size:
        raise ValueError("it is cut short")
    return data


def _skip(file: BinaryIO, size: int) -> None:
    if file.seek(size, os.SEEK_CUR) > os.fstat(file.fileno()).st_size:
        raise ValueError("it is cut short")
