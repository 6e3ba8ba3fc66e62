"""Push webhooks on a real local mesh (process runtime) behind real nginx: without the
project's `webhook_secret` the entry address takes none; with it, a GitHub-style delivery
signed with the secret builds a UAT release of the pushed commit, and one with a bad signature
is 401, recorded, and builds nothing."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from meshd.core.webhooks import signature_of
from tests.support import nginx_binary
from tests.support.git_repos import git, make_repository, releases, serves
from tests.support.mesh import LocalMesh, local_mesh
from tests.support.waiting import wait_for

SECRET = "a webhook secret shared with the host"


def deliver(mesh: LocalMesh, payload: dict[str, Any], secret: str) -> tuple[int, str]:
    """POST a GitHub push delivery signed with `secret` to the entry address."""
    body = json.dumps(payload).encode()
    request = urllib.request.Request(  # noqa: S310 - the test mesh's own URL
        f"{mesh.status()['entry_url']}/_mesh/hooks/git/shop",
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "X-GitHub-Event": "push",
            "X-Hub-Signature-256": "sha256=" + signature_of(body, secret.encode()),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_a_signed_webhook_deploys_and_a_bad_signature_is_refused(tmp_path: Path) -> None:
    nginx_binary()  # the entry address needs nginx (it says how to get it)
    bare, work = make_repository(tmp_path)
    published = tmp_path / "published"
    git(tmp_path, "clone", "--quiet", str(bare), str(published))
    with local_mesh(tmp_path / "mesh") as mesh:
        mesh.ok("publish", published / "projects.csv", "--deploy-config",
                published / "deployment_config.json", "--wait")  # fmt: skip
        wait_for(lambda: serves(mesh, "uat", "first"), what="UAT serving the disk build")
        (work / "app" / "release.txt").write_text("second\n")
        git(work, "commit", "--quiet", "-am", "second")
        before, sha = (
            git(work, "rev-parse", "HEAD~1").strip(),
            git(work, "rev-parse", "HEAD").strip(),
        )
        git(work, "push", "--quiet", str(bare), "main")  # no hook: the host's webhook tells
        payload = {"ref": "refs/heads/main", "before": before, "after": sha,
                   "pusher": {"name": "ana"}}  # fmt: skip

        status, text = deliver(mesh, payload, SECRET)
        assert (status, text.strip()) == (
            404, "webhooks are off for this project: meshctl secret set shop webhook_secret"
        )  # fmt: skip

        mesh.ok("secret", "set", "shop", "webhook_secret", input=SECRET)
        # 503 until the `secrets` role has sealed it to the lb holder (a second or two).
        status, text = wait_for(
            lambda: (got := deliver(mesh, payload, SECRET))[0] != 503 and got,
            what="the webhook secret sealed to the entry point",
        )
        assert status == 202, text
        (queued,) = json.loads(text)["queued"]
        assert (queued["ref"], queued["sha"]) == ("refs/heads/main", sha)
        wait_for(lambda: serves(mesh, "uat", "second"), timeout=120, what="UAT serving the push")
        (release,) = releases(mesh, "uat")
        assert (release["sha"], release["status"]) == (sha, "live"), release
        assert release["requested_by"] == "ana"  # the pusher the payload names

        status, text = deliver(mesh, {**payload, "after": before}, "a guessed secret")
        assert status == 401 and "does not match" in text, text
        refused = wait_for(
            lambda: [e for e in mesh.events_about("shop") or [] if e["name"] == "webhook_refused"],
            what="the refusal's event",
        )
        assert "does not match" in refused[0]["detail"]["reason"]
        assert SECRET not in json.dumps(refused)
        assert [r["number"] for r in releases(mesh, "uat")] == [release["number"]]  # nothing built
        assert serves(mesh, "uat", "second")
