"""Losing the whole mesh (docs/backups.md): a mesh that keeps its backups in S3 (SeaweedFS) and
whose key is escrowed is destroyed with its data; a new mesh made with `meshctl backup
restore-mesh` from that bucket and the escrow key has its published spec, its secrets (a
service gets the same value) and its datastores' rows back."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from meshd.core.sealing import KeyPair, to_text
from tests.mesh.test_datastores import visits
from tests.support.mesh import ROOT, LocalMesh, hello, local_mesh, write_project
from tests.support.seaweedfs import SeaweedS3, seaweedfs  # noqa: F401
from tests.support.waiting import wait_for

APP = {"command": f"{sys.executable} {ROOT / 'tests' / 'support' / 'httpapp.py'}"}
SERVICES: dict[str, Any] = {
    "backend": hello() | {"secrets": ["db_password", "redis_password"]},
    "frontend": APP | {"secrets": ["api_key"]},
    # database and redis: the seed's defaults, the built-in ones
}
API_KEY = "restored-" + os.urandom(8).hex()


def secret_digest(mesh: LocalMesh) -> str | None:
    """The SHA-256 of prod's frontend's `api_key` file, as the service reads it."""
    service = next(
        s for s in mesh.status()["services"] if (s["env"], s["service"]) == ("prod", "frontend")
    )
    for upstream in service["upstream"] or []:
        try:
            with urllib.request.urlopen(f"http://{upstream}/secret/api_key", timeout=5) as reply:
                return str(reply.read().decode())
        except OSError:
            return None
    return None


def prod_url(mesh: LocalMesh) -> str:
    return str(mesh.status()["entry_url"]) + "/shop-prod/backend/"


def test_a_lost_mesh_is_made_again_from_its_s3_backups_with_the_escrow_key(
    tmp_path: Path,
    seaweedfs: SeaweedS3,  # noqa: F811
) -> None:
    csv, config = write_project(tmp_path, ["shop,1,s-1vcpu-2gb,s-1vcpu-1gb"], SERVICES)
    prefix = f"lost-{uuid.uuid4().hex[:8]}"
    s3 = ["--endpoint", seaweedfs.endpoint, "--bucket", seaweedfs.bucket,
          "--access-key", seaweedfs.access_key, "--prefix", prefix]  # fmt: skip
    escrow = tmp_path / "escrow.json"

    with local_mesh(tmp_path / "lost") as lost:
        lost.ok("secret", "set", "--mesh", "s3_secret_key", input=seaweedfs.secret_key)
        lost.ok("secret", "set", "--mesh", "api_key", input=API_KEY)
        lost.ok("backup", "target", "s3", *s3)
        lost.ok("publish", csv, "--deploy-config", config, "--wait", timeout=240)
        wait_for(lambda: visits(prod_url(lost)), timeout=60, what="a page that counted")
        for _ in range(3):
            visits(prod_url(lost))
        counted = visits(prod_url(lost))
        assert counted is not None
        assert secret_digest(lost) == hashlib.sha256(API_KEY.encode()).hexdigest()
        lost.ok("secret", "export-key", "--out", escrow)
        taken = json.loads(lost.ok("backup", "now", "shop", "prod", "--json", timeout=300))
        database = next(k for k in taken["taken"] if k.startswith("database/shop/prod/"))
        documents = json.loads(lost.ok("backup", "now", "--mesh", "--json", timeout=300))
        assert sorted(k.split("/")[0] for k in documents["taken"]) == ["secrets", "state"]
        stored = seaweedfs.client().list_objects_v2(Bucket=seaweedfs.bucket, Prefix=prefix)
        assert f"{prefix}/escrow/mesh-key" in [o["Key"] for o in stored.get("Contents", [])]
        # `backup list` and `status` know no backup of that name.
        listed = [json.loads(line) for line in lost.ok("backup", "list", "--json").splitlines()]
        assert "escrow/mesh-key" not in {b["key"] for b in listed}
    # Gone: its droplets, its store and its datastores' data (`down --delete-data`).

    with local_mesh(tmp_path / "new") as new:
        other = KeyPair.new()  # an escrow key, but not the lost mesh's
        wrong = tmp_path / "wrong.json"
        wrong.write_text(json.dumps({"format": "meshd-escrow-key/1", "mesh": "x",
                                     "private": to_text(other.private)}))  # fmt: skip
        refused = new.meshctl("backup", "restore-mesh", "s3", *s3, "--escrow-key", wrong,
                              input=seaweedfs.secret_key)  # fmt: skip
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
        assert f"not to the one given ({other.fingerprint})" in " ".join(refused.stderr.split())
        assert "objects" in new.ok("backup", "target")  # nothing changed: still its own

        result = new.meshctl("backup", "restore-mesh", "s3", *s3, "--escrow-key", escrow,
                             "--json", input=seaweedfs.secret_key, timeout=1200)  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        done = json.loads(result.stdout)
        assert seaweedfs.secret_key not in result.stdout + result.stderr
        # s3_secret_key, api_key and each environment's generated passwords
        assert done["spec_revision"] and done["secrets"]["values"] == 8
        rows = {(r["env"], r["service"]): r for r in done["datastores"]}
        assert len(rows) == 6 and not [r for r in rows.values() if r["error"]], rows
        assert rows["prod", "database"]["key"] == database
        assert rows["prod", "redis"]["key"].startswith("redis/shop/prod/redis/")
        # Each restored after a safety backup; one the lost mesh never backed up starts empty.
        assert all(r["safety"] for r in rows.values() if r["key"]), rows

        # The rows written before the backup are there: the page counts on from them.
        after = wait_for(lambda: visits(prod_url(new)), timeout=60, what="a page that counted")
        assert after == (counted[0] + 1, counted[1] + 1)
        digest = wait_for(lambda: secret_digest(new), timeout=60, what="the frontend's secret")
        assert digest == hashlib.sha256(API_KEY.encode()).hexdigest()
        assert {s["service"] for s in new.status()["services"]} >= {"backend", "frontend"}
        events = [json.loads(line) for line in
                  new.ok("events", "-n", "500", "--json").splitlines() if line]  # fmt: skip
        assert [e["detail"]["mesh_key"] for e in events if e["name"] == "mesh_restored"] == [
            done["mesh_key"]
        ]

        # Once restored, it is no new mesh: a second restore asks for --force.
        again = new.meshctl("backup", "restore-mesh", "s3", *s3, "--escrow-key", escrow,
                            input=seaweedfs.secret_key)  # fmt: skip
        assert again.returncode == 2 and "already has a published spec" in again.stderr
