"""The operator's plain variables: names, the order of layers, env_template files, and the
scheduler rolling exactly what a change touches."""

from __future__ import annotations

import dataclasses

import click
import pytest

from meshd.cli.config import assignments, config_rows, operator_values, target_of
from meshd.core.allocations import allocations_for
from meshd.core.envvars import (
    SEED_VARIABLES,
    config_problem,
    instance_environment,
    with_config,
)
from meshd.core.errors import InputErrors
from meshd.core.placement import place
from meshd.core.resources import allocate
from meshd.core.spec import DesiredState, ServiceKind
from meshd.inputs.envfile import parse_env_file
from plugins.runtimes import secret_file_variables
from protocol.envconfig import ConfigVars
from tests.support.states import seed_state


def layer(project: str, env: str | None, **values: str) -> ConfigVars:
    return ConfigVars(project=project, env=env, values=values, set_by="op@laptop", set_at=1.0)


def test_every_variable_the_mesh_sets_is_refused_as_a_config_name() -> None:
    alloc = allocate([("shop", "prod")])[("shop", "prod")]
    own = instance_environment(alloc, "backend", ServiceKind.WEB, ["shop-web1"])
    assert set(own) <= SEED_VARIABLES
    for name in [*own, "DB_HOST", "SERVICE_HOST", "SECRETS_DIR", "DB_PASSWORD_FILE"]:
        assert config_problem(name, "x"), name
    assert config_problem("API_RATE_LIMIT", "1000") is None
    assert "variable name" in (config_problem("API-LIMIT", "1") or "")
    assert "NUL" in (config_problem("A", "a\0b") or "")
    assert "longer" in (config_problem("A", "x" * 5000) or "")


def test_narrower_layers_win_and_none_overrides_the_mesh() -> None:
    merged = with_config(
        {"PROJECT": "shop"},
        {"LEVEL": "template", "ONLY_TEMPLATE": "t", "PROJECT": "evil"},
        {"LEVEL": "project"},
        {"LEVEL": "env"},
    )
    assert merged == {"PROJECT": "shop", "LEVEL": "env", "ONLY_TEMPLATE": "t"}


def test_secret_files_are_named_by_variables() -> None:
    assert secret_file_variables(["db_password", "jwt"], "/run/secrets") == {
        "DB_PASSWORD_FILE": "/run/secrets/db_password",
        "JWT_FILE": "/run/secrets/jwt",
    }


def test_an_env_file_reads_like_dockers_and_reports_every_bad_line() -> None:
    text = (
        '# settings\n\nexport FEATURE_X=enabled\nGREETING="hello world"\n'
        "QUOTED='a=b'\nLIMIT=1000 # per minute\nEMPTY=\n"
    )
    assert parse_env_file(text, "backend.env") == {
        "FEATURE_X": "enabled",
        "GREETING": "hello world",
        "QUOTED": "a=b",
        "LIMIT": "1000",
        "EMPTY": "",
    }
    with pytest.raises(InputErrors) as caught:
        parse_env_file("OK=1\nnot a line\nDB_HOST=x\nOK=2\n", "backend.env")
    assert [str(i) for i in caught.value.issues] == [
        "backend.env:2: expected NAME=value, got 'not a line'",
        "backend.env:3: DB_HOST is set by the mesh itself and cannot be overridden",
        "backend.env:4: OK is set twice",
    ]


def test_command_line_targets_and_assignments() -> None:
    target, rest = target_of(("shop", "prod", "A=1"))
    assert (target.project, target.env, rest) == ("shop", "prod", ["A=1"])
    target, rest = target_of(("shop", "A=1", "B=x=y"))
    assert target.env is None and assignments(rest) == {"A": "1", "B": "x=y"}
    for words in (["A"], ["DB_NAME=x"], ["lower-case=1"], []):
        with pytest.raises(click.UsageError):
            assignments(words)


def test_a_change_rolls_the_services_it_reaches_and_never_a_datastore() -> None:
    state = seed_state()
    placement = place(state)
    before = allocations_for(state, placement, {}, fence=1)
    config = {
        ("hostomatic", None): layer("hostomatic", None, FEATURE="on", LEVEL="project"),
        ("hostomatic", "prod"): layer("hostomatic", "prod", LEVEL="prod"),
    }
    after = allocations_for(state, placement, before, fence=2, config=config)
    prod, uat = after["hostomatic.prod.backend"], after["hostomatic.uat.backend"]
    assert prod.env_vars["LEVEL"] == "prod" and uat.env_vars["LEVEL"] == "project"
    assert prod.env_vars["FEATURE"] == "on"
    rolled = {k for k in after if after[k].generation != before[k].generation}
    hostomatic = {
        k
        for k, a in after.items()
        if a.project == "hostomatic" and a.service not in ("database", "redis")
    }
    assert rolled == hostomatic
    assert "FEATURE" not in after["hostomatic.prod.database"].env_vars
    again = allocations_for(state, placement, after, fence=3, config=config)
    assert all(again[k].generation == after[k].generation for k in after)


def test_template_variables_reach_their_service_and_survive_the_wire() -> None:
    state = seed_state()
    project = state.projects[0]
    backend = next(s for s in project.services if s.name == "backend")
    changed = dataclasses.replace(backend, env_template="templates/backend.env", env={"X": "1"})
    services = tuple(changed if s.name == "backend" else s for s in project.services)
    state = dataclasses.replace(
        state, projects=(dataclasses.replace(project, services=services), *state.projects[1:])
    )
    assert DesiredState.from_data(state.to_data()) == state
    allocations = allocations_for(state, place(state), {}, fence=1)
    assert allocations[f"{project.name}.prod.backend"].env_vars["X"] == "1"
    assert "X" not in allocations[f"{project.name}.prod.frontend"].env_vars
    rows = config_rows(state, {(project.name, "uat"): layer(project.name, "uat", Y="2")}, None)
    assert [(r["source"], r["name"], r["env"]) for r in rows] == [
        ("template:backend", "X", None),
        ("env", "Y", "uat"),
    ]


def test_meshctl_expects_exactly_what_the_scheduler_gives() -> None:
    """`config set`/`unset` wait until the allocations hold what `operator_values` predicts:
    the same merge as the scheduler's, an unset variable falling back to a wider layer."""
    state = seed_state()
    project = state.projects[0]
    services = tuple(
        dataclasses.replace(s, env={"A": "template", "B": "template"}) if s.name == "backend" else s
        for s in project.services
    )
    state = dataclasses.replace(
        state, projects=(dataclasses.replace(project, services=services), *state.projects[1:])
    )
    layers = {
        (project.name, None): layer(project.name, None, A="project", C="project"),
        (project.name, "prod"): layer(project.name, "prod", C="prod"),
    }
    allocations = allocations_for(state, place(state), {}, fence=1, config=layers)
    for allocation in allocations.values():
        if allocation.project != project.name or allocation.service_kind in ("database", "redis"):
            continue
        expected = operator_values(allocation, layers, state)
        assert expected.items() <= allocation.env_vars.items()
    prod_backend = allocations[f"{project.name}.prod.backend"]
    assert operator_values(prod_backend, layers, state) == {
        "A": "project",
        "B": "template",
        "C": "prod",
    }
