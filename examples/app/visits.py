"""The example app's visit counter, standard library only: each call adds one visit to the
`visits` table of the instance's PostgreSQL database and to the `visits` key of its redis, and
says what both now hold, so that a page (and a test reading it) tells data from no data.

A store is counted only when the mesh gave this instance its password as a file
(`DB_PASSWORD_FILE`, `REDIS_PASSWORD_FILE`); one that is unreachable or refuses is reported
with a short reason, never raised, so the page still answers.

The PostgreSQL client speaks just enough of the frontend/backend protocol v3 (startup,
SCRAM-SHA-256, MD5 or cleartext authentication, Simple Query); the redis client just enough
RESP (AUTH, INCR). The wire encodings and the SCRAM computation are pure functions.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import socket
import struct
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TIMEOUT_S = 2.0
PROTOCOL_V3 = 196608
MAX_MESSAGE = 1 << 20  # far more than any answer to the counting query
COUNT_SQL = (
    "CREATE TABLE IF NOT EXISTS visits"
    " (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now());"
    " INSERT INTO visits DEFAULT VALUES;"
    " SELECT count(*) FROM visits"
)
# What PostgreSQL's authentication request codes (message 'R') ask for.
AUTH_OK, AUTH_CLEARTEXT, AUTH_MD5 = 0, 3, 5
AUTH_SASL, AUTH_SASL_CONTINUE, AUTH_SASL_FINAL = 10, 11, 12
SCRAM = "SCRAM-SHA-256"
GS2_HEADER = "n,,"  # no channel binding, no authorisation identity


class StoreError(Exception):
    """A datastore could not count the visit; `reason` is short enough for a page."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ServerError(StoreError):
    """The server answered with an error: PostgreSQL's ErrorResponse (`code` is its SQLSTATE)
    or a redis error reply (`code` is its first word, such as WRONGPASS)."""

    def __init__(self, reason: str, code: str = "") -> None:
        super().__init__(reason)
        self.code = code


@dataclass(frozen=True, slots=True)
class Visits:
    """Each counted store's total (in order) and each failing store's reason."""

    counts: tuple[tuple[str, int], ...] = ()
    problems: tuple[tuple[str, str], ...] = ()

    def lines(self) -> list[str]:
        """Plain-text lines for a page: `visits: database 3, redis 3`, then one
        `redis: unavailable (<reason>)` per failing store; none when nothing was asked."""
        shown = [f"visits: {', '.join(f'{s} {n}' for s, n in self.counts)}"] if self.counts else []
        return shown + [f"{store}: unavailable ({reason})" for store, reason in self.problems]


def count_visit(environ: Mapping[str, str] | None = None) -> Visits:
    """Count one visit in each store this instance was given a password for."""
    env = os.environ if environ is None else environ
    stores: tuple[tuple[str, str, Callable[[Mapping[str, str], str], int]], ...] = (
        ("database", "DB", _postgres_visit),
        ("redis", "REDIS", _redis_visit),
    )
    counts: list[tuple[str, int]] = []
    problems: list[tuple[str, str]] = []
    for store, prefix, visit in stores:
        if not env.get(f"{prefix}_PASSWORD_FILE"):
            continue
        try:
            counts.append((store, visit(env, prefix)))
        except StoreError as err:
            problems.append((store, err.reason))
        except (ValueError, struct.error) as err:  # a server speaking another protocol
            problems.append((store, f"unexpected answer: {err}"))
    return Visits(tuple(counts), tuple(problems))


def _address(env: Mapping[str, str], prefix: str) -> tuple[str, int, str]:
    """Host, port and password of the store whose variables start with `prefix`."""
    host, port = env.get(f"{prefix}_HOST", ""), env.get(f"{prefix}_PORT", "")
    if not host:
        raise StoreError(f"{prefix}_HOST is not set")
    if not port.isdigit():
        raise StoreError(f"{prefix}_PORT is not a port number: {port!r}")
    try:
        password = Path(env[f"{prefix}_PASSWORD_FILE"]).read_text().rstrip()
    except (OSError, UnicodeDecodeError) as err:
        raise StoreError(f"read {prefix}_PASSWORD_FILE: {_why(err)}") from err
    return host, int(port), password


def _why(err: Exception) -> str:
    # A timeout's strerror is None and its text "timed out"; a refusal's text has an errno.
    return getattr(err, "strerror", None) or str(err) or type(err).__name__


def _connected(host: str, port: int) -> socket.socket:
    try:
        return socket.create_connection((host, port), timeout=TIMEOUT_S)
    except OSError as err:
        raise StoreError(f"connect to {host}:{port}: {_why(err)}") from err


# PostgreSQL ----------------------------------------------------------------------------------


