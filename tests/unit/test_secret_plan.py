"""Who gets which secret: the services' secrets where their instances run, from the narrowest
scope that has a value; the mesh's own on the trusted droplets; generated passwords only where
nothing is set."""

from __future__ import annotations

from meshd.cli.secret import VAULT_LOGINS, secret_rows
from meshd.core.secret_plan import (
    CLOUD_TOKEN,
    INFRASTRUCTURE_KEY,
    PROJECT_WIDE,
    WEBHOOK_SECRET,
    Need,
    missing_generated,
    needs,
    sealings,
    source,
    trusted,
    used_by,
    webhook_projects,
)
from meshd.core.spec import DesiredState
from plugins.secrets.vault import CREDENTIALS
from protocol import subjects
from protocol.secrets import SecretScope, SecretValue
from tests.support.reconciling import allocation


def value(
    name: str, project: str | None = None, env: str | None = None, version: int = 1
) -> SecretValue:
    scope = SecretScope.MESH if project is None else SecretScope.ENV if env else SecretScope.PROJECT
    return SecretValue(
        name=name,
        scope=scope,
        project=project,
        env=env,
        version=version,
        sealed="AQID",
        mesh_key="f",
        set_by="op",
        set_at=1.0,
    )


def stored(*values: SecretValue) -> dict[str, SecretValue]:
    return {subjects.secret_value_key(v.name, v.project, v.env): v for v in values}


def test_the_narrowest_scope_wins() -> None:
    values = stored(value("api_key"), value("api_key", "shop"), value("api_key", "shop", "prod"))
    prod, uat = Need("web1", "api_key", "shop", "prod"), Need("master", "api_key", "shop", "uat")
    assert source(prod, values) == "value.env.shop.prod.api_key"
    assert source(uat, values) == "value.project.shop.api_key"
    assert source(Need("master", "api_key", "blog", "prod"), values) == "value.mesh.api_key"
    assert source(Need("master", "other", "shop", "prod"), values) is None


def test_services_secrets_go_where_they_run_and_the_meshs_to_trusted_droplets() -> None:
    shop = allocation(droplets=("web1", "web2"), secrets=("api_key",))
    found = needs([shop], ["smtp_password"], {"master"})
    assert found == {
        Need("web1", "api_key", "shop", "prod"),
        Need("web2", "api_key", "shop", "prod"),
        Need("master", "smtp_password"),
    }
    values = stored(value("api_key", "shop", version=3), value("smtp_password"))
    plan = sealings(found, values, {"web1": "k1", "master": "km"})  # web2 has no key yet
    assert set(plan) == {"sealed.web1.shop.prod.api_key", "sealed.master.mesh.smtp_password"}
    assert plan["sealed.web1.shop.prod.api_key"].version == 3
    assert plan["sealed.web1.shop.prod.api_key"].key == "k1"


def test_a_mesh_secret_of_a_services_name_on_a_trusted_droplet_is_sealed_twice() -> None:
    # The mesh's own need (no project) and the service's, on the same droplet and name.
    shop = allocation(droplets=("master",), secrets=("api_key",))
    found = needs([shop], ["api_key"], {"master"})
    plan = sealings(found, stored(value("api_key")), {"master": "km"})
    assert {k: s.source for k, s in plan.items()} == {
        "sealed.master.mesh.api_key": "value.mesh.api_key",
        "sealed.master.shop.prod.api_key": "value.mesh.api_key",
    }


def test_trusted_droplets_are_master_and_the_servers_or_all_below_three() -> None:
    assert trusted(["master", "web1"], ["master"]) == {"master", "web1"}
    assert trusted(["master", "a", "b", "c"], ["master", "a", "b"]) == {"master", "a", "b"}
    assert trusted(["master", "a", "b", "c"], ["master"]) == {"master"}


