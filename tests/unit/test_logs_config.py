"""The deployment config's `logs` object: an OpenSearch cluster checked and published with its
defaults, read back from the desired state; bad ones refused with their JSON path."""

from __future__ import annotations

import json
from typing import Any

import pytest

from meshd.core.errors import InputErrors
from meshd.core.spec import DesiredState
from meshd.inputs.csvfile import ProjectRow
from meshd.inputs.deploy_config import DeployConfig, parse_deploy_config
from meshd.inputs.merge import build_desired_state
from plugins.logsinks import OpenSearchSettings

REFUSED = {
    "not_an_object": ("on", "$.logs", "expected an object"),
    "unknown_sink": ({"elastic": {}}, "$.logs.elastic", "known: opensearch"),
    "no_url": ({"opensearch": {"index": "x"}}, "$.logs.opensearch", "needs a url"),
    "not_http": ({"opensearch": {"url": "ftp://h"}}, "$.logs.opensearch.url", "http(s)://"),
    "query": ({"opensearch": {"url": "http://h/?a=1"}}, "$.logs.opensearch.url", "without query"),
    "bad_port": ({"opensearch": {"url": "http://h:99999"}}, "$.logs.opensearch.url", "not a URL"),
    "upper_index": (
        {"opensearch": {"url": "http://h", "index": "Logs"}},
        "$.logs.opensearch.index",
        "lowercase",
    ),
    "user_not_text": (
        {"opensearch": {"url": "http://h", "user": 7}},
        "$.logs.opensearch.user",
        "string",
    ),
    "password_in_config": (
        {"opensearch": {"url": "http://h", "password": "x"}},
        "$.logs.opensearch.password",
        "meshctl secret set --mesh opensearch_password",
    ),
}


def parse(logs: Any) -> DeployConfig:
    return parse_deploy_config(json.dumps({"logs": logs}).encode(), "deployment_config.json")


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_bad_logs_object_is_refused_naming_its_path(case: str) -> None:
    logs, where, says = REFUSED[case]
    with pytest.raises(InputErrors) as caught:
        parse(logs)
    found = [(issue.where, issue.message) for issue in caught.value.issues]
    assert len(found) == 1 and found[0][0] == where and says in found[0][1], found


def test_an_opensearch_url_alone_gets_the_default_index_and_no_login() -> None:
    config = parse({"opensearch": {"url": "https://search.example.com:9200/"}})
    assert config.logs == {
        "opensearch": {
            "url": "https://search.example.com:9200",
            "index": "meshd-logs",
            "user": None,
        }
    }


def test_the_sink_is_published_with_the_desired_state_and_read_back() -> None:
    config = parse({"opensearch": {"url": "http://127.0.0.1:9200", "index": "a.b", "user": "m"}})
    state = build_desired_state([ProjectRow("shop", 1, "s-1vcpu-1gb", "s-1vcpu-1gb", 2)], config)
    again = DesiredState.from_data(json.loads(json.dumps(state.to_data())))
    settings = OpenSearchSettings.from_data(again.logs.get("opensearch"))
    assert settings == OpenSearchSettings("http://127.0.0.1:9200", "a.b", "m")


def test_without_logs_nothing_is_forwarded_and_old_states_read_as_none() -> None:
    assert parse_deploy_config(b"{}", "deployment_config.json").logs == {}
    assert DesiredState.from_data({"projects": []}).logs == {}
    assert OpenSearchSettings.from_data({}) is None
