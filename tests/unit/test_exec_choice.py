"""Which droplet `meshctl exec` asks: the one named if it runs the service, else one whose
instance is healthy, else one that reports; none that reports is an error."""

from __future__ import annotations

import click
import pytest

from meshd.cli.exec_command import choose_droplet
from protocol.errors import MeshError
from tests.support.factories import NOW, allocation, instance, node

BACKEND = allocation(droplets=("web1", "web2", "web3"))


def test_the_droplet_asked_for_if_it_runs_the_service() -> None:
    assert choose_droplet(BACKEND, {}, "web2", NOW) == "web2"
    with pytest.raises(click.UsageError, match="'master' does not run backend; it runs on web1"):
        choose_droplet(BACKEND, {}, "master", NOW)


def test_a_droplet_with_a_healthy_instance_first() -> None:
    nodes = {
        "web1": node("web1", instance(healthy=False)),
        "web2": node("web2", instance()),
        "web3": node("web3", instance()),
    }
    assert choose_droplet(BACKEND, nodes, None, NOW) == "web2"


def test_else_one_that_reports_and_never_a_silent_one() -> None:
    nodes = {"web1": node("web1", updated_at=NOW - 600), "web3": node("web3")}
    assert choose_droplet(BACKEND, nodes, None, NOW) == "web3"
    with pytest.raises(MeshError, match="no droplet that runs backend reports"):
        choose_droplet(BACKEND, {"web1": node("web1", updated_at=NOW - 600)}, None, NOW)
