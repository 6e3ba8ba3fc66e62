"""Secrets on a real local mesh (docs/secrets.md): a canary set with `meshctl secret set`
reaches exactly the instances that use it, as a file, and appears nowhere else (no file of any
droplet, nats-server store, log or snapshot; no event, status, environment or command line);
the narrowest scope wins; database passwords exist without anyone setting them; a droplet
that does not run the service cannot open what is sealed to another; rotation rolls the
service with no request lost; a rebuilt droplet gets a new key and its secrets sealed again;
bad input changes nothing."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from meshd.agent.sealkey import KEY_FILE
from meshd.agent.store.jetstream import NatsStore
from meshd.core.sealing import (
    KeyPair,
    SealError,
    entry_context,
    from_text,
    open_mesh_key,
    open_sealed,
    open_value,
)
from protocol import subjects
from protocol.codec import decode
from protocol.errors import MeshError
from protocol.secrets import SealedSecret, SecretValue
from tests.support.mesh import ROOT, LocalMesh, local_mesh, write_project
from tests.support.waiting import wait_for

APP = {"command": f"{sys.executable} {ROOT / 'tests' / 'support' / 'httpapp.py'}"}
SERVICES: dict[str, Any] = {
    "backend": APP | {"secrets": ["api_key", "db_password"], "env_template": "backend.env"},
    "frontend": {"enabled": False},
    "database": {"enabled": False},
    "redis": {"enabled": False},
}
CANARY = "canary-" + os.urandom(8).hex()  # the project's value
PROD_CANARY = "prodcanary-" + os.urandom(8).hex()  # prod's own, narrower
SECRET_FILES = f"{os.sep}secrets{os.sep}"


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def secret_digests(mesh: LocalMesh, env: str, name: str = "api_key") -> set[str]:
    """The SHA-256 of the secret file of every instance of shop's `env` backend."""
    service = next(s for s in mesh.status()["services"] if s["env"] == env)
    found = set()
    for upstream in service["upstream"] or []:
        with urllib.request.urlopen(f"http://{upstream}/secret/{name}", timeout=5) as reply:
            found.add(reply.read().decode())
    return found


def all_healthy(mesh: LocalMesh) -> bool:
    status = mesh.status_if_readable()
    return bool(status) and all(s["healthy"] == s["desired"] > 0 for s in status["services"])


def droplet_key(mesh: LocalMesh, droplet: str) -> KeyPair:
    data = json.loads((mesh.droplet_dir(droplet) / "agent" / KEY_FILE).read_text())
    return KeyPair.from_private(from_text(data["private"]))


def sealed_entry(mesh: LocalMesh, key: str) -> SealedSecret | None:
    """The entry sealed at `key`, or None while there is none or the store elects."""

    async def read(store: NatsStore) -> SealedSecret | None:
        entry = await store.get(subjects.SECRETS_BUCKET, key)
        return decode(entry.value, SealedSecret) if entry and entry.value else None

    try:
        return mesh.in_store(read)
    except MeshError:
        return None


def places_holding(root: Path, needle: bytes) -> list[str]:
    """Every file under `root` whose bytes contain `needle`, but the secret files of
    instances (where it belongs)."""
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and SECRET_FILES not in str(path):
            try:
                if needle in path.read_bytes():
                    found.append(str(path.relative_to(root)))
            except OSError:
                continue
    return found


def processes_holding(needle: bytes) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            for part in ("environ", "cmdline"):
                try:
                    if needle in (proc / part).read_bytes():
                        found.append(int(proc.name))
                except OSError:
                    continue
    return found


def refuses_bad_input(mesh: LocalMesh) -> None:
    """Clear errors, exit 2, nothing stored."""
    for args, stdin, said in (
        (("nope", "api_key"), "x", "no project 'nope' is published"),
        (("shop", "api_key"), "", "is empty"),
        (("shop", "Api-Key"), "x", "is not valid"),
        (("shop", "staging", "api_key"), "x", "is not one of"),
        (("api_key",), "x", "--mesh NAME"),
    ):
        refused = mesh.meshctl("secret", "set", *args, input=stdin)
        assert refused.returncode == 2 and said in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
    listed = wait_for(
        lambda: (r := mesh.meshctl("secret", "list", "--json")).returncode == 0 and r,
        what="the secrets readable (JetStream grows to three servers meanwhile)",
    )
    assert "api_key" not in listed.stdout


def environments(mesh: LocalMesh, env: str) -> list[dict[str, str]]:
    """The environment of every instance of shop's `env` backend."""
    service = next(s for s in mesh.status()["services"] if s["env"] == env)
    found = []
    for upstream in service["upstream"] or []:
        with urllib.request.urlopen(f"http://{upstream}/env", timeout=5) as reply:
            found.append(json.loads(reply.read()))
    return found


