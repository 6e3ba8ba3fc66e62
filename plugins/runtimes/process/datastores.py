"""The process runtime's built-in datastores: the seed's PostgreSQL and Redis, run from the
host's Debian packages for a `database` or `redis` service that names nothing to run of its
own (as the docker runtime runs their official images).

Data lives in `<root>/<project>.<env>.<service>/` (`Places`). Run as root, PostgreSQL and
Redis run as their own system users (`postgres` refuses root), who must reach that directory:
hence a root outside the state home, `/var/lib/meshd/<mesh>/<droplet>/`, whose parents they may
pass (0711) but not list. A new database starts as a copy of one `initdb`
template per machine (initdb takes seconds, a copy a fraction of one); its role and database
are made in single-user mode before the server first listens, and every later start sets the
role's password again from the current secret. Passwords reach the servers on standard input
only (single-user SQL, Redis's configuration read from stdin): never a command line, the
environment, or a file of the datastore's.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from plugins.fs import atomic_write
from plugins.runtimes import (
    SYSTEM_DATA_ROOT,
    InstanceSpec,
    InstanceStartError,
    builtin_datastore,
    mesh_data_root,
)

POSTGRES_ROOT = Path("/usr/lib/postgresql")  # Debian: <version>/bin/{initdb,postgres}
REDIS_SERVER = "redis-server"
SERVER_USERS = {"database": "postgres", "redis": "redis"}  # who runs them when we are root
TEMPLATES_DIR = ".templates"
REDIS_ADMIN = "meshd"  # the runtime's own Redis user
REDIS_ADMIN_FILE = "redis-admin"  # its password, in the runtime's instance directory
SINGLE_USER_TIMEOUT_S = 120.0
INITDB_TIMEOUT_S = 300.0
PASSABLE = 0o711  # a parent directory the servers' users may pass through, not list
HBA = (
    "# meshd: the local socket (in a 0700 directory) trusts its owner; the network needs the\n"
    "# password, from any droplet of the mesh (the firewall decides who reaches the port)\n"
    "local all all trust\n"
    "host all all 0.0.0.0/0 scram-sha-256\n"
    "host all all ::/0 scram-sha-256\n"
)


@dataclass(frozen=True, slots=True)
class Launch:
    """How to start one instance: `stdin` is written to the process and closed; `user` (a
    system user, only when we are root) is who it runs as; `stop_signal` asks it to stop
    cleanly (PostgreSQL's fast shutdown is SIGINT; its SIGTERM waits for every client)."""

    argv: list[str]
    cwd: Path
    user: str | None = None
    stdin: bytes | None = field(default=None, repr=False)
    stop_signal: int = signal.SIGTERM


def builtin_kind(spec: InstanceSpec) -> str | None:
    """`database` or `redis` when the instance is a built-in datastore here, else None."""
    return builtin_datastore("process", spec)


@dataclass(frozen=True, slots=True)
class Places:
    """Where datastores keep their data (`root`) and the initdb templates (`templates`), and
    the top directory up to which every parent is made passable."""

    root: Path
    templates: Path
    top: Path

    def home(self, spec: InstanceSpec) -> Path:
        """The directory of one datastore's data (both slots share it: never two at once):
        its volume, where the provider has volumes."""
        return Path(spec.volume_path) if spec.volume_path else self.on_droplet(spec)

    def on_droplet(self, spec: InstanceSpec) -> Path:
        return self.root / f"{spec.project}.{spec.env}.{spec.service}"

    @classmethod
    def default(cls, mesh: str, droplet: str, data_dir: Path, root: Path | None) -> Places:
        """The configured `root`, else: as root `SYSTEM_DATA_ROOT/<mesh>/<droplet>` with one
        template per machine; otherwise beside the runtime's other files."""
        if root is not None:
            return cls(root, root / TEMPLATES_DIR, root)
        if os.geteuid() == 0:
            return cls(
                mesh_data_root(mesh) / droplet, SYSTEM_DATA_ROOT / TEMPLATES_DIR, SYSTEM_DATA_ROOT
            )
        return cls(data_dir / "datastores", data_dir / "datastores" / TEMPLATES_DIR, data_dir)


def launch(kind: str, spec: InstanceSpec, places: Places, instance: Path) -> Launch:
    """Prepare the datastore's directory (blocking: run it in a thread) and say how to start
    it; `instance` is the runtime's own directory of the instance (root's, 0700)."""
    if spec.port is None:
        raise InstanceStartError(spec.key, f"a {kind} needs a port")
    user = _server_user(spec.key, kind)
    home = places.home(spec)
    _make_passable(home, places.top)
    _move_to_volume(places.on_droplet(spec), home)
    if kind == "database":
        return _postgres(spec, home, places, user)
    return _redis(spec, home, user, instance)


def change_password(kind: str, spec: InstanceSpec, places: Places, instance: Path) -> None:
    """Give the running datastore the password of `spec`'s secrets, without a restart: its
    clients, rolled next, find it already there; the connections they hold stay open.
    PostgreSQL: `ALTER ROLE` through its 0700 socket as the superuser; Redis: `CONFIG SET
    requirepass` as the runtime's own user (its password kept in `instance`, root's).
    Blocking: run it in a thread."""
    if spec.port is None:
        raise InstanceStartError(spec.key, f"a {kind} needs a port")
    if kind == "database":
        binaries = postgres_binaries()
        if binaries is None:
            raise InstanceStartError(spec.key, f"PostgreSQL is not installed ({POSTGRES_ROOT})")
        role, password = spec.env_vars.get("DB_USER") or "", _password(spec, "db_password")
        sql = f"ALTER ROLE {_identifier(role)} PASSWORD {sql_literal(password)};\n"
        sockets = places.home(spec) / "run"
        argv = [str(binaries / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1"]
        argv += ["-h", str(sockets), "-p", str(spec.port), "-U", "postgres", "-d", "postgres"]
        _run(spec.key, argv, sql.encode(), None, SINGLE_USER_TIMEOUT_S, "changing the password")
        return
    try:
        admin = (instance / REDIS_ADMIN_FILE).read_bytes()
    except OSError as err:
        raise InstanceStartError(spec.key, f"no admin login of this Redis: {err}") from None
    new = _password(spec, "redis_password")
    commands = [(b"AUTH", REDIS_ADMIN.encode(), admin), (b"CONFIG", b"SET", b"requirepass", new)]
    try:
        with socket.create_connection((spec.host, spec.port), timeout=5.0) as connection:
            connection.sendall(b"".join(_resp(*c) for c in commands))
            answers = connection.makefile("rb")
            said = [answers.readline().strip() for _ in commands]
    except OSError as err:
        raise InstanceStartError(spec.key, f"changing the password: {err}") from None
    if said != [b"+OK", b"+OK"]:
        raise InstanceStartError(spec.key, f"changing the password: Redis said {said[-1]!r}")


def _postgres(spec: InstanceSpec, home: Path, places: Places, user: str | None) -> Launch:
    binaries = postgres_binaries()
    if binaries is None:
        raise InstanceStartError(spec.key, f"PostgreSQL is not installed ({POSTGRES_ROOT})")
    password = _password(spec, "db_password")
    role, database = spec.env_vars.get("DB_USER"), spec.env_vars.get("DB_NAME")
    if not role or not database:
        raise InstanceStartError(spec.key, "DB_USER and DB_NAME must be set")
    data, sockets = home / "pgdata", home / "run"
    _owned_directory(sockets, user)
    # What a reboot clears from /run: a socket lock left by a postmaster that died with its
    # machine names a pid that a rebuilt droplet may give to another process, and PostgreSQL
    # then refuses the socket. The data directory's own lock still guards against two.
    for stale in sockets.glob(".s.PGSQL.*"):
        stale.unlink(missing_ok=True)
    if not (data / "PG_VERSION").is_file():
        _copy_template(data, _template(spec.key, binaries, places, user), user)
        sql = (
            f"CREATE ROLE {_identifier(role)} LOGIN PASSWORD {sql_literal(password)};\n"
            f"CREATE DATABASE {_identifier(database)} OWNER {_identifier(role)};\n"
        )
    else:  # the current secret wins over whatever the role had (a rotation, a restore)
        sql = f"ALTER ROLE {_identifier(role)} PASSWORD {sql_literal(password)};\n"
    _single_user(spec.key, binaries, data, sql, user)
    shared_buffers = max(spec.memory_mb // 4, 8)  # initdb's 128 MB would not fit a $6 droplet
    argv = [
        str(binaries / "postgres"),
        *("-D", str(data), "-p", str(spec.port), "-k", str(sockets)),
        *("-c", f"listen_addresses={spec.host}", "-c", f"shared_buffers={shared_buffers}MB"),
        *("-c", "max_connections=40", "-c", "unix_socket_permissions=0700"),
    ]
    return Launch(argv, home, user, None, signal.SIGINT)


def _redis(spec: InstanceSpec, home: Path, user: str | None, instance: Path) -> Launch:
    binary = shutil.which(REDIS_SERVER) or f"/usr/bin/{REDIS_SERVER}"
    if not os.access(binary, os.X_OK):
        raise InstanceStartError(spec.key, "redis-server is not installed")
    password = _password(spec, "redis_password")
    data = home / "data"
    _owned_directory(data, user)
    admin = secrets.token_urlsafe(24).encode()
    instance.mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write(instance / REDIS_ADMIN_FILE, admin, 0o600)
    config = "\n".join(
        (
            f"bind {spec.host}",
            f"port {spec.port}",
            f"dir {redis_config_string(str(data).encode())}",
            "daemonize no",
            'logfile ""',
            "appendonly yes",  # every write since the last RDB survives a crash
            f"requirepass {redis_config_string(password)}",
            # the runtime's own login, to change the password above without a restart
            f"user {REDIS_ADMIN} on {redis_config_string(b'>' + admin)} ~* &* +@all",
        )
    )
    return Launch([binary, "-"], home, user, (config + "\n").encode())


def postgres_binaries() -> Path | None:
    """The newest PostgreSQL's bin directory that holds both initdb and postgres."""
    found = []
    for candidate in POSTGRES_ROOT.glob("*/bin") if POSTGRES_ROOT.is_dir() else ():
        if (candidate / "postgres").is_file() and (candidate / "initdb").is_file():
            with contextlib.suppress(ValueError):
                found.append((float(candidate.parent.name), candidate))
    return max(found)[1] if found else None


def _template(key: str, binaries: Path, places: Places, user: str | None) -> Path:
    """The initdb template for this PostgreSQL version, made once (under a lock: the
    droplets of a local mesh start their databases at the same time)."""
    templates = places.templates
    _make_passable(templates, places.top)
    template = templates / f"postgresql-{binaries.parent.name}"
    with (templates / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (template / "PG_VERSION").is_file():
            return template
        making = templates / f".making-{os.getpid()}"
        shutil.rmtree(making, ignore_errors=True)
        _owned_directory(making, user)
        argv = [
            str(binaries / "initdb"),
            *("-D", str(making), "-U", "postgres", "-E", "UTF8", "--locale=C.UTF-8"),
            *("--auth-local=trust", "--auth-host=scram-sha-256", "--no-instructions"),
        ]
        _run(key, argv, None, user, INITDB_TIMEOUT_S, "initdb")
        (making / "pg_hba.conf").write_text(HBA)
        _chown_tree(making, user)
        making.rename(template)
        return template


def _copy_template(data: Path, template: Path, user: str | None) -> None:
    copying = data.with_name(f".{data.name}-copying")
    shutil.rmtree(copying, ignore_errors=True)
    shutil.copytree(template, copying, symlinks=True)
    _chown_tree(copying, user)
    os.chmod(copying, 0o700)
    copying.rename(data)


def _single_user(key: str, binaries: Path, data: Path, sql: str, user: str | None) -> None:
    """Run `sql` in single-user mode: no server listens yet, so nobody but us is connected."""
    argv = [
        str(binaries / "postgres"),
        *("--single", "-D", str(data), "-c", "exit_on_error=on", "postgres"),
    ]
    _run(key, argv, sql.encode(), user, SINGLE_USER_TIMEOUT_S, "setting up the database")


def _run(
    key: str, argv: list[str], stdin: bytes | None, user: str | None, timeout: float, what: str
) -> None:
    try:
        done = subprocess.run(
            argv,
            input=stdin if stdin is not None else b"",
            capture_output=True,
            timeout=timeout,
            user=user,
            group=_group(user),
            extra_groups=[] if user else None,
            cwd="/",
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise InstanceStartError(key, f"{what}: {err}") from None
    if done.returncode != 0:
        said = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()
        raise InstanceStartError(key, f"{what} failed: {' / '.join(said[-3:])}")


def _server_user(key: str, kind: str) -> str | None:
    if os.geteuid() != 0:
        return None
    name = SERVER_USERS[kind]
    try:
        pwd.getpwnam(name)
    except KeyError:
        if kind == "database":  # PostgreSQL will not run as root at all
            raise InstanceStartError(key, f"no system user {name!r} to run it as") from None
        return None
    return name


def _group(user: str | None) -> int | None:
    return pwd.getpwnam(user).pw_gid if user else None


def _make_passable(directory: Path, top: Path) -> None:
    """`directory` and its parents up to `top`, passable by the servers' users."""
    directory.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not directory.is_relative_to(top):
        return
    for path in (directory, *directory.parents):
        if path.stat().st_mode & 0o777 != PASSABLE:
            os.chmod(path, PASSABLE)  # ours: names of projects are nobody else's business
        if path in (top, path.parent):
            break


def _move_to_volume(before: Path, home: Path) -> None:
    """Data kept on the droplet before it had volumes moves onto its new, empty volume."""
    if home == before or not before.is_dir() or any(home.iterdir()):
        return
    for entry in before.iterdir():
        shutil.move(entry, home / entry.name)
    before.rmdir()


def _owned_directory(directory: Path, user: str | None) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if user:
        entry = pwd.getpwnam(user)
        os.chown(directory, entry.pw_uid, entry.pw_gid)
    os.chmod(directory, 0o700)


def _chown_tree(top: Path, user: str | None) -> None:
    if not user:
        return
    entry = pwd.getpwnam(user)
    for directory, _, files in os.walk(top):
        os.chown(directory, entry.pw_uid, entry.pw_gid)
        for name in files:
            os.chown(os.path.join(directory, name), entry.pw_uid, entry.pw_gid)


def _password(spec: InstanceSpec, name: str) -> bytes:
    value = spec.secrets.get(name)
    if value is None:
        raise InstanceStartError(spec.key, f"the secret {name} is not given to it")
    value = value.strip()
    if not value or b"\0" in value or b"\n" in value or b"\r" in value:
        raise InstanceStartError(spec.key, f"the secret {name} is empty or has a line break")
    try:
        value.decode()
    except UnicodeDecodeError:
        raise InstanceStartError(spec.key, f"the secret {name} is not UTF-8 text") from None
    return value


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def sql_literal(value: bytes) -> str:
    # standard_conforming_strings is on: only the quote needs doubling.
    return "'" + value.decode().replace("'", "''") + "'"


_PLAIN = re.compile(rb"[ !#-\[\]-~]")  # printable ASCII but the quote and the backslash


def _resp(*parts: bytes) -> bytes:
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def redis_config_string(value: bytes) -> str:
    """A double-quoted string of Redis's configuration (sdssplitargs reads \\xhh escapes)."""
    return (
        '"'
        + "".join(chr(b) if _PLAIN.fullmatch(bytes([b])) else f"\\x{b:02x}" for b in value)
        + '"'
    )
