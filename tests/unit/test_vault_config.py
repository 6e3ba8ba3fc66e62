"""The deployment config's `vault` object: bad ones are refused with their JSON path (a table
in `tests/cases/vault_config_cases.json`), good ones are published with their defaults and
read back as the settings the `secrets` role uses; without one nothing changes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from meshd.core.errors import InputErrors
from meshd.core.spec import DesiredState
from meshd.inputs.csvfile import ProjectRow
from meshd.inputs.deploy_config import DeployConfig, parse_deploy_config
from meshd.inputs.merge import build_desired_state
from plugins.secrets.vault import VaultAuth, VaultCredentials, VaultSettings

TABLE: dict[str, Any] = json.loads(
    (Path(__file__).parents[1] / "cases" / "vault_config_cases.json").read_text(encoding="utf-8")
)
FILENAME = "deployment_config.json"


def parse(vault: Any) -> DeployConfig:
    return parse_deploy_config(json.dumps({"vault": vault}).encode(), FILENAME)


@pytest.mark.parametrize("case", sorted(TABLE["refused"]))
def test_config_refuses_a_bad_vault_naming_its_json_path_and_problem(case: str) -> None:
    spec = TABLE["refused"][case]
    with pytest.raises(InputErrors) as caught:
        parse(spec["vault"])
    found = [(issue.where, issue.message) for issue in caught.value.issues]
    assert len(found) == len(spec["issues"]), found
    for (where, message), want in zip(found, spec["issues"], strict=True):
        assert where == want["at"], found
        for fragment in want["says"]:
            assert fragment in message, (fragment, message)


def test_a_vault_with_only_an_address_gets_the_defaults() -> None:
    config = parse({"address": "https://vault.example.com:8200/"})
    assert config.vault == {
        "address": "https://vault.example.com:8200",
        "mount": "secret",
        "auth": "token",
        "prefix": "meshd",
    }


def test_a_full_vault_is_kept_as_given() -> None:
    given = {"address": "http://127.0.0.1:8200", "mount": "kv", "auth": "approle", "prefix": "a/b"}
    assert parse(given).vault == given


def test_the_vault_is_published_with_the_desired_state_and_read_back() -> None:
    config = parse({"address": "https://vault.example.com", "auth": "approle"})
    state = build_desired_state([ProjectRow("shop", 1, "s-1vcpu-1gb", "s-1vcpu-1gb", 2)], config)
    again = DesiredState.from_data(json.loads(json.dumps(state.to_data())))
    assert again.vault == config.vault
    settings = VaultSettings.from_data(again.vault)
    assert settings == VaultSettings("https://vault.example.com", auth=VaultAuth.APPROLE)
    assert settings.credentials == ("vault_role_id", "vault_secret_id")


def test_without_a_vault_the_state_has_none_and_old_states_read_as_none() -> None:
    state = build_desired_state([], parse_deploy_config(b"{}", FILENAME))
    assert state.vault == {}
    old = state.to_data()
    del old["vault"]  # published before vaults existed
    assert DesiredState.from_data(old).vault == {}
    assert VaultSettings.from_data(DesiredState.from_data(old).vault) is None


def test_credentials_never_show_in_their_repr() -> None:
    credentials = VaultCredentials(token="hvs.top-secret", role_id="rid-1", secret_id="sid-2")
    shown = repr(credentials)
    assert "top-secret" not in shown and "rid-1" not in shown and "sid-2" not in shown
