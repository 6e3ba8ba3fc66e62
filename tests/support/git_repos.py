"""Git repositories for deploy tests: a bare repository holding the example app and its
deployment config (the project `shop`, one droplet), a clone to change and push from, and
how a test sees what an environment serves through the entry address."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from tests.support.docker import static_busybox
from tests.support.mesh import ROOT, LocalMesh, http_get

APP = ROOT / "examples" / "app"
SERVICES = {
    "backend": {"build_context": "app", "process_command": "python3 hello.py"},
    "frontend": {"enabled": False},
    "database": {"enabled": False},
    "redis": {"enabled": False},
}


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=Ana", "-c", "user.email=ana@example.com", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"git {args}: {done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def make_repository(
    root: Path, services: dict[str, Any] = SERVICES, platform: str = "process"
) -> tuple[Path, Path]:
    """A bare repository holding the example app and its deployment config, and a clone."""
    bare, work = root / "shop.git", root / "shop"
    git(root, "init", "--quiet", "--bare", "-b", "main", str(bare))
    work.mkdir()
    (work / "app").mkdir()
    for name in ("hello.py", "visits.py", "Dockerfile", "serve", "work"):
        shutil.copy(APP / name, work / "app" / name)
    if platform == "docker":
        shutil.copy(static_busybox(), work / "app" / "busybox")
    (work / "app" / "release.txt").write_text("first\n")
    config = {"deployment_platform": platform, "projects": {"shop": {
        "git_repo": str(bare), "health_timeout": 15, "services": services}}}  # fmt: skip
    (work / "deployment_config.json").write_text(json.dumps(config))
    (work / "projects.csv").write_text(
        "Project,Servers,MasterSpec,WebSpec\nshop,1,s-1vcpu-2gb,s-1vcpu-1gb\n"
    )
    git(work, "init", "--quiet", "-b", "main")
    git(work, "add", ".")
    git(work, "commit", "--quiet", "-m", "first")
    git(work, "remote", "add", "origin", str(bare))
    git(work, "push", "--quiet", "origin", "main")
    return bare, work


def change(work: Path, note: str, *, broken: bool = False) -> str:
    (work / "app" / "release.txt").write_text(note + "\n")
    if broken:
        hello = work / "app" / "hello.py"
        hello.write_text("raise SystemExit('this release is broken')\n" + hello.read_text())
    git(work, "commit", "--quiet", "-am", note)
    return git(work, "push", "origin", "main")


def page(mesh: LocalMesh, env: str) -> str:
    return http_get(f"{mesh.status()['entry_url']}/shop-{env}/backend/", timeout=5)


def serves(mesh: LocalMesh, env: str, note: str) -> bool:
    try:
        found = page(mesh, env)
    except OSError:
        return False
    return f"release: {note}" in found


def releases(mesh: LocalMesh, env: str) -> list[dict[str, Any]]:
    return list(json.loads(mesh.ok("releases", "shop", env, "--json"))["releases"])
