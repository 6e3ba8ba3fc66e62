"""The demo's git repositories: for each example project whose `git_repo` is a path under
`.demo/`, a bare repository holding the examples (the app, the deployment config, the CSV) and
a clone of it to change and push from (`.demo/<project>`). Used by `make demo`, which then
installs meshd's hook into each bare repository; existing repositories are left as they are.

    echo "my change" > .demo/hostomatic/app/release.txt
    git -C .demo/hostomatic commit -qam "my change" && git -C .demo/hostomatic push
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent
CONTENT = ("app", "deployment_config.json", "projects.csv")
IGNORED = shutil.ignore_patterns("__pycache__")


def git(*args: str | Path, cwd: Path | None = None) -> None:
    command = ["git", "-c", "init.defaultBranch=main", *map(str, args)]
    subprocess.run(command, cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def demo_repositories() -> dict[str, Path]:
    """The example projects whose repository is a path under `.demo/`, and that path."""
    config = json.loads((EXAMPLES / "deployment_config.json").read_text())
    found = {}
    for name, project in config["projects"].items():
        repo = project.get("git_repo")
        if repo and ".demo/" in repo and "://" not in repo:
            found[name] = (EXAMPLES / repo).resolve()
    return found


def make(project: str, bare: Path) -> None:
    clone = bare.with_suffix("")
    if bare.exists():
        print(f"{project}: {bare} exists; left as it is")
        return
    git("init", "--quiet", "--bare", "-b", "main", bare)
    shutil.rmtree(clone, ignore_errors=True)
    git("clone", "--quiet", bare, clone)
    for name in CONTENT:
        source = EXAMPLES / name
        if source.is_dir():
            shutil.copytree(source, clone / name, ignore=IGNORED)
        else:
            shutil.copy2(source, clone / name)
    git("config", "user.name", "Demo Developer", cwd=clone)
    git("config", "user.email", "developer@example.com", cwd=clone)
    git("add", "--all", cwd=clone)
    git("commit", "--quiet", "-m", f"{project}: the example app", cwd=clone)
    git("push", "--quiet", "origin", "main", cwd=clone)
    print(f"{project}: {bare} (change and push from {clone})")


def main() -> None:
    try:
        for project, bare in demo_repositories().items():
            make(project, bare)
    except (OSError, subprocess.CalledProcessError) as err:
        sys.exit(f"demo repositories not made: {err}")


if __name__ == "__main__":
    main()