def levels(mesh: LocalMesh, env: str) -> set[str] | None:
    """LEVEL in each instance of shop's `env` backend; None while one does not answer."""
    try:
        return {i["LEVEL"] for i in environments(mesh, env)}
    except OSError:
        return None


def settings_reach_the_instances(mesh: LocalMesh) -> None:
    """The env_template's variables, then the project's and prod's own (`meshctl config`),
    each narrower one winning, none over the mesh's; secret files named by variables."""
    for instance in environments(mesh, "prod"):
        assert instance["LEVEL"] == "template" and instance["TEMPLATE_ONLY"] == "t"
        assert instance["DB_PASSWORD_FILE"] == instance["SECRETS_DIR"] + "/db_password"
    for args, said in (
        (("nope", "A=1"), "no project 'nope' is published"),
        (("shop", "DB_HOST=x"), "set by the mesh itself"),
        (("shop", "prod", "lower-case=1"), "not a variable name"),
        (("shop", "prod"), "at least one KEY=VALUE"),
    ):
        refused = mesh.meshctl("config", "set", *args)
        assert refused.returncode == 2 and said in refused.stderr, refused.stderr
    changed = json.loads(mesh.ok("config", "set", "shop", "LEVEL=project", "--json"))
    assert sorted(changed["rolled"]) == [
        "shop.prod.backend",
        "shop.test.backend",
        "shop.uat.backend",
    ]

    def set_prod() -> None:
        mesh.ok("config", "set", "shop", "prod", "LEVEL=prod")
        wait_for(
            lambda: levels(mesh, "prod") == {"prod"} and all_healthy(mesh),
            timeout=120,
            what="prod rolled onto its own LEVEL",
        )

    loses_no_request(mesh, set_prod)
    wait_for(lambda: levels(mesh, "uat") == {"project"}, timeout=120, what="uat rolled")
    listed = [json.loads(line) for line in mesh.ok("config", "list", "shop", "--json").splitlines()]
    assert {(r["source"], r["name"], r["value"]) for r in listed} == {
        ("template:backend", "LEVEL", "template"),
        ("template:backend", "TEMPLATE_ONLY", "t"),
        ("project", "LEVEL", "project"),
        ("env", "LEVEL", "prod"),
    }
    unset = json.loads(mesh.ok("config", "unset", "shop", "prod", "LEVEL", "--json"))
    assert unset["rolled"] == ["shop.prod.backend"]  # back to the project's value
    wait_for(lambda: levels(mesh, "prod") == {"project"}, timeout=120, what="prod unset")


def escrow_opens_the_values(mesh: LocalMesh, out: Path) -> None:
    """The escrow key is handed out once; with it and the bucket, a value opens."""
    exported = json.loads(mesh.ok("secret", "export-key", "--out", out, "--json"))
    assert exported["escrowed"] and stat.S_IMODE(out.stat().st_mode) == 0o600
    again = mesh.meshctl("secret", "export-key", "--json")
    assert again.returncode == 2 and "it is given once" in again.stderr, again.stderr
    document = json.loads(out.read_text())
    assert document["fingerprint"] == exported["fingerprint"]
    escrow = KeyPair.from_private(from_text(document["private"]))
    value_key = subjects.secret_value_key("api_key", "shop")

    async def read(store: NatsStore) -> tuple[SealedSecret, SecretValue]:
        escrowed = await store.get(subjects.SECRETS_BUCKET, subjects.ESCROWED_MESH_KEY)
        value = await store.get(subjects.SECRETS_BUCKET, value_key)
        assert escrowed and escrowed.value and value and value.value
        return decode(escrowed.value, SealedSecret), decode(value.value, SecretValue)

    escrowed, value = mesh.in_store(read)
    mesh_key = open_mesh_key(escrow, "escrow", escrowed.key, escrowed.sealed)
    assert open_value(mesh_key, value_key, value.version, value.sealed) == CANARY.encode()


def rotation_loses_no_request(mesh: LocalMesh) -> None:
    before = secret_digests(mesh, "prod")

    def rotate() -> None:
        rotated = json.loads(mesh.ok("secret", "rotate", "shop", "prod", "api_key", "--json"))
        assert rotated["version"] == 2 and rotated["rolled"] == ["shop.prod.backend"]
        wait_for(
            lambda: (d := secret_digests(mesh, "prod")) and len(d) == 1 and d != before,
            timeout=120,
            what="prod rolled onto the rotated value",
        )

    loses_no_request(mesh, rotate)


