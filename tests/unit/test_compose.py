"""`meshctl compose` prints the compose file of the containers the docker runtime creates:
the same names, images, ports, environment, volumes and secrets (by name only)."""

from __future__ import annotations

from typing import Any

import yaml

from meshd.cli.compose import droplet_compose
from protocol.messages import Allocation

ADDRESSES = {"master": "127.0.9.2", "shop-web1": "127.0.9.5"}


def allocation(service: str, **more: Any) -> Allocation:
    values: dict[str, Any] = {
        "project": "shop",
        "env": "prod",
        "service": service,
        "generation": 2,
        "droplets": ("master",),
        "port": None,
        "image": None,
        "command": None,
        "memory_mb": 64,
        "env_vars": {"PROJECT": "shop", "DB_NAME": "shop_prod_db", "DB_USER": "shop_prod_user"},
        "hosts": {"DB_HOST": "master"},
    }
    return Allocation(**{**values, **more})


ALLOCATIONS = [
    allocation(
        "backend",
        port=8104,
        image="shop-backend:0a1b2c3d4e5f",
        build_context="/srv/shop/app",
        dockerfile="/srv/shop/app/Dockerfile",
        health_path="/health",
        secrets=("jwt_secret",),
        droplets=("master", "shop-web1"),
    ),
    allocation(
        "database", port=5104, service_kind="database", secrets=("db_password",), memory_mb=96
    ),
    allocation("mailer", image="shop-mailer:1", command="work --fast", service_kind="worker"),
    allocation("reports", build_context="reports/", service_kind="worker"),  # from git, later
]


def master() -> tuple[str, dict[str, Any]]:
    text = droplet_compose("demo", "master", ALLOCATIONS, ADDRESSES)
    return text, yaml.safe_load(text)


def test_every_service_of_the_droplet_is_a_compose_service_named_like_its_container() -> None:
    _, document = master()

    assert document["name"] == "meshd-demo-master-shop-prod"
    assert sorted(document["services"]) == ["backend", "database", "mailer"]
    backend = document["services"]["backend"]
    assert backend["container_name"] == "meshd-demo-master-shop-prod-backend"
    assert backend["image"] == "shop-backend:0a1b2c3d4e5f"
    assert backend["build"] == {
        "context": "/srv/shop/app",
        "dockerfile": "/srv/shop/app/Dockerfile",
    }
    assert backend["ports"] == ["127.0.9.2:8104:8104/tcp"]
    assert backend["environment"]["DB_HOST"] == "127.0.9.2"
    assert backend["labels"]["meshd.generation"] == "2"
    assert backend["restart"] == "unless-stopped"
    assert backend["mem_limit"] == "64m"
    assert backend["healthcheck"]["test"][0] == "CMD-SHELL"
    assert backend["secrets"] == ["jwt_secret"]
    assert document["networks"]["default"]["name"] == "meshd-demo-master-shop-prod"
    assert document["services"]["mailer"]["command"] == ["work", "--fast"]


def test_the_database_template_shows_postgres_its_volume_and_its_password_file() -> None:
    _, document = master()

    database = document["services"]["database"]
    assert database["image"].startswith("postgres:")
    assert database["ports"] == ["127.0.9.2:5104:5432/tcp"]
    assert database["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/db_password"
    assert database["volumes"] == ["meshd-demo-master-shop-prod-database:/var/lib/postgresql/data"]
    assert document["volumes"] == {
        "meshd-demo-master-shop-prod-database": {"name": "meshd-demo-master-shop-prod-database"}
    }
    assert document["secrets"] == {
        "db_password": {"file": "./secrets/db_password"},
        "jwt_secret": {"file": "./secrets/jwt_secret"},
    }


def test_a_service_that_cannot_run_yet_is_named_in_a_comment() -> None:
    text, _ = master()
    assert text.startswith("# not shown, reports: waiting for a deploy")


def test_another_droplet_gets_only_its_own_services() -> None:
    document = yaml.safe_load(droplet_compose("demo", "shop-web1", ALLOCATIONS, ADDRESSES))

    assert list(document["services"]) == ["backend"]
    assert document["services"]["backend"]["ports"] == ["127.0.9.5:8104:8104/tcp"]
    assert "volumes" not in document