def _postgres_visit(env: Mapping[str, str], prefix: str) -> int:
    host, port, password = _address(env, prefix)
    user, database = env.get(f"{prefix}_USER", ""), env.get(f"{prefix}_NAME", "")
    if not user or not database:
        raise StoreError(f"{prefix}_USER and {prefix}_NAME must both be set")
    key = ("postgres", host, port, user, database)

    def session() -> _Wire:
        wire = _Wire(_connected(host, port))
        try:
            wire.send_raw(startup_message(user, database))
            _authenticate(wire, user, password)
        except OSError as err:
            wire.sock.close()
            raise StoreError(f"{host}:{port}: {_why(err)}") from err
        except BaseException:
            wire.sock.close()
            raise
        return wire

    def count(wire: _Wire) -> int:
        rows = _query(wire, COUNT_SQL)
        if not rows or not rows[-1] or rows[-1][0] is None:
            raise StoreError("the count query returned no row")
        return int(rows[-1][0])

    return _POOL.use(key, session, count, f"{host}:{port}")


class _Pool:
    """Sessions kept between visits, as an application's connection pool keeps them: one
    opened before a password change keeps working after it (the server checks a password
    only when a session starts). A kept session that fails is dropped and a new one tried."""

    def __init__(self) -> None:
        self._idle: dict[tuple[object, ...], list[Any]] = {}
        self._lock = threading.Lock()

    def use(
        self,
        key: tuple[object, ...],
        opened: Callable[[], Any],
        work: Callable[[Any], int],
        where: str,
    ) -> int:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            kept = idle.pop() if idle else None
        if kept is not None:
            try:
                return self._done(key, kept, work(kept))
            except (OSError, StoreError, ValueError, struct.error):
                kept.sock.close()  # gone meanwhile (a restart, an idle timeout): open anew
        session = opened()
        try:
            return self._done(key, session, work(session))
        except OSError as err:
            session.sock.close()
            raise StoreError(f"{where}: {_why(err)}") from err
        except BaseException:
            session.sock.close()
            raise

    def _done(self, key: tuple[object, ...], session: Any, result: int) -> int:
        with self._lock:
            self._idle[key].append(session)
        return result


_POOL = _Pool()


class _Wire:
    """Messages over one socket: a type byte, a length that counts itself, a body."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, kind: bytes, body: bytes) -> None:
        self.sock.sendall(message(kind, body))

    def receive(self) -> tuple[bytes, bytes]:
        head = self._exactly(5)
        (length,) = struct.unpack("!i", head[1:])
        if not 4 <= length <= MAX_MESSAGE:  # not PostgreSQL: do not wait for gigabytes
            raise StoreError(f"unexpected answer starting {head!r}")
        return head[:1], self._exactly(length - 4)

    def _exactly(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise StoreError("the server closed the connection")
            data += chunk
        return data


def message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def startup_message(user: str, database: str) -> bytes:
    params = f"user\0{user}\0database\0{database}\0\0".encode()
    return struct.pack("!ii", len(params) + 8, PROTOCOL_V3) + params


def error_fields(body: bytes) -> dict[str, str]:
    """An ErrorResponse's (or NoticeResponse's) fields by their one-letter type."""
    return {
        part[:1].decode(): part[1:].decode(errors="replace") for part in body.split(b"\0") if part
    }


def server_error(body: bytes) -> ServerError:
    fields = error_fields(body)
    return ServerError(fields.get("M", "unknown error"), fields.get("C", ""))


def md5_password(user: str, password: str, salt: bytes) -> bytes:
    """The body of a PasswordMessage answering an MD5 request: md5(md5(password + user) + salt)."""
    inner = hashlib.md5((password + user).encode()).hexdigest().encode()
    return b"md5" + hashlib.md5(inner + salt).hexdigest().encode() + b"\0"


def scram_client_first(nonce: str) -> str:
    """The client-first-message-bare. PostgreSQL takes the user from the startup message and
    ignores this one, so it is left empty as libpq does."""
    return f"n=,r={nonce}"


def scram_client_final(password: str, client_first_bare: str, server_first: str) -> tuple[str, str]:
    """The client-final-message answering `server_first`, and the server-final-message the
    server must send back to prove it knows the password too (RFC 5802, RFC 7677).

    The password is used as it is: SASLprep changes nothing in the ASCII passwords the mesh
    generates, and PostgreSQL uses a password that is not valid SASLprep input as it is too."""
    attributes = dict(part.split("=", 1) for part in server_first.split(",") if "=" in part)
    client_nonce = dict(p.split("=", 1) for p in client_first_bare.split(",") if "=" in p)["r"]
    nonce, salt, iterations = attributes.get("r", ""), attributes.get("s"), attributes.get("i")
    if not nonce.startswith(client_nonce) or nonce == client_nonce or not salt or not iterations:
        raise StoreError("the server's SCRAM challenge is malformed")
    salted = hashlib.pbkdf2_hmac(
        "sha256", password.encode(), base64.b64decode(salt), int(iterations)
    )
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    without_proof = f"c={base64.b64encode(GS2_HEADER.encode()).decode()},r={nonce}"
    auth_message = f"{client_first_bare},{server_first},{without_proof}".encode()
    signature = hmac.digest(hashlib.sha256(client_key).digest(), auth_message, "sha256")
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    server_signature = hmac.digest(server_key, auth_message, "sha256")
    return (
        f"{without_proof},p={base64.b64encode(proof).decode()}",
        f"v={base64.b64encode(server_signature).decode()}",
    )


def _authenticate(wire: _Wire, user: str, password: str) -> None:
    """Answer the server's authentication requests until it says AuthenticationOk, then read
    the session's parameters until ReadyForQuery."""
    first_bare = expected_final = ""
    while True:
        kind, body = wire.receive()
        if kind == b"E":
            raise server_error(body)
        if kind != b"R":
            raise StoreError(f"unexpected message {kind!r} while authenticating")
        (code,), data = struct.unpack("!i", body[:4]), body[4:]
        if code == AUTH_OK:
            break
        if code == AUTH_CLEARTEXT:
            wire.send(b"p", password.encode() + b"\0")
        elif code == AUTH_MD5:
            wire.send(b"p", md5_password(user, password, data[:4]))
        elif code == AUTH_SASL and SCRAM.encode() in data.split(b"\0"):
            first_bare = scram_client_first(secrets.token_urlsafe(18))
            first = (GS2_HEADER + first_bare).encode()
            wire.send(b"p", SCRAM.encode() + b"\0" + struct.pack("!i", len(first)) + first)
        elif code == AUTH_SASL_CONTINUE and first_bare:
            final, expected_final = scram_client_final(password, first_bare, data.decode())
            wire.send(b"p", final.encode())
        elif code == AUTH_SASL_FINAL and expected_final:
            if not hmac.compare_digest(data.decode(errors="replace"), expected_final):
                raise StoreError("the server's SCRAM signature is wrong")
        else:
            raise StoreError(f"authentication request {code} is not supported")
    _until_ready(wire)


