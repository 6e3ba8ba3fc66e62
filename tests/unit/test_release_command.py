"""A project's release command (docs/deploys.md, "Release command"): its keys checked in the
deployment config and kept in the published spec, the messages and subject of the request the
builder sends, the droplet it runs on, how the builder judges the answer, and the one-off
container the docker runtime makes of it. Running it for real: tests/component/
test_release_command_runtimes.py (runtimes and agent), tests/mesh/test_release_command.py."""

from __future__ import annotations

import json
from typing import Any

import pytest

from meshd.core.errors import InputErrors
from meshd.core.spec import ProjectSpec, ReleaseCommand
from meshd.inputs.deploy_config import parse_deploy_config
from meshd.roles.builder.release_command import ReleaseCommandFailed, judged, release_droplet
from plugins.runtimes import InstanceSpec
from plugins.runtimes.docker.containers import LABEL_SERVICE
from plugins.runtimes.docker.once import LABEL_ONCE, one_off_spec
from protocol import subjects
from protocol.codec import decode, encode
from protocol.errors import InvalidNameError
from protocol.releases import (
    Artifact,
    ReleaseCommandAnswer,
    ReleaseCommandRequest,
)
from tests.support.reconciling import allocation
from tests.support.states import config_from_json, state_from_csv

pytestmark = pytest.mark.unit

CSV = "Project,Servers,MasterSpec,WebSpec\nshop,1,s-1vcpu-2gb,s-1vcpu-1gb\n"
BUILT = {"backend": {"build_context": "app"}, "worker_mail": {"build_context": "mail"}}
ARTIFACT = Artifact("backend", "ab" * 32, "docker", 1000, "docker:tree:", "shop-backend:0123")


def project(**keys: Any) -> dict[str, Any]:
    return {"projects": {"shop": {"services": BUILT, **keys}}}


