"""A project's release command on a real local mesh (process runtime) behind real nginx: a push
runs the repository's migration once, with the backend's environment, before UAT's cut-over,
a promotion runs it for prod, and a migration that fails fails its release: the old content
is still served and the release says what the migration printed."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support import nginx_binary
from tests.support.git_repos import change, git, make_repository, releases, serves
from tests.support.mesh import local_mesh
from tests.support.waiting import wait_for

MIGRATE = """\
import os, pathlib, sys
here = pathlib.Path(__file__).parent
note = (here / "release.txt").read_text().strip()
print(f"migrating {os.environ['PROJECT']} {os.environ['ENVIRONMENT']} to {note}")
broken = here / "broken.txt"
if broken.exists():
    print(broken.read_text().strip())
    sys.exit(3)
with open(os.environ["MIGRATION_MARKER"], "a") as marker:
    marker.write(f"{os.environ['ENVIRONMENT']} {note}\\n")
"""


def with_migration(work: Path) -> None:
    """The repository gains migrate.py and the project runs it before each release."""
    (work / "app" / "migrate.py").write_text(MIGRATE)
    path = work / "deployment_config.json"
    config = json.loads(path.read_text())
    config["projects"]["shop"]["release_command"] = "python3 migrate.py"
    path.write_text(json.dumps(config))
    git(work, "add", ".")
    git(work, "commit", "--quiet", "-m", "migrations")
    git(work, "push", "--quiet", "origin", "main")


def test_a_release_command_migrates_before_the_cut_over_and_its_failure_keeps_the_old(
    tmp_path: Path,
) -> None:
    nginx_binary()
    bare, work = make_repository(tmp_path)
    with_migration(work)
    published = tmp_path / "published"
    git(tmp_path, "clone", "--quiet", str(bare), str(published))
    marker = tmp_path / "migrated.txt"
    with local_mesh(tmp_path / "mesh") as mesh:
        mesh.ok("publish", published / "projects.csv", "--deploy-config",
                published / "deployment_config.json", "--wait")  # fmt: skip
        wait_for(lambda: serves(mesh, "uat", "first"), what="UAT serving the disk build")
        mesh.ok("config", "set", "shop", f"MIGRATION_MARKER={marker}")
        mesh.ok("hook", "install", bare, "--context", mesh.name)

        pushed = change(work, "second")
        assert "running the release command on master" in pushed, pushed
        assert "release command exited with 0 on master" in pushed and "live" in pushed, pushed
        assert serves(mesh, "uat", "second")
        assert marker.read_text().splitlines() == ["uat second"]  # once, before the cut-over
        ran = [e for e in mesh.events_about("shop.uat") or [] if e["name"] == "release_command_ran"]
        assert [(e["detail"]["exit_code"], e["detail"]["release"]) for e in ran] == [(0, 1)]

        mesh.ok("promote", "shop", "--follow", timeout=180)
        wait_for(lambda: serves(mesh, "prod", "second"), what="prod serving the promotion")
        assert marker.read_text().splitlines() == ["uat second", "prod second"]

        (work / "app" / "broken.txt").write_text("column orders.total already exists\n")
        git(work, "add", "app/broken.txt")
        pushed = change(work, "third")
        assert "release command exited with 3 on master" in pushed, pushed
        assert "the previous release keeps serving" in pushed, pushed
        failed = releases(mesh, "uat")[0]
        assert failed["status"] == "failed", failed
        assert failed["detail"].splitlines() == [
            "release command exited with 3 on master",
            "migrating shop uat to third",
            "column orders.total already exists",
        ]
        assert serves(mesh, "uat", "second")  # the target never changed
        assert marker.read_text().splitlines() == ["uat second", "prod second"]
        told = [e for e in mesh.events_about("shop.uat") or [] if e["name"] == "release_failed"]
        assert "column orders.total" not in json.dumps(told)  # its output stays in the release
