"""The example app's visit counter against a real PostgreSQL 15 and a real redis-server (one
each per test session): hello.py, run as the process runtime runs it, counts each visit to `/`
in both and shows the totals; a wrong password or a store that hangs up shows why on a page
that still answers; `/health`, an instance given no passwords and a stand-in datastore touch no
store. The SCRAM computation matches RFC 7677's example, and the wire parsers their cases."""

from __future__ import annotations

import contextlib
import html
import re
import shutil
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import free_port
from tests.support.datastores import Datastore, postgres_server, redis_server  # noqa: F401
from tests.support.example_app import APP, load_visits
from tests.support.waiting import wait_for

ADDRESS = "127.0.0.1"
# The process runtime runs `python3 hello.py` with the system's python, which has no packages
# beyond the standard library: so does this test, where there is one.
PYTHON = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin") or sys.executable
COUNTS = re.compile(r"visits: database (\d+), redis (\d+)")


visits = load_visits()


class Tripwire:
    """A port that counts who connects, reads their first words and hangs up: proof that a
    store was asked."""

    def __init__(self) -> None:
        self.sock = socket.create_server((ADDRESS, 0))
        self.sock.settimeout(0.05)
        self.port: int = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._hang_up, daemon=True)
        self._thread.start()

    def _hang_up(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            with conn:
                # Read the request first: closing on unread data would reset the connection.
                conn.settimeout(2)
                with contextlib.suppress(OSError):
                    conn.recv(65536)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def tripwire() -> Iterator[Tripwire]:
    wire = Tripwire()
    yield wire
    wire.close()


def write_secret(directory: Path, name: str, value: str) -> str:
    path = directory / name
    path.touch(mode=0o600)
    path.write_text(value + "\n")  # a trailing newline the app must strip
    return str(path)


def store_environment(
    directory: Path,
    postgres: Datastore,
    redis: Datastore,
    *,
    passwords: bool = True,
    db_password: str | None = None,
    redis_password: str | None = None,
) -> dict[str, str]:
    """DB_* and REDIS_* as the mesh sets them, with password files unless `passwords` is
    false (a service whose config lists no secret); `*_password` replaces one."""
    env = {
        **{"DB_HOST": postgres.host, "DB_PORT": str(postgres.port)},
        **{"DB_USER": postgres.user, "DB_NAME": postgres.database},
        **{"REDIS_HOST": redis.host, "REDIS_PORT": str(redis.port)},
    }
    if passwords:
        db, rd = db_password or postgres.password, redis_password or redis.password
        env["DB_PASSWORD_FILE"] = write_secret(directory, "db_password", db)
        env["REDIS_PASSWORD_FILE"] = write_secret(directory, "redis_password", rd)
    return env


def tripwire_store(tripwire: Tripwire) -> Datastore:
    return Datastore(ADDRESS, tripwire.port, "meshapp", "meshapp", "not-asked")


def get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=15) as answer:
        return answer.status, html.unescape(answer.read().decode())


def answers(url: str) -> bool:
    with contextlib.suppress(OSError):
        return get(url)[0] == 200
    return False


@contextlib.contextmanager
def running_hello(directory: Path, env: dict[str, str], *args: str) -> Iterator[str]:
    """hello.py as the process runtime starts it; its URL once `/health` answers."""
    env = {
        "PATH": "/usr/bin:/bin",
        "SERVICE_HOST": ADDRESS,
        "SERVICE_PORT": str(free_port(ADDRESS)),
        **{"SERVICE_NAME": "shop-prod-backend", "PROJECT": "shop", "ENVIRONMENT": "prod"},
        **env,
    }
    port = env["REDIS_PORT"] if "REDIS_PORT" in args else env["SERVICE_PORT"]
    url = f"http://{ADDRESS}:{port}"
    with (directory / "hello.log").open("ab") as log:
        process = subprocess.Popen(
            [PYTHON, "hello.py", *args], cwd=APP, env=env, stdout=log, stderr=log
        )
    try:
        wait_for(lambda: answers(f"{url}/health"), timeout=20, what="hello.py answering")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def counts(page: str) -> tuple[int, int]:
    found = COUNTS.search(page)
    assert found is not None, f"no visit counts on the page: {page}"
    return int(found[1]), int(found[2])


def test_each_visit_to_the_page_counts_one_more_in_the_database_and_in_redis(
    postgres_server: Datastore,  # noqa: F811
    redis_server: Datastore,  # noqa: F811
    tmp_path: Path,
) -> None:
    env = store_environment(tmp_path, postgres_server, redis_server)
    with running_hello(tmp_path, env) as url:
        status, first = get(f"{url}/")
        assert status == 200
        assert "project shop, environment prod" in first
        assert "secrets given: db_password, redis_password" in first
        database, redis = counts(first)
        assert database >= 1
        assert redis >= 1
        assert counts(get(f"{url}/")[1]) == (database + 1, redis + 1)
    assert "unavailable" not in first


def test_a_wrong_password_shows_the_servers_reason_on_a_page_that_still_answers(
    postgres_server: Datastore,  # noqa: F811
    redis_server: Datastore,  # noqa: F811
    tmp_path: Path,
) -> None:
    env = store_environment(
        tmp_path, postgres_server, redis_server, db_password="nope", redis_password="nope"
    )
    with running_hello(tmp_path, env) as url:
        status, page = get(f"{url}/")
    assert status == 200
    assert "shop-prod-backend" in page
    assert 'database: unavailable (password authentication failed for user "meshapp")' in page
    assert "redis: unavailable (WRONGPASS invalid username-password pair" in page
    assert "visits:" not in page
    assert postgres_server.password not in page
    assert redis_server.password not in page