def issues(config: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(InputErrors) as caught:
        parse_deploy_config(json.dumps(config).encode(), "deployment_config.json")
    return [(issue.where, issue.message) for issue in caught.value.issues]


def test_a_release_command_runs_with_the_backend_for_five_minutes_unless_told() -> None:
    config = config_from_json(json.dumps(project(release_command="python3 migrate.py")))
    shop = state_from_csv(CSV, config).project("shop")
    assert shop.release_command == ReleaseCommand("python3 migrate.py", "backend", 300)

    told = project(release_command="./mail migrate --all", release_service="worker_mail",
                   release_command_timeout=1200)  # fmt: skip
    spec = config_from_json(json.dumps(told)).projects["shop"].release_command
    assert spec == ReleaseCommand("./mail migrate --all", "worker_mail", 1200)


def test_the_release_command_is_kept_in_the_published_spec_and_older_specs_load() -> None:
    shop = state_from_csv(CSV, config_from_json(json.dumps(project(release_command="m"))))
    data = shop.project("shop").to_data()
    assert ProjectSpec.from_data(data) == shop.project("shop")
    del data["release_command"]  # published before release commands existed
    assert ProjectSpec.from_data(data).release_command is None
    assert state_from_csv(CSV).project("shop").release_command is None


@pytest.mark.parametrize(
    ("keys", "at", "says"),
    [
        ({"release_command": ""}, "release_command", "expected a non-empty string"),
        ({"release_command": ["python3", "m.py"]}, "release_command", "non-empty string"),
        ({"release_command": "python3 'm.py"}, "release_command", "cannot be split"),
        ({"release_command": "m", "release_service": "api"}, "release_service",
         "'api', which the project lacks; one built from the repository: backend, worker_mail"),
        ({"release_command": "m", "release_service": "database"}, "release_service",
         "'database', which is not built from the repository"),
        ({"release_command": "m", "release_service": 3}, "release_service", "name of a service"),
        ({"release_command": "m", "release_command_timeout": 2}, "release_command_timeout",
         "from 5 to 3600, got 2"),
        ({"release_command": "m", "release_command_timeout": True}, "release_command_timeout",
         "whole number"),
        ({"release_service": "backend"}, "release_service", "only with a release_command"),
        ({"release_command_timeout": 60}, "release_command_timeout", "only with a release_command"),
    ],
)  # fmt: skip
def test_a_wrong_release_command_is_refused_where_it_is(keys: Any, at: str, says: str) -> None:
    ((where, message),) = issues(project(**keys))
    assert where == f"$.projects.shop.{at}"
    assert says in message, message


def test_a_release_command_without_a_backend_built_from_the_repository_names_the_key() -> None:
    image = {"projects": {"shop": {"release_command": "m", "services": {"backend": {
        "image": "shop:1"}}}}}  # fmt: skip
    ((where, message),) = issues(image)
    assert where == "$.projects.shop.release_command"
    assert "'backend', which is not built from the repository" in message
    assert "name the service in release_service (none is)" in message
    disabled = project(release_command="m", services={"backend": {"enabled": False}})
    ((where, message),) = issues(disabled)
    assert "which the project lacks" in message


def test_the_request_and_its_answer_survive_a_round_trip_on_the_droplets_subject() -> None:
    request = ReleaseCommandRequest(project="shop", env="uat", service="backend", release=4,
                                    artifact=ARTIFACT, command="python3 migrate.py",
                                    timeout=300.0, fence=17)  # fmt: skip
    answer = ReleaseCommandAnswer(exit_code=3, output="no such table", seconds=1.5)
    assert decode(encode(request), ReleaseCommandRequest) == request
    assert decode(encode(answer), ReleaseCommandAnswer) == answer
    assert not answer.ok and ReleaseCommandAnswer(exit_code=0).ok
    assert subjects.release_command("web1") == "mesh.release.web1"
    with pytest.raises(InvalidNameError):
        subjects.release_command("web1.>")


def test_it_runs_on_the_first_droplet_of_the_service_that_has_not_failed() -> None:
    backend = allocation(droplets=("web1", "web2", "web3"))
    assert release_droplet(backend, {}) == "web1"
    assert release_droplet(backend, {"web1", "web3"}) == "web2"
    assert release_droplet(backend, {"web1", "web2", "web3"}) is None
    assert release_droplet(None, set()) is None


def test_the_builder_fails_a_release_whose_command_failed_with_the_outputs_tail() -> None:
    output = "\n".join(f"line {n}" for n in range(1, 31))
    assert judged("web1", ReleaseCommandAnswer(exit_code=0, seconds=2.5), 315) == 2.5
    with pytest.raises(ReleaseCommandFailed) as exited:
        judged("web1", ReleaseCommandAnswer(exit_code=3, output=output), 315)
    lines = exited.value.detail.splitlines()
    assert lines[0] == "release command exited with 3 on web1"
    assert lines[1:] == [f"line {n}" for n in range(21, 31)]  # `releases` shows 12 lines
    with pytest.raises(ReleaseCommandFailed) as silent:
        judged("web1", None, 315)
    assert silent.value.detail == "release command: no answer from web1 within 315 s"
    with pytest.raises(ReleaseCommandFailed) as killed:
        judged("web2", ReleaseCommandAnswer(error="killed after 300 s", output="waiting"), 315)
    assert killed.value.detail == "release command on web2: killed after 300 s\nwaiting"


def test_the_one_off_container_is_the_instances_without_port_restarts_or_service_label() -> None:
    spec = InstanceSpec(project="shop", env="uat", service="backend", generation=3,
                        host="10.0.0.2", port=8100, command="serve", image="shop-backend:0123",
                        env_vars={"PROJECT": "shop"}, secrets={"db_password": b"x"},
                        health_path="/health", slot=1, artifact="ab" * 32)  # fmt: skip
    wanted = one_off_spec(spec, "python3 migrate.py --all", "m1", "web1")
    assert wanted.name == "meshd-m1-web1-shop-uat-backend.once"
    assert wanted.command == ("python3", "migrate.py", "--all")
    assert wanted.image == "shop-backend:0123"
    assert (wanted.ports, wanted.restart_policy, wanted.healthcheck) == ({}, "no", None)
    assert LABEL_SERVICE not in wanted.labels and wanted.labels[LABEL_ONCE] == "backend"
    assert wanted.network == "meshd-m1-web1-shop-uat"
    assert wanted.alias == wanted.name  # never answers for the service
    assert wanted.secrets == ("db_password",)
    assert wanted.environment["DB_PASSWORD_FILE"] == "/run/secrets/db_password"
