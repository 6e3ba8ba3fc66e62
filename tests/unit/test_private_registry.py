"""Private registries (docs/secrets.md): the project's `registry` from the deployment config
to the published spec, the allocations of the services whose image comes from it, the
droplets its password is sealed to, `secret list`'s users, and the instance spec that carries
the login to the runtime and never shows it. The refused configs are in
`tests/cases/deploy_config_cases.json`; the pull against a real registry is in
`tests/component/test_registry_pull.py`."""

from __future__ import annotations

import dataclasses

import docker.errors
import msgpack
import pytest

from meshd.agent.reconciler.instances import spec_for
from meshd.cli.secret import secret_rows
from meshd.core.allocations import allocations_for
from meshd.core.placement import place
from meshd.core.registries import image_registry, login_for
from meshd.core.secret_plan import REGISTRY_PASSWORD, Need, needs, used_by
from meshd.core.spec import DesiredState, ProjectSpec, RegistryLogin
from plugins.runtimes import RegistryAuth
from plugins.runtimes.docker.containers import container_spec
from plugins.runtimes.docker.images import image_problem, refused_login
from plugins.secrets.env import EnvSecrets
from protocol import subjects
from protocol.codec import decode, encode
from protocol.messages import Allocation
from protocol.secrets import SecretScope, SecretValue
from tests.support.reconciling import allocation
from tests.support.states import config_from_json, state_from_csv

CSV = "Project,Servers,MasterSpec,WebSpec\nshop,1,s-1vcpu-2gb,s-1vcpu-1gb\n"
CONFIG = """{"projects": {"shop": {
    "registry": {"server": "registry.example.com:5000", "username": "ci"},
    "services": {
        "backend": {"image": "registry.example.com:5000/shop/backend:1.4"},
        "frontend": {"image": "nginx:1.25"},
        "worker_mail": {"image": "ghcr.io/shop/mail:2"}}}}}"""
PASSWORD = "registry-password-that-must-not-leak"


def project_value(name: str, project: str) -> SecretValue:
    return SecretValue(name=name, scope=SecretScope.PROJECT, project=project, env=None,
                       version=1, sealed="AQID", mesh_key="f", set_by="op", set_at=1.0)  # fmt: skip


def shop_state(config: str = CONFIG) -> DesiredState:
    return state_from_csv(CSV, config_from_json(config))


@pytest.mark.parametrize(
    ("image", "registry"),
    [
        ("nginx", "docker.io"),
        ("library/nginx:1.25", "docker.io"),
        ("shop/backend:1", "docker.io"),
        ("index.docker.io/shop/backend:1", "docker.io"),
        ("registry.example.com/shop/backend:1", "registry.example.com"),
        ("127.0.0.1:5000/backend@sha256:abc", "127.0.0.1:5000"),
        ("localhost/backend", "localhost"),
        ("Registry.Example.com/x", "registry.example.com"),
    ],
)
def test_an_image_names_its_registry_as_docker_decides(image: str, registry: str) -> None:
    assert image_registry(image) == registry


def test_a_login_is_for_the_images_of_its_server_only() -> None:
    hub, private = RegistryLogin("docker.io", "me"), RegistryLogin("registry.example.com", "ci")
    assert login_for(private, "registry.example.com/shop/backend:1") == private
    assert login_for(private, "registry.example.com:5000/shop/backend:1") is None
    assert login_for(private, "shop/backend:1") is None
    assert login_for(hub, "shop/backend:1") == hub
    assert login_for(private, None) is None
    assert login_for(None, "registry.example.com/x") is None


def test_the_registry_is_kept_in_the_published_spec_and_older_specs_load() -> None:
    project = shop_state().project("shop")
    assert project.registry == RegistryLogin("registry.example.com:5000", "ci")
    data = project.to_data()
    assert data["registry"] == {"server": "registry.example.com:5000", "username": "ci"}
    assert ProjectSpec.from_data(data) == project
    del data["registry"]  # as published before private registries
    assert ProjectSpec.from_data(data).registry is None
    assert shop_state('{"projects": {"shop": {}}}').project("shop").registry is None