def test_each_projects_webhook_secret_goes_to_every_trusted_droplet_only() -> None:
    shop = allocation(droplets=("web1",), secrets=("api_key",))
    values = stored(
        value(WEBHOOK_SECRET, "shop", version=2),
        value(WEBHOOK_SECRET, "blog", "prod"),  # an environment's: not a project's hook key
        value(WEBHOOK_SECRET),  # the mesh's: no project falls back to it
        value("api_key", "shop"),
    )
    assert webhook_projects(values) == {"shop"}

    found = needs([shop], [], {"master", "a"}, webhook_projects(values))

    hooks = {n for n in found if n.name == WEBHOOK_SECRET}
    assert hooks == {
        Need("master", WEBHOOK_SECRET, "shop", PROJECT_WIDE),
        Need("a", WEBHOOK_SECRET, "shop", PROJECT_WIDE),
    }
    plan = sealings(found, values, {"master": "km", "a": "ka", "web1": "k1"})
    sealed = plan["sealed.master.shop.project.webhook_secret"]
    assert (sealed.source, sealed.version) == ("value.project.shop.webhook_secret", 2)
    assert "sealed.web1.shop.project.webhook_secret" not in plan


def test_a_project_wide_need_takes_only_the_projects_own_value() -> None:
    need = Need("master", WEBHOOK_SECRET, "shop", PROJECT_WIDE)
    assert source(need, stored(value(WEBHOOK_SECRET), value(WEBHOOK_SECRET, "blog"))) is None
    assert needs([], [], {"master"}, webhook_projects({})) == set()


def test_generated_secrets_are_made_only_where_nothing_is_set() -> None:
    database = allocation(env="prod", secrets=("db_password", "api_key"))
    uat = allocation(env="uat", secrets=("db_password",))
    assert missing_generated([database, uat], {}) == [
        ("db_password", "shop", "prod"),
        ("db_password", "shop", "uat"),
    ]
    assert missing_generated([database, uat], stored(value("db_password", "shop"))) == []


def test_used_by_names_the_services_a_value_reaches() -> None:
    prod = allocation(env="prod", secrets=("api_key",))
    uat = allocation(env="uat", secrets=("api_key",))
    values = stored(value("api_key", "shop"), value("api_key", "shop", "prod"))
    assert used_by("value.project.shop.api_key", [prod, uat], values) == ["shop.uat.backend"]
    assert used_by("value.env.shop.prod.api_key", [prod, uat], values) == ["shop.prod.backend"]


def test_the_list_says_which_mesh_secrets_the_mesh_itself_uses() -> None:
    state = DesiredState(
        projects=(),
        notify={"email": {"password_secret": "mail_pw"}, "sms": {}},
        vault={"address": "http://127.0.0.1:8200", "auth": "approle"},
    )
    values = stored(value("mail_pw"), value("twilio_auth_token"), value("vault_role_id"),
                    value(CLOUD_TOKEN), value(INFRASTRUCTURE_KEY))  # fmt: skip
    used = {row["name"]: row["used_by"] for row in secret_rows(values, {}, state)}
    assert used == {
        "mail_pw": ["mesh (email)"],
        "twilio_auth_token": ["mesh (sms)"],
        "vault_role_id": ["mesh (vault login)"],
        CLOUD_TOKEN: ["mesh (provider)"],
        INFRASTRUCTURE_KEY: ["mesh (SSH to droplets)"],
    }
    assert {k.value: v for k, v in CREDENTIALS.items()} == VAULT_LOGINS


def test_the_list_says_a_projects_webhook_secret_is_for_its_webhooks() -> None:
    values = stored(value(WEBHOOK_SECRET, "shop"), value(WEBHOOK_SECRET, "shop", "prod"))
    used = {(row["env"], tuple(row["used_by"])) for row in secret_rows(values, {})}
    assert used == {(None, ("shop (webhooks)",)), ("prod", ())}


def test_the_cloud_token_also_goes_where_data_is_kept_and_the_ssh_key_only_to_trusted() -> None:
    web = allocation(droplets=("web1", "web2"))
    database = allocation(service="database", service_kind="database", droplets=("web2",))
    files = allocation(service="uploads", data_path="/data", droplets=("web3",))
    found = needs([web, database, files], [CLOUD_TOKEN, INFRASTRUCTURE_KEY], {"master"})
    assert {n.droplet for n in found if n.name == CLOUD_TOKEN} == {"master", "web2", "web3"}
    assert {n.droplet for n in found if n.name == INFRASTRUCTURE_KEY} == {"master"}
    # Not set (a local mesh): nobody needs it.
    assert not any(n.name == CLOUD_TOKEN for n in needs([database], [], {"master"}))
