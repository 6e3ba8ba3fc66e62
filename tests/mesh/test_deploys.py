"""Git deploys on a real local mesh (process runtime) behind real nginx: a push to a bare
repository with the hook builds and rolls UAT and tags the commit; a promotion copies UAT's
artifact to prod without building; a rollback brings the earlier content back; a broken
commit fails its release while the old one keeps serving, without a failed request."""

from __future__ import annotations

import uuid
from pathlib import Path

from tests.support import nginx_binary
from tests.support.git_repos import (
    SERVICES,
    change,
    git,
    make_repository,
    releases,
    serves,
)
from tests.support.mesh import LocalMesh, local_mesh, requests_to
from tests.support.waiting import wait_for


def test_push_promote_rollback_and_a_broken_push(tmp_path: Path) -> None:
    nginx_binary()  # the entry address needs nginx (it says how to get it)
    bare, work = make_repository(tmp_path)
    # The operator publishes from a checkout of their own: a process runs its disk build in
    # place, so the developer's edits below must not reach it.
    published = tmp_path / "published"
    git(tmp_path, "clone", "--quiet", str(bare), str(published))
    with local_mesh(tmp_path / "mesh") as mesh:
        mesh.ok("publish", published / "projects.csv", "--deploy-config",
                published / "deployment_config.json", "--wait")  # fmt: skip
        # Built from the disk beside the config, until the first deploy.
        wait_for(lambda: serves(mesh, "uat", "first"), what="UAT serving the disk build")
        mesh.ok("hook", "install", bare, "--context", mesh.name)

        pushed = change(work, "second")
        assert "remote:" in pushed and "live" in pushed, pushed
        wait_for(lambda: serves(mesh, "uat", "second"), what="UAT serving the push")
        uat = releases(mesh, "uat")[0]
        assert (uat["status"], uat["number"], uat["tag_pushed"]) == ("live", 1, True)
        assert git(bare, "tag", "--list").split() == [uat["tag"]]
        assert uat["tag"].startswith("v0.1.0-uat-")
        assert serves(mesh, "prod", "first")  # a push never reaches prod
        # Commit -> release -> the post-deployment snapshot of the droplet that runs it.
        wait_for(lambda: releases(mesh, "uat")[-1]["snapshots"], what="a snapshot of release 1")
        fetched = mesh.events_about("shop.uat.backend") or []
        assert any(e["name"] == "artifact_fetched" for e in fetched), fetched
        assert f"Release: shop uat runs v1 ({uat['sha'][:12]}, {uat['tag']})" in mesh.ok("status")

        out = mesh.ok("promote", "shop", "--follow", timeout=180)
        assert "no build" in out, out
        wait_for(lambda: serves(mesh, "prod", "second"), what="prod serving the promotion")
        prod = releases(mesh, "prod")[0]
        assert prod["from_release"] == 1 and prod["tag"] == uat["tag"]
        assert prod["artifacts"] == uat["artifacts"]  # the same digest: nothing rebuilt

        refused = mesh.meshctl("deploy", "shop", "uat", "--ref", "no-such-branch", "--follow")
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "no-such-branch" in refused.stderr and len(releases(mesh, "uat")) == 1

        change(work, "third")
        wait_for(lambda: serves(mesh, "uat", "third"), what="UAT serving the second push")
        mesh.ok("rollback", "shop", "uat", "--follow", timeout=180)
        assert serves(mesh, "uat", "second")
        back = releases(mesh, "uat")[0]
        assert (back["action"], back["from_release"], back["status"]) == ("rollback", 1, "live")

        with requests_to(f"{mesh.status()['entry_url']}/shop-uat/backend/") as load:
            pushed = change(work, "broken", broken=True)
            assert "failed" in pushed, pushed
        assert load.failed == [], load.failed
        assert load.sent > 0
        assert serves(mesh, "uat", "second")
        failed = releases(mesh, "uat")[0]
        assert failed["status"] == "failed" and "not healthy" in failed["detail"]
        shown = next(r for r in mesh.status()["releases"] if r["env"] == "uat")
        assert (shown["live"]["number"], shown["newest"]["status"]) == (back["number"], "failed")

        retention_and_back_to_what_publish_runs(mesh, work)