def test_only_services_pulling_from_the_registry_get_its_login() -> None:
    state = shop_state()
    made = allocations_for(state, place(state), {}, fence=1)
    backend, frontend = made["shop.prod.backend"], made["shop.uat.frontend"]
    assert (backend.registry, backend.registry_user) == ("registry.example.com:5000", "ci")
    assert (frontend.registry, frontend.registry_user) == (None, None)
    assert made["shop.test.worker_mail"].registry is None
    assert made["shop.prod.database"].registry is None  # the built-in template's image


def test_an_allocation_without_registry_fields_still_decodes() -> None:
    state = shop_state()
    made = allocations_for(state, place(state), {}, fence=1)["shop.prod.backend"]
    raw = msgpack.unpackb(encode(made))
    del raw["registry"], raw["registry_user"]  # as a scheduler before private registries
    assert decode(msgpack.packb(raw), Allocation) == dataclasses.replace(
        made, registry=None, registry_user=None
    )


def test_the_password_is_sealed_to_the_droplets_that_pull_from_the_registry_only() -> None:
    pulling = allocation(droplets=("web1", "web2"), registry="r.example.com", registry_user="ci")
    other = allocation(service="frontend", droplets=("web3",), secrets=("api_key",))
    assert needs([pulling, other], [], {"master"}) == {
        Need("web1", REGISTRY_PASSWORD, "shop", "prod"),
        Need("web2", REGISTRY_PASSWORD, "shop", "prod"),
        Need("web3", "api_key", "shop", "prod"),
    }


def test_secret_list_names_the_services_that_pull_with_the_password() -> None:
    pulling = allocation(registry="r.example.com", registry_user="ci")
    uat = allocation(env="uat", registry="r.example.com", registry_user="ci")
    other = allocation(service="frontend")
    key = subjects.secret_value_key(REGISTRY_PASSWORD, "shop")
    values = {key: project_value(REGISTRY_PASSWORD, "shop")}
    assert used_by(key, [pulling, uat, other], values) == ["shop.prod.backend", "shop.uat.backend"]
    (row,) = secret_rows(values, {"a": pulling, "b": uat, "c": other})
    assert row["used_by"] == ["shop.prod.backend", "shop.uat.backend"]


def test_the_instance_gets_the_login_never_shown_nor_in_the_container() -> None:
    alloc = allocation(image="r.example.com/shop/backend:1", command=None,
                       registry="r.example.com", registry_user="ci")  # fmt: skip
    secrets = EnvSecrets({"SHOP_PROD_REGISTRY_PASSWORD": PASSWORD})
    spec = spec_for(alloc, 0, "127.0.0.1", {"master": "127.0.0.1"}, secrets)
    assert spec.registry_auth == RegistryAuth("r.example.com", "ci", PASSWORD)
    assert spec.secrets == {} and spec.build_secrets == {}
    assert PASSWORD not in repr(spec) and PASSWORD not in repr(spec.registry_auth)
    assert PASSWORD not in repr(container_spec(spec, "m", "web1"))


def test_an_instance_pulling_without_a_password_set_waits_for_it() -> None:
    alloc = allocation(image="r.example.com/x:1", registry="r.example.com", registry_user="ci")
    with pytest.raises(LookupError, match="secret 'registry_password' not found"):
        spec_for(alloc, 0, "127.0.0.1", {"master": "127.0.0.1"}, EnvSecrets({}))
    plain = spec_for(allocation(), 0, "127.0.0.1", {"master": "127.0.0.1"}, EnvSecrets({}))
    assert plain.registry_auth is None


def test_a_refused_login_is_said_in_one_line_naming_registry_and_user() -> None:
    alloc = allocation(image="r.example.com/shop/backend:1", command=None)
    spec = spec_for(alloc, 0, "127.0.0.1", {"master": "127.0.0.1"}, EnvSecrets({}))
    wanted = container_spec(spec, "m", "web1")
    auth = RegistryAuth("r.example.com", "ci", PASSWORD)
    refused = docker.errors.APIError("500", explanation="unauthorized: authentication required")
    missing = docker.errors.NotFound("404", explanation="manifest unknown")
    assert refused_login(refused) and not refused_login(missing)
    assert image_problem(wanted, refused, auth) == (
        "registry r.example.com refused the login for ci (unauthorized: authentication required)"
    )
    assert image_problem(wanted, missing, auth).startswith("image r.example.com/shop/backend:1")
    assert PASSWORD not in image_problem(wanted, refused, auth)
