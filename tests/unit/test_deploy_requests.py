"""The operator's side of git deploys without I/O (meshd.core.deploys): the requests a push
and `meshctl deploy|promote|rollback` send, the ref `meshctl deploy` takes by default, who
pushed, the hook as installed, its credentials, and releases as `meshctl releases` lists them."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from meshd.core.deploys import (
    HOOK_MARK,
    DeployInputError,
    HookCredentials,
    age,
    deploy_ref,
    hook_script,
    newest_first,
    operator_request,
    progress_text,
    push_request,
    pusher_from,
    release_row,
)
from meshd.core.pushes import PushedBranch
from protocol import subjects
from protocol.codec import decode, encode
from protocol.errors import MeshError
from protocol.releases import (
    DeployAction,
    DeployProgress,
    DeployRequest,
    Release,
    ReleaseStatus,
)

ROOT = Path(__file__).resolve().parents[2]
SHA = "bffeb74224043ba2feb48d137756c8a9331c449a"
NOW = 1_700_000_000.0


def release(number: int, env: str = "uat", **more: object) -> Release:
    values: dict[str, object] = {
        "project": "shop",
        "env": env,
        "number": number,
        "action": DeployAction.PUSH,
        "status": ReleaseStatus.LIVE,
        "ref": "refs/heads/main",
        "sha": SHA,
        "requested_by": "ada",
        "created_at": NOW + number,
        "updated_at": NOW + number,
        "request_id": f"r{number}",
    }
    return Release(**{**values, **more})  # type: ignore[arg-type]


def test_a_pushed_branch_asks_for_a_push_deploy_whose_environment_the_builder_chooses() -> None:
    pushed = PushedBranch("feature/x", SHA, "0" * 40, "ada")
    inbox = subjects.deploy_inbox("abc")
    request = push_request("shop", pushed, progress=inbox, now=NOW)
    assert (request.action, request.env, request.ref, request.sha) == (
        DeployAction.PUSH,
        None,
        "refs/heads/feature/x",
        SHA,
    )
    assert (request.requested_by, request.progress, request.project) == ("ada", inbox, "shop")
    assert decode(encode(request), DeployRequest) == request


def test_every_request_has_its_own_id() -> None:
    pushed = PushedBranch("main", SHA, "0" * 40)
    ids = {push_request("shop", pushed, progress=None, now=NOW).request_id for _ in range(50)}
    assert len(ids) == 50


def test_operator_requests_carry_the_environment_release_and_cancel() -> None:
    request = operator_request(
        "shop", DeployAction.ROLLBACK, "uat", requested_by="ada@h", now=NOW, progress=None,
        release=3,
    )  # fmt: skip
    assert (request.env, request.release, request.sha, request.cancel) == ("uat", 3, "", False)
    cancel = operator_request(
        "shop", DeployAction.DEPLOY, "prod", requested_by="ada@h", now=NOW, progress=None,
        cancel=True,
    )  # fmt: skip
    assert cancel.cancel and cancel.env == "prod"


@pytest.mark.parametrize(
    ("env", "ref", "mapping", "expected"),
    [
        ("uat", None, {"uat": "main", "test": "*"}, "main"),
        ("uat", None, {"uat": "trunk"}, "trunk"),
        ("test", "feature/x", {"uat": "main", "test": "*"}, "feature/x"),
        ("uat", "v1.2.3", {"uat": "main"}, "v1.2.3"),
        ("uat", SHA, {}, SHA),
    ],
)
def test_deploy_builds_the_ref_given_or_the_branch_mapped_to_the_environment(
    env: str, ref: str | None, mapping: dict[str, str], expected: str
) -> None:
    assert deploy_ref(env, ref, mapping) == expected


@pytest.mark.parametrize(
    ("env", "ref", "mapping", "says"),
    [
        ("prod", None, {"uat": "main"}, "prod is deployed only by `meshctl promote`"),
        ("prod", "main", {"uat": "main"}, "prod is deployed only by `meshctl promote`"),
        ("test", None, {"uat": "main", "test": "*"}, "test takes any branch matching '*'"),
        ("test", None, {"uat": "main"}, "no branch deploys to test by default"),
        ("uat", " ", {"uat": "main"}, "--ref is empty"),
    ],
)
def test_deploy_refuses_prod_and_an_environment_without_one_branch(
    env: str, ref: str | None, mapping: dict[str, str], says: str
) -> None:
    with pytest.raises(DeployInputError) as caught:
        deploy_ref(env, ref, mapping)
    assert says in str(caught.value)


def test_the_pusher_is_what_the_git_server_says_else_the_hooks_account() -> None:
    assert pusher_from({"GL_USERNAME": "ada", "USER": "git"}, "git@host") == "ada"
    assert pusher_from({"MESHD_PUSHER": "bob", "GIT_PUSHER": "ada"}, "git@host") == "bob"
    assert pusher_from({"GIT_PUSHER": "  "}, "git@host") == "git@host"


def test_the_installed_hook_is_the_template_with_quoted_absolute_paths() -> None:
    template = (ROOT / "deploy" / "hooks" / "post-receive").read_text()
    values = {
        "MESHCTL": "/opt/mesh d/bin/meshctl",
        "CREDENTIALS": "/srv/git/app.git/hooks/meshd-deploy.json",
        "CONFIG_HOME": "/home/o'neil/.config/meshd",
    }
    script = hook_script(template, values)
    assert script.startswith("#!/bin/sh\n") and HOOK_MARK in script
    assert "@" not in script
    assert f"MESHCTL={shlex.quote(values['MESHCTL'])}\n" in script
    assert f"MESHD_CONFIG_HOME={shlex.quote(values['CONFIG_HOME'])}\n" in script


def test_a_hook_template_and_values_that_do_not_match_are_refused() -> None:
    with pytest.raises(MeshError, match="missing: B; unused: C"):
        hook_script("@A@ @B@", {"A": "1", "C": "2"})


def test_hook_credentials_hold_the_deployer_and_read_back() -> None:
    credentials = HookCredentials(
        mesh="m", context="local", project="shop", servers=("nats://10.0.0.1:4222",), password="p"
    )
    assert credentials.user == "deployer"
    assert HookCredentials.from_json(credentials.to_json()) == credentials
    with pytest.raises(MeshError, match="read the hook's credentials"):
        HookCredentials.from_json('{"mesh": "m"}')


def test_progress_lines_name_their_branch_when_several_and_mark_a_failure() -> None:
    line = DeployProgress(request_id="r", line="building backend")
    assert progress_text(line) == "building backend"
    assert progress_text(line, "main") == "[main] building backend"
    failed = DeployProgress(request_id="r", line="health check timed out", final=True, ok=False)
    assert progress_text(failed, "main") == "[main] failed: health check timed out"


def test_releases_are_listed_newest_first_per_environment_and_limited() -> None:
    found = [release(1), release(2, "test"), release(3), release(4, "prod")]
    assert [r.number for r in newest_first(found)] == [4, 3, 2, 1]
    assert [r.number for r in newest_first(found, "uat")] == [3, 1]
    assert [r.number for r in newest_first(found, limit=2)] == [4, 3]


def test_a_release_row_shows_short_names() -> None:
    row = release_row(
        release(7, "prod", action=DeployAction.PROMOTE, from_release=5, tag="v1.0.1-uat-x"),
        now=NOW + 7 + 300,
    )
    assert row == {
        "release": "v7",
        "env": "prod",
        "action": "promote",
        "status": "live",
        "ref": "main",
        "sha": SHA[:12],
        "tag": "v1.0.1-uat-x",
        "by": "ada",
        "age": "5m",
        "from": "v5",
    }


@pytest.mark.parametrize(
    ("seconds", "shown"), [(-3, "0s"), (59, "59s"), (600, "10m"), (3 * 3600, "3h"), (3e5, "3d")]
)
def test_ages_are_coarse(seconds: float, shown: str) -> None:
    assert age(seconds) == shown


def test_progress_inboxes_are_the_only_subjects_the_builder_answers_on() -> None:
    inbox = subjects.deploy_inbox("0123abcd")
    assert inbox == "_INBOX_deployer.0123abcd"
    assert subjects.is_deploy_inbox(inbox)
    for other in (
        "_INBOX.abc",
        "mesh.desired.spec",
        "_INBOX_deployer.",
        "_INBOX_deployer.a.b",
        "_INBOX_deployer.Nuid22CharactersLongXYZ.1",
        "_INBOX_deployerx.abc",
    ):
        assert not subjects.is_deploy_inbox(other), other