def test_a_store_that_hangs_up_is_shown_unavailable_and_health_never_asks_one(
    tripwire: Tripwire, tmp_path: Path
) -> None:
    store = tripwire_store(tripwire)
    with running_hello(tmp_path, store_environment(tmp_path, store, store)) as url:
        for _ in range(3):
            assert get(f"{url}/health")[0] == 200
        assert tripwire.connections == 0
        status, page = get(f"{url}/")
    assert status == 200
    assert "database: unavailable (the server closed the connection)" in page
    assert "redis: unavailable (the server closed the connection)" in page
    assert tripwire.connections == 2


def test_an_instance_given_no_passwords_counts_nothing_and_asks_no_store(
    tripwire: Tripwire, tmp_path: Path
) -> None:
    store = tripwire_store(tripwire)
    env = store_environment(tmp_path, store, store, passwords=False)
    with running_hello(tmp_path, env) as url:
        status, page = get(f"{url}/")
    assert status == 200
    assert "visits" not in page
    assert "unavailable" not in page
    assert tripwire.connections == 0


def test_a_stand_in_datastore_counts_nothing_though_it_has_the_password(
    tripwire: Tripwire, tmp_path: Path
) -> None:
    env = store_environment(tmp_path, tripwire_store(tripwire), tripwire_store(tripwire))
    env["REDIS_PORT"] = str(free_port(ADDRESS))  # its own port, as the mesh gives it
    with running_hello(tmp_path, env, "--port-from", "REDIS_PORT") as url:
        status, page = get(f"{url}/")
    assert status == 200
    assert "visits" not in page
    assert tripwire.connections == 0


def test_counting_goes_up_by_one_per_call_without_a_web_server(
    postgres_server: Datastore,  # noqa: F811
    redis_server: Datastore,  # noqa: F811
    tmp_path: Path,
) -> None:
    env = store_environment(tmp_path, postgres_server, redis_server)
    first = dict(visits.count_visit(env).counts)
    second = dict(visits.count_visit(env).counts)
    assert second == {"database": first["database"] + 1, "redis": first["redis"] + 1}


def test_an_unreachable_store_is_reported_with_where_and_why(tmp_path: Path) -> None:
    closed = free_port(ADDRESS)
    store = Datastore(ADDRESS, closed, "meshapp", "meshapp", "secret")
    lines = visits.count_visit(store_environment(tmp_path, store, store)).lines()
    assert lines == [
        f"database: unavailable (connect to {ADDRESS}:{closed}: Connection refused)",
        f"redis: unavailable (connect to {ADDRESS}:{closed}: Connection refused)",
    ]


def test_missing_settings_are_reported_and_no_password_file_means_no_line(tmp_path: Path) -> None:
    secret = write_secret(tmp_path, "db_password", "secret")
    assert visits.count_visit({"DB_HOST": ADDRESS, "DB_PORT": "5432"}).lines() == []
    assert visits.count_visit({"DB_PASSWORD_FILE": secret, "DB_PORT": "5432"}).lines() == [
        "database: unavailable (DB_HOST is not set)"
    ]
    missing = {"REDIS_PASSWORD_FILE": str(tmp_path / "nothing"), "REDIS_HOST": ADDRESS}
    assert visits.count_visit({**missing, "REDIS_PORT": "6379"}).lines() == [
        "redis: unavailable (read REDIS_PASSWORD_FILE: No such file or directory)"
    ]


RFC_7677_SERVER_FIRST = (
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)


def test_the_scram_answer_matches_the_rfc_7677_example() -> None:
    final, server_final = visits.scram_client_final(
        "pencil", "n=user,r=rOprNGfwEbeRWgbNEkqO", RFC_7677_SERVER_FIRST
    )
    assert final == (
        "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    )
    assert server_final == "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


@pytest.mark.parametrize(
    "server_first",
    [
        "r=someoneElsesNonce,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",  # not the client's nonce
        "r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",  # nothing of the server's
        "r=rOprNGfwEbeRWgbNEkqO%hvYD,i=4096",  # no salt
    ],
)
def test_the_scram_answer_refuses_a_malformed_challenge(server_first: str) -> None:
    with pytest.raises(visits.StoreError, match="malformed"):
        visits.scram_client_final("pencil", "n=user,r=rOprNGfwEbeRWgbNEkqO", server_first)


@pytest.mark.parametrize(("line", "value"), [(b"+OK\r\n", "OK"), (b":42\r\n", 42), (b":0\r\n", 0)])
def test_redis_replies_are_read(line: bytes, value: str | int) -> None:
    assert visits.redis_reply(line) == value


def test_a_redis_error_reply_is_raised_with_its_message_and_code() -> None:
    with pytest.raises(visits.ServerError) as raised:
        visits.redis_reply(b"-WRONGPASS invalid username-password pair\r\n")
    assert raised.value.reason == "WRONGPASS invalid username-password pair"
    assert raised.value.code == "WRONGPASS"


def test_the_postgres_wire_encodings() -> None:
    assert visits.message(b"Q", b"SELECT 1\0") == b"Q\0\0\0\x0dSELECT 1\0"
    assert visits.startup_message("u", "d") == (b"\0\0\0\x1b\0\x03\0\0user\0u\0database\0d\0\0")
    assert visits.data_row(b"\0\x02\0\0\0\x013\xff\xff\xff\xff") == ["3", None]
    error = b"SFATAL\0C28P01\0Mpassword authentication failed\0\0"
    raised = visits.server_error(error)
    assert (raised.reason, raised.code) == ("password authentication failed", "28P01")
