"""Which environment a pushed branch deploys to: main to UAT and any other branch to test by
default, an exact name over a pattern and a longer pattern over a shorter one, never prod;
the project key `deploy` is checked with the JSON path of each problem."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshd.core.deploy_refs import DEFAULT_DEPLOY, environment_for, validate_deploy_mapping
from meshd.core.errors import InputErrors
from meshd.inputs.deploy_config import DeployConfig, parse_deploy_config

BRANCHES = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_/.-]{0,30}", fullmatch=True).filter(
    lambda b: ".." not in b
)


@pytest.mark.parametrize(
    ("branch", "mapping", "environment"),
    [
        ("main", DEFAULT_DEPLOY, "uat"),
        ("feature/login", DEFAULT_DEPLOY, "test"),
        ("Main", DEFAULT_DEPLOY, "test"),  # git names are case-sensitive
        ("main2", DEFAULT_DEPLOY, "test"),
        ("main", {"uat": "main"}, "uat"),
        ("dev", {"uat": "main"}, None),  # a given mapping replaces the default
        ("dev", {}, None),
        ("release/2.1", {"uat": "release/*", "test": "*"}, "uat"),  # more literal characters
        ("release", {"uat": "release/*", "test": "*"}, "test"),
        ("hotfix-1", {"uat": "hotfix-?", "test": "hotfix-[0-9]"}, "uat"),  # a tie goes to UAT
        ("main", {"test": "m*", "uat": "*"}, "test"),
        ("main", {"test": "main", "uat": "ma*"}, "test"),  # the exact name wins
        ("main", {"prod": "main", "test": "*"}, "test"),  # prod is never answered
        ("x", {"uat": ["x"], "test": "*"}, "test"),  # an unchecked non-string is no rule
    ],
)
def test_a_branch_deploys_to_the_environment_whose_pattern_takes_it(
    branch: str, mapping: dict[str, Any], environment: str | None
) -> None:
    assert environment_for(branch, mapping) == environment


@given(BRANCHES, st.dictionaries(st.sampled_from(["prod", "uat", "test"]), st.text(max_size=6)))
def test_a_push_never_deploys_to_prod(branch: str, mapping: dict[str, str]) -> None:
    assert environment_for(branch, mapping) in ("uat", "test", None)


@given(BRANCHES)
def test_by_default_main_goes_to_uat_and_every_other_branch_to_test(branch: str) -> None:
    assert environment_for(branch) == ("uat" if branch == "main" else "test")


@pytest.mark.parametrize(
    ("value", "problems"),
    [
        ({"prod": "main"}, [("prod", "only by promoting")]),
        ({"dev": "*"}, [("dev", "expected 'uat' or 'test'")]),
        ({"uat": ""}, [("uat", "expected a branch pattern like 'main'")]),
        ({"uat": 3}, [("uat", "got 3")]),
        ({"uat": ["main"]}, [("uat", "expected a branch pattern")]),
        ({"uat": "refs/heads/main"}, [("uat", "like 'main' for refs/heads/main")]),
        ({"uat": "main branch"}, [("uat", "can never match a branch")]),
        ({"test": "a..b"}, [("test", "can never match")]),
        ({"uat": "main", "test": "main"}, [("test", "the same pattern as 'uat'")]),
        ("main", [(None, 'like {"uat": "main", "test": "*"}')]),
        (None, [(None, "got null")]),
        ({"prod": "main", "uat": "x y"}, [("prod", "remove it"), ("uat", "never match")]),
    ],
)
def test_a_bad_mapping_is_refused_saying_what_would_be_right(
    value: Any, problems: list[tuple[str | None, str]]
) -> None:
    found = validate_deploy_mapping(value)
    assert [p.environment for p in found] == [env for env, _ in problems], found
    for problem, (_, fragment) in zip(found, problems, strict=True):
        assert fragment in problem.message, (fragment, problem.message)


@pytest.mark.parametrize(
    "value", [{}, {"uat": "main"}, dict(DEFAULT_DEPLOY), {"uat": "release/[0-9]*", "test": "*"}]
)
def test_a_good_mapping_has_no_problems(value: dict[str, str]) -> None:
    assert validate_deploy_mapping(value) == []


# --- the project key `deploy` -----------------------------------------------------------


def parse(project: dict[str, Any]) -> DeployConfig:
    document = {"projects": {"web": project}}
    return parse_deploy_config(json.dumps(document).encode(), "deployment_config.json")


def test_a_project_without_deploy_gets_the_default_mapping() -> None:
    assert parse({}).projects["web"].deploy == {"uat": "main", "test": "*"}


def test_a_project_deploy_mapping_replaces_the_default() -> None:
    assert parse({"deploy": {"uat": "trunk"}}).projects["web"].deploy == {"uat": "trunk"}


def test_a_deploy_naming_prod_is_refused_with_its_json_path() -> None:
    with pytest.raises(InputErrors) as caught:
        parse({"deploy": {"prod": "main", "uat": "main", "test": "main", "qa dev": "*"}})
    found = [(issue.where, issue.message) for issue in caught.value.issues]
    assert [where for where, _ in found] == [
        "$.projects.web.deploy.prod",
        "$.projects.web.deploy.test",
        "$.projects.web.deploy['qa dev']",
    ], found
    assert "meshctl promote" in found[0][1]


def test_a_deploy_that_is_not_an_object_is_refused_at_its_own_path() -> None:
    with pytest.raises(InputErrors) as caught:
        parse({"deploy": "main"})
    (issue,) = caught.value.issues
    assert issue.where == "$.projects.web.deploy"
    assert "expected an object" in issue.message
