"""Which services a runtime runs from its built-in PostgreSQL or Redis (pure), and the bytes
the agent's protocol probes send and read."""

from __future__ import annotations

import struct
from types import SimpleNamespace

import pytest

from meshd.agent.reconciler.probes import asks_to_authenticate, redis_command, startup_message
from plugins.runtimes import builtin_datastore
from plugins.runtimes.process.datastores import redis_config_string, sql_literal


@pytest.mark.parametrize(
    ("runtime", "kind", "own", "expected"),
    [
        ("process", "database", {}, "database"),
        ("process", "redis", {}, "redis"),
        ("process", "worker", {}, None),
        # what the examples give Docker (a stand-in image) is no business of the process runtime
        ("process", "database", {"build_context": "app", "command": "serve DB_PORT"}, "database"),
        ("process", "database", {"image": "postgres:16"}, "database"),
        ("process", "database", {"process_command": "python3 db.py"}, None),
        ("process", "redis", {"command": "my-redis --port 1"}, None),
        ("docker", "database", {}, "database"),
        ("docker", "database", {"process_command": "python3 db.py"}, "database"),
        ("docker", "database", {"build_context": "app", "command": "serve DB_PORT"}, None),
        ("docker", "redis", {"image": "redis:7"}, None),
    ],
)
def test_a_runtime_runs_its_own_datastore_unless_the_service_names_what_to_run_there(
    runtime: str, kind: str, own: dict[str, str], expected: str | None
) -> None:
    fields: dict[str, str | None] = {
        "image": None,
        "build_context": None,
        "command": None,
        "process_command": None,
    }
    service = SimpleNamespace(service_kind=kind, **(fields | own))
    assert builtin_datastore(runtime, service) == expected


def test_a_startup_message_is_protocol_3_with_user_and_database() -> None:
    message = startup_message("meshd_probe", "postgres")
    (length,) = struct.unpack("!I", message[:4])
    assert length == len(message)
    assert message[4:8] == struct.pack("!I", 196608)
    assert message[8:] == b"user\0meshd_probe\0database\0postgres\0\0"
    assert asks_to_authenticate(b"R\0\0\0\x17\0\0\0\x0aSCRAM-SHA-256")
    assert not asks_to_authenticate(b"E\0\0\0\x50SFATAL")  # "the database system is starting up"
    assert not asks_to_authenticate(b"")  # closed without a word


def test_redis_commands_are_resp_arrays_of_bulk_strings() -> None:
    assert redis_command(b"AUTH", b"p w") == b"*2\r\n$4\r\nAUTH\r\n$3\r\np w\r\n"
    assert redis_command(b"PING") == b"*1\r\n$4\r\nPING\r\n"


def test_passwords_are_quoted_for_sql_and_for_redis_configuration() -> None:
    assert sql_literal(b"it's") == "'it''s'"
    assert sql_literal(b"back\\slash") == "'back\\slash'"  # standard_conforming_strings
    assert redis_config_string(b'a "b" \\c') == '"a \\x22b\\x22 \\x5cc"'
    assert redis_config_string("é".encode()) == '"\\xc3\\xa9"'