def retention_and_back_to_what_publish_runs(mesh: LocalMesh, work: Path) -> None:
    # Retention: the newest five releases of each environment keep their artifacts.
    third = next(r for r in releases(mesh, "uat") if r["number"] == 2)
    digest = third["artifacts"]["backend"]["digest"]
    git(work, "revert", "--no-edit", "HEAD")
    for note in ("fifth", "sixth", "seventh"):
        change(work, note)
    wait_for(lambda: serves(mesh, "uat", "seventh"), what="UAT serving the seventh")
    deleted = [e for e in mesh.events_about(digest[:12]) or [] if e["name"] == "artifact_deleted"]
    assert deleted, "the third push's artifact outlived five newer releases"

    # Before its first release, prod ran what publish built: a rollback goes back there.
    mesh.ok("rollback", "shop", "prod", "--follow", timeout=180)
    assert serves(mesh, "prod", "first")
    assert releases(mesh, "prod")[0]["artifacts"] == {}


DOCKER_SERVICES = {**SERVICES, "backend": {"build_context": "app"}}


def test_docker_push_promote_a_failing_build_and_a_superseded_push(tmp_path: Path) -> None:
    nginx_binary()
    bare, work = make_repository(tmp_path, DOCKER_SERVICES, "docker")
    published = tmp_path / "published"
    git(tmp_path, "clone", "--quiet", str(bare), str(published))
    with local_mesh(tmp_path / "mesh", runtime="docker") as mesh:
        mesh.ok("publish", published / "projects.csv", "--deploy-config",
                published / "deployment_config.json", "--wait", timeout=300)  # fmt: skip
        wait_for(lambda: serves(mesh, "uat", "first"), what="UAT serving the disk build")
        mesh.ok("hook", "install", bare, "--context", mesh.name)

        pushed = change(work, "second")
        assert "live" in pushed, pushed
        wait_for(lambda: serves(mesh, "uat", "second"), what="UAT serving the image built")
        uat = releases(mesh, "uat")[0]
        image = uat["artifacts"]["backend"]["image"]
        assert image == f"shop-backend:{uat['sha'][:12]}", uat
        mesh.ok("promote", "shop", "--follow", timeout=180)
        wait_for(lambda: serves(mesh, "prod", "second"), what="prod serving the promotion")
        assert releases(mesh, "prod")[0]["artifacts"] == uat["artifacts"]

        dockerfile = work / "app" / "Dockerfile"
        dockerfile.write_text(dockerfile.read_text() + 'RUN ["/bin/false"]\n')
        pushed = change(work, "unbuildable")
        assert "build failed" in pushed, pushed
        failed = releases(mesh, "uat")[0]
        assert failed["status"] == "failed" and "build" in failed["detail"], failed
        assert serves(mesh, "uat", "second")
        log = mesh.ok("releases", "shop", "uat", "--log", str(failed["number"]))
        assert "/bin/false" in log, log

        git(work, "revert", "--no-edit", "HEAD")
        shas = []
        plain = dockerfile.read_text()
        for note in ("third", "fourth", "fifth"):  # quickly: the fourth waits, then yields
            # The third builds slowly, so that the next two pushes wait behind it.
            slow = 'RUN ["/bin/sleep", "6"]\n' if note == "third" else ""
            dockerfile.write_text(plain + slow)
            # Unique content: the engine's build cache outlives the test.
            (work / "app" / "release.txt").write_text(f"{note} {uuid.uuid4().hex}\n")
            git(work, "commit", "--quiet", "-am", note)
            shas.append(git(work, "rev-parse", "HEAD").strip())
            git(work, "push", "--quiet", "-o", "nowait", "origin", "main")
        wait_for(lambda: serves(mesh, "uat", "fifth"), timeout=120, what="UAT serving the last")
        built = {r["sha"]: r["status"] for r in releases(mesh, "uat")}
        assert (built.get(shas[0]), built.get(shas[2])) == ("live", "live"), built
        assert shas[1] not in built, "the waiting push was superseded by the newer one"

        dockerfile.write_text(plain + 'RUN ["/bin/sleep", "30"]\n')
        (work / "app" / "release.txt").write_text(f"never {uuid.uuid4().hex}\n")
        git(work, "commit", "--quiet", "-am", "slow")
        git(work, "push", "--quiet", "-o", "nowait", "origin", "main")
        wait_for(lambda: releases(mesh, "uat")[0]["status"] == "building", what="the build")
        mesh.ok("deploy", "--cancel", "shop", "uat")
        wait_for(lambda: releases(mesh, "uat")[0]["status"] == "cancelled", what="the cancel")
        assert serves(mesh, "uat", "fifth")