def loses_no_request(mesh: LocalMesh, change: Callable[[], object]) -> None:
    url = mesh.status()["entry_url"] + "/shop-prod/backend/"
    counts, done = {"ok": 0, "failed": 0}, threading.Event()

    def hammer() -> None:
        while not done.is_set():
            try:
                with urllib.request.urlopen(url, timeout=5) as reply:
                    reply.read()
                counts["ok"] += 1
            except (urllib.error.URLError, OSError):
                counts["failed"] += 1
            time.sleep(0.02)

    thread = threading.Thread(target=hammer, daemon=True)
    thread.start()
    try:
        change()
    finally:
        done.set()
    thread.join()
    assert counts["ok"] > 50 and counts["failed"] == 0, counts


def found_nowhere_else(mesh: LocalMesh, canary: str) -> None:
    """Not in any file of the mesh (stores, logs, snapshots, configs), not in the events or
    the status, not in any process's environment or command line."""
    assert places_holding(mesh.home, canary.encode()) == []
    assert canary not in mesh.ok("events", "-n", "1000", "--json")
    assert canary not in mesh.ok("status", "--json")
    assert processes_holding(canary.encode()) == []


def rebuilt_with_a_new_key(mesh: LocalMesh, web: str, key: str) -> None:
    """A rebuilt droplet has a new key; its secrets are sealed again to it, not the old one."""
    old_key = droplet_key(mesh, web)
    killed = time.time()
    mesh.ok("chaos", "kill", web)
    wait_for(lambda: mesh.recovered(web, killed), timeout=120, what=f"{web} rebuilt")
    new_key = droplet_key(mesh, web)
    assert new_key.public != old_key.public
    resealed = wait_for(
        lambda: (s := sealed_entry(mesh, key)) and s.key == new_key.fingerprint and s,
        timeout=60,
        what="the secret sealed to the new key",
    )
    box, bound = from_text(resealed.sealed), entry_context(key, resealed.version)
    assert open_sealed(new_key, box, bound) != PROD_CANARY.encode()  # the rotated value
    with pytest.raises(SealError):
        open_sealed(old_key, box, bound)
    wait_for(lambda: all_healthy(mesh), timeout=120, what="healthy again")


def test_a_canary_reaches_only_its_service_and_survives_rotation_and_rebuild(
    tmp_path: Path,
) -> None:
    csv, config = write_project(tmp_path, ["shop,3,s-1vcpu-2gb,s-1vcpu-1gb"], SERVICES)
    (tmp_path / "backend.env").write_text("# plain settings\nLEVEL=template\nTEMPLATE_ONLY=t\n")
    with local_mesh(tmp_path / "mesh") as mesh:
        mesh.ok("publish", csv, "--deploy-config", config)  # no --wait: api_key is not set
        # Three droplets: JetStream moves to three servers first (reads wait meanwhile).
        wait_for(
            lambda: (s := mesh.status_if_readable()) and s["jetstream"]["replicas"] == 3,
            timeout=180,
            what="JetStream on three droplets",
        )
        refuses_bad_input(mesh)

        mesh.ok("secret", "set", "shop", "api_key", input=CANARY)
        mesh.ok("secret", "set", "shop", "prod", "api_key", input=PROD_CANARY + "\n")
        wait_for(lambda: all_healthy(mesh), timeout=120, what="every backend with its secrets")

        # The narrowest scope wins; a trailing newline from stdin is not part of the value.
        assert secret_digests(mesh, "prod") == {digest(PROD_CANARY)}
        assert secret_digests(mesh, "uat") == secret_digests(mesh, "test") == {digest(CANARY)}
        listed = [json.loads(line) for line in mesh.ok("secret", "list", "--json").splitlines()]
        generated = {(s["project"], s["env"]) for s in listed if s["name"] == "db_password"}
        assert generated == {("shop", "prod"), ("shop", "uat"), ("shop", "test")}
        assert all(s["generated"] for s in listed if s["name"] == "db_password")
        assert secret_digests(mesh, "prod", "db_password")  # each instance has the file
        project_wide = next(s for s in listed if s["name"] == "api_key" and s["env"] is None)
        assert project_wide["used_by"] == ["shop.test.backend", "shop.uat.backend"]

        # Sealed to the droplet that runs the service: its key opens it, another's does not.
        web = next(s for s in mesh.status()["services"] if s["env"] == "prod")["droplets"][0]
        key = subjects.sealed_key(web, "api_key", "shop", "prod")
        sealed = sealed_entry(mesh, key)
        assert sealed is not None
        box, bound = from_text(sealed.sealed), entry_context(key, sealed.version)
        assert open_sealed(droplet_key(mesh, web), box, bound) == PROD_CANARY.encode()
        with pytest.raises(SealError):
            open_sealed(droplet_key(mesh, "master"), box, bound)

        escrow_opens_the_values(mesh, tmp_path / "escrow.key")
        settings_reach_the_instances(mesh)
        rotation_loses_no_request(mesh)
        for canary in (CANARY, PROD_CANARY):
            found_nowhere_else(mesh, canary)
        rebuilt_with_a_new_key(mesh, web, key)
