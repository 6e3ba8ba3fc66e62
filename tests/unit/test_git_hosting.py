"""Repositories the mesh hosts on master (pure): what the git shell lets through, the
authorized_keys lines that force it, and where the builder and the pusher find them."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshd.core.git_hosting import (
    GitCommand,
    GitShellRefused,
    authorized_key_line,
    fetch_url,
    parse_git_command,
    push_remote,
    with_git_keys,
)
from meshd.inputs import resolve_git_repos
from meshd.inputs.deploy_config import DeployConfig, ProjectConfig


@pytest.mark.parametrize(
    ("asked", "wanted"),
    [
        ("git-receive-pack 'shop'", GitCommand("git-receive-pack", "shop")),
        ("git-receive-pack '/shop.git'", GitCommand("git-receive-pack", "shop")),
        ("git-upload-pack 'shop.git/'", GitCommand("git-upload-pack", "shop")),
        ("git upload-pack 'my-app'", GitCommand("git-upload-pack", "my-app")),
    ],
)
def test_a_push_or_fetch_of_a_project_goes_through(asked: str, wanted: GitCommand) -> None:
    assert parse_git_command(asked) == wanted
    assert wanted.pushes == (wanted.program == "git-receive-pack")


@pytest.mark.parametrize(
    ("asked", "says"),
    [
        (None, "only pushes and fetches"),
        ("", "only pushes and fetches"),
        ("bash", "'bash' is not allowed"),
        ("git-receive-pack 'shop' extra", "not allowed"),
        ("git-upload-archive 'shop'", "not allowed"),
        ("git-receive-pack '../root'", "not a project's repository"),
        ("git-receive-pack 'Shop'", "not a project's repository"),
        ("git-receive-pack 'a/b'", "not a project's repository"),
        ("git-receive-pack 'unclosed", "not allowed"),
    ],
)
def test_anything_else_is_refused_saying_what_is_allowed(asked: str | None, says: str) -> None:
    with pytest.raises(GitShellRefused, match=says):
        parse_git_command(asked)


def test_the_forced_lines_are_replaced_and_others_kept() -> None:
    line = authorized_key_line("ssh-ed25519 AAAA pusher@laptop", 'run "x"')
    assert line == 'command="run \\"x\\"",restrict ssh-ed25519 AAAA meshd-git'
    before = f"ssh-ed25519 BBBB root\n{line}\n# a note\n"
    after = with_git_keys(before, [authorized_key_line("ssh-ed25519 CCCC", "run")])
    assert after.splitlines() == [
        "ssh-ed25519 BBBB root",
        "# a note",
        'command="run",restrict ssh-ed25519 CCCC meshd-git',
    ]


def test_the_builder_fetches_locally_on_master_and_over_ssh_elsewhere() -> None:
    assert fetch_url("shop", "/var/lib/meshd/git", None) == "/var/lib/meshd/git/shop.git"
    assert fetch_url("shop", "/var/lib/meshd/git", "10.0.0.2") == (
        "ssh://root@10.0.0.2/var/lib/meshd/git/shop.git"
    )
    assert push_remote("203.0.113.7", "shop") == "root@203.0.113.7:shop"


def test_mesh_as_git_repo_is_not_a_path_beside_the_config(tmp_path: Path) -> None:
    config = DeployConfig(
        projects={"shop": ProjectConfig({}, "mesh"), "pay": ProjectConfig({}, "pay.git")}
    )
    resolved = resolve_git_repos(config, tmp_path)
    assert resolved.projects["shop"].git_repo == "mesh"
    assert resolved.projects["pay"].git_repo == str(tmp_path / "pay.git")
