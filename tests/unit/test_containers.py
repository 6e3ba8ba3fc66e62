"""The container an instance becomes (pure): names, labels, ports on the droplet's address,
secrets by name only, and the built-in PostgreSQL and Redis templates, whose images tests
cannot pull, checked by the specs they produce."""

from __future__ import annotations

from typing import Any

import pytest

from plugins.runtimes import InstanceSpec
from plugins.runtimes.docker.containers import (
    ContainerSpecError,
    container_spec,
    secret_files,
)

ADDRESS = "127.0.9.4"
ENV = {"DB_USER": "shop_test_user", "DB_NAME": "shop_test_db", "DB_PORT": "5201"}


def spec(**more: Any) -> InstanceSpec:
    values: dict[str, Any] = {
        "project": "shop",
        "env": "test",
        "service": "backend",
        "generation": 3,
        "host": ADDRESS,
        "port": 8104,
        "image": "shop-backend:1a2b",
        "env_vars": dict(ENV),
        "memory_mb": 64,
        "health_path": "/health",
        "service_kind": "web",
    }
    return InstanceSpec(**{**values, **more})


def test_a_web_service_listens_on_its_port_inside_and_on_the_droplet_address_outside() -> None:
    container = container_spec(spec(), "demo", "web1")

    assert container.name == "meshd-demo-web1-shop-test-backend"
    assert container.ports == {"8104/tcp": (ADDRESS, 8104)}
    assert container.labels == {
        "meshd.mesh": "demo",
        "meshd.local.droplet": "web1",
        "meshd.project": "shop",
        "meshd.env": "test",
        "meshd.service": "backend",
        "meshd.generation": "3",
    }
    assert (container.network, container.alias) == ("meshd-demo-web1-shop-test", "backend")
    assert container.restart_policy == "unless-stopped"
    assert container.memory_mb == 64
    assert container.volume is None
    assert container.healthcheck is not None
    assert "http://127.0.0.1:8104/health" in str(container.healthcheck["test"])


def test_workers_have_no_port_and_no_healthcheck() -> None:
    container = container_spec(
        spec(service="mailer", service_kind="worker", port=None, health_path=None), "demo", "m"
    )
    assert (container.ports, container.healthcheck) == ({}, None)


def test_secrets_are_names_only_and_never_environment() -> None:
    secret = b"hunter2-never-in-the-spec"
    container = container_spec(spec(secrets={"jwt_secret": secret}), "demo", "web1")

    assert container.secrets == ("jwt_secret",)
    assert secret.decode() not in repr(container)
    assert all(secret.decode() not in v for v in container.environment.values())


def test_the_database_template_is_postgres_with_a_password_file_and_a_data_volume() -> None:
    database = spec(
        service="database",
        service_kind="database",
        image=None,
        port=5201,
        health_path=None,
        secrets={"db_password": b"pw"},
    )
    container = container_spec(database, "demo", "master")

    assert container.image.startswith("postgres:")
    assert container.ports == {"5432/tcp": (ADDRESS, 5201)}
    assert container.environment["POSTGRES_DB"] == "shop_test_db"
    assert container.environment["POSTGRES_USER"] == "shop_test_user"
    assert container.environment["POSTGRES_PASSWORD_FILE"] == "/run/secrets/db_password"
    assert "POSTGRES_PASSWORD" not in container.environment
    assert (container.volume, container.data_path) == (
        "meshd-demo-master-shop-test-database",
        "/var/lib/postgresql/data",
    )
    assert container.secrets == ("db_password",)
    assert container.secret_uid == 70
    assert container.healthcheck is None


def test_the_redis_template_reads_its_password_from_a_config_file_not_its_command_line() -> None:
    redis = spec(
        service="redis",
        service_kind="redis",
        image=None,
        port=6301,
        health_path=None,
        secrets={"redis_password": b'p"w\n'},
    )
    container = container_spec(redis, "demo", "master")

    assert container.image.startswith("redis:")
    assert container.ports == {"6379/tcp": (ADDRESS, 6301)}
    assert container.command == (
        "redis-server",
        "/run/secrets/redis.conf",
        "--appendonly",
        "yes",
    )
    assert container.secrets == ("redis.conf", "redis_password")
    assert secret_files(redis)["redis.conf"] == b'requirepass "p\\"w"\n'
    assert (container.volume, container.data_path) == (
        "meshd-demo-master-shop-test-redis",
        "/data",
    )
    assert not any('p"w' in part for part in container.command or ())


def test_a_template_without_its_secret_says_which_to_list() -> None:
    database = spec(service="database", service_kind="database", image=None, secrets={})
    with pytest.raises(ContainerSpecError, match="secret 'db_password'; list it"):
        container_spec(database, "demo", "master")


def test_a_datastore_with_an_image_of_its_own_is_not_templated() -> None:
    mariadb = spec(
        service="database",
        service_kind="database",
        image="mariadb:11",
        port=5201,
        data_path="/var/lib/mysql",
        health_path=None,
    )
    container = container_spec(mariadb, "demo", "master")

    assert container.image == "mariadb:11"
    assert container.ports == {"5201/tcp": (ADDRESS, 5201)}
    assert container.volume == "meshd-demo-master-shop-test-database"
    assert "POSTGRES_DB" not in container.environment


def test_a_build_here_runs_its_tag_and_a_build_from_git_waits_for_a_deploy() -> None:
    built = container_spec(
        spec(build_context="/srv/shop/app", dockerfile="/srv/shop/app/Dockerfile"), "d", "m"
    )
    assert built.image == "shop-backend:1a2b"
    assert built.build is not None and built.build.context == "/srv/shop/app"

    with pytest.raises(ContainerSpecError, match="waiting for a deploy"):
        container_spec(spec(image=None, build_context="backend/"), "d", "m")


def test_no_image_at_all_is_refused_with_what_to_give() -> None:
    with pytest.raises(ContainerSpecError, match="give the service an image or a build_context"):
        container_spec(spec(image=None), "demo", "web1")


def test_a_command_is_split_like_a_shell_and_a_broken_one_is_refused() -> None:
    container = container_spec(spec(command="serve 'DB_PORT'"), "demo", "web1")
    assert container.command == ("serve", "DB_PORT")
    with pytest.raises(ContainerSpecError, match="cannot parse command"):
        container_spec(spec(command="serve 'DB_PORT"), "demo", "web1")