def _until_ready(wire: _Wire) -> list[list[str | None]]:
    """The data rows until ReadyForQuery; an ErrorResponse is raised once the server is ready
    again, so the connection is left in a known state."""
    rows: list[list[str | None]] = []
    error: ServerError | None = None
    while True:
        try:
            kind, body = wire.receive()
        except StoreError:
            if error is not None:  # a fatal error, and the server hung up: its message says why
                raise error from None
            raise
        if kind == b"D":
            rows.append(data_row(body))
        elif kind == b"E":
            error = error or server_error(body)
        elif kind == b"Z":
            if error is not None:
                raise error
            return rows


def data_row(body: bytes) -> list[str | None]:
    """A DataRow's values as text (the Simple Query protocol's format); None for NULL."""
    (columns,) = struct.unpack("!h", body[:2])
    at, values = 2, list[str | None]()
    for _ in range(columns):
        (size,) = struct.unpack("!i", body[at : at + 4])
        at += 4
        values.append(None if size < 0 else body[at : at + size].decode())
        at += max(size, 0)
    return values


def _query(wire: _Wire, sql: str) -> list[list[str | None]]:
    wire.send(b"Q", sql.encode() + b"\0")
    return _until_ready(wire)


# Redis ---------------------------------------------------------------------------------------


class _RedisSession:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.replies = sock.makefile("rb")


def _redis_visit(env: Mapping[str, str], prefix: str) -> int:
    host, port, password = _address(env, prefix)

    def session() -> _RedisSession:
        opened = _RedisSession(_connected(host, port))
        try:
            if password:
                opened.sock.sendall(resp_command("AUTH", password))
                if redis_reply(opened.replies.readline()) != "OK":
                    raise StoreError("AUTH was not answered with OK")
        except OSError as err:
            opened.sock.close()
            raise StoreError(f"{host}:{port}: {_why(err)}") from err
        except BaseException:
            opened.sock.close()
            raise
        return opened

    def count(opened: _RedisSession) -> int:
        opened.sock.sendall(resp_command("INCR", "visits"))
        found = redis_reply(opened.replies.readline())
        if not isinstance(found, int):
            raise StoreError(f"INCR answered {found!r}")
        return found

    return _POOL.use(("redis", host, port), session, count, f"{host}:{port}")


def resp_command(*args: str) -> bytes:
    """A command as a RESP array of bulk strings (binary-safe, unlike an inline command)."""
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def redis_reply(line: bytes) -> str | int:
    """A simple-string (`+OK`) or integer (`:3`) reply; an error reply (`-ERR ...`) raised."""
    if not line.endswith(b"\r\n"):
        raise StoreError("the server closed the connection")
    kind, text = line[:1], line[1:-2].decode(errors="replace")
    if kind == b"-":
        raise ServerError(text, text.split(" ", 1)[0])
    if kind == b"+":
        return text
    if kind == b":":
        return int(text)
    raise StoreError(f"unexpected reply {line[:40]!r}")
