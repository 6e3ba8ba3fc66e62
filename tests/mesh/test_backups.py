"""Backups on a real local mesh (process runtime, real PostgreSQL and Redis): the `backups`
leader backs each datastore up on schedule and when asked, where it runs, encrypted to the
mesh key; `backup list` shows them; a restore asks for --force, takes a safety backup and
brings the data back as it was, into its own environment or another (`--into test`)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from protocol import subjects
from tests.mesh.test_datastores import SERVICES, visits
from tests.support.mesh import LocalMesh, local_mesh, write_project
from tests.support.seaweedfs import SeaweedS3, seaweedfs  # noqa: F401
from tests.support.waiting import wait_for


def backups(mesh: LocalMesh) -> list[dict[str, Any]]:
    return [json.loads(line) for line in mesh.ok("backup", "list", "--json").splitlines()]


def events(mesh: LocalMesh, name: str) -> list[dict[str, Any]]:
    result = mesh.meshctl("events", "-n", "500", "--json")
    found = [json.loads(line) for line in result.stdout.splitlines() if line]
    return [e for e in found if e["name"] == name]


def test_datastores_are_backed_up_listed_and_restored_with_a_safety_backup(
    tmp_path: Path,
) -> None:
    csv, config = write_project(tmp_path, ["shop,1,s-1vcpu-2gb,s-1vcpu-1gb"], SERVICES)
    with local_mesh(tmp_path / "mesh") as mesh:
        mesh.ok("publish", csv, "--deploy-config", config, "--wait", timeout=240)
        every = {f"shop.{e}.{s}" for e in ("prod", "uat", "test") for s in ("database", "redis")}
        every |= {"mesh.mesh.state", "mesh.mesh.secrets"}

        def first_backups() -> list[dict[str, Any]] | None:
            found = events(mesh, "backup_taken")
            return found if {e["subject"] for e in found} == every else None

        scheduled = wait_for(
            first_backups,
            timeout=120,
            what="the first scheduled backup of the six datastores and of the mesh itself",
        )
        assert {e["detail"]["why"] for e in scheduled} == {"scheduled"}
        status = mesh.status()
        url = status["entry_url"] + "/shop-prod/backend/"
        test_url = status["entry_url"] + "/shop-test/backend/"
        before = wait_for(lambda: visits(url), timeout=60, what="a page that counted")

        taken = json.loads(mesh.ok("backup", "now", "shop", "prod", "--json", timeout=300))
        database = next(k for k in taken["taken"] if k.startswith("database/shop/prod/"))
        assert any(k.startswith("redis/shop/prod/redis/") for k in taken["taken"])
        listed = {b["key"]: b for b in backups(mesh)}
        assert listed[database]["size_bytes"] > 0 and len(listed[database]["sha256"]) == 64
        rows = {(r["env"], r["service"]): r for r in mesh.status()["backups"]}
        assert len(rows) == 6 and rows["prod", "database"]["last"] == database
        assert not any(r["overdue"] for r in rows.values())
        for _ in range(3):
            visits(url)

        refused = mesh.meshctl("backup", "restore", "shop", "prod", database)
        assert refused.returncode == 2 and "--force" in refused.stderr
        out = mesh.ok("backup", "restore", "shop", "prod", database, "--force", timeout=600)
        assert "what it had is in database/shop/prod/database/" in " ".join(out.split())
        # The database is back as it was at the backup (Redis was not restored: it went on).
        after = wait_for(lambda: visits(url), timeout=60, what="a page after the restore")
        assert after[0] == before[0] + 1
        assert after[1] > before[1] + 3

        # prod's data into test: test's backend counts on from prod's visits.
        mesh.ok(
            "backup", "restore", "shop", "prod", database, "--into", "test", "--force", timeout=600
        )
        in_test = wait_for(lambda: visits(test_url), timeout=60, what="test's page")
        assert in_test[0] == before[0] + 1
        restored = events(mesh, "backup_restored")
        assert [e["subject"] for e in restored] == ["shop.prod.database", "shop.test.database"]
        assert all(e["detail"]["safety"] for e in restored)

        # A drill: prod's newest backups load into scratch instances and are counted.
        drilled = mesh.ok("backup", "verify", "shop", "prod", "--json", timeout=600)
        verified = {
            json.loads(line)["key"].split("/")[0]: json.loads(line) for line in drilled.splitlines()
        }
        assert set(verified) == {"database", "redis"}
        assert all(v["ok"] for v in verified.values()), verified
        assert verified["database"]["counted"]["tables"]["public.visits"] > 0
        assert verified["redis"]["counted"]["keys"] == 1  # the visits counter
        assert len(events(mesh, "backup_verified")) == 2


def test_backups_kept_in_s3_are_stored_there_listed_and_restored_from_there(
    tmp_path: Path,
    seaweedfs: SeaweedS3,  # noqa: F811
) -> None:
    csv, config = write_project(tmp_path, ["shop,1,s-1vcpu-2gb,s-1vcpu-1gb"], SERVICES)
    prefix = f"mesh-{uuid.uuid4().hex[:8]}"
    with local_mesh(tmp_path / "mesh") as mesh:
        mesh.ok("secret", "set", "--mesh", "s3_secret_key", input=seaweedfs.secret_key)
        mesh.ok(
            "backup",
            "target",
            "s3",
            "--endpoint",
            seaweedfs.endpoint,
            "--bucket",
            seaweedfs.bucket,
            "--access-key",
            seaweedfs.access_key,
            "--prefix",
            prefix,
        )
        assert "s3" in mesh.ok("backup", "target")
        mesh.ok("publish", csv, "--deploy-config", config, "--wait", timeout=240)
        url = mesh.status()["entry_url"] + "/shop-prod/backend/"
        before = wait_for(lambda: visits(url), timeout=60, what="a page that counted")

        taken = json.loads(
            mesh.ok("backup", "now", "shop", "prod", "database", "--json", timeout=300)
        )
        (key,) = taken["taken"]
        client = seaweedfs.client()
        stored = client.list_objects_v2(Bucket=seaweedfs.bucket, Prefix=f"{prefix}/")
        assert f"{prefix}/{key}" in [o["Key"] for o in stored.get("Contents", [])]
        assert key in {b["key"] for b in backups(mesh)}
        # It left the mesh's own store: what is there is only on its way (none now).
        assert not [b for b in mesh.in_store(staged) if b.startswith("database/")]

        visits(url)
        mesh.ok("backup", "restore", "shop", "prod", key, "--force", timeout=600)
        after = wait_for(lambda: visits(url), timeout=60, what="a page after the restore")
        assert after[0] == before[0] + 1


async def staged(store: Any) -> list[str]:
    return sorted(await store.object_names(subjects.BACKUPS_STORE))
