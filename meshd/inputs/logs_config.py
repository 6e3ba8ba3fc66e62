"""The deployment config's top-level `logs` object (docs/logs.md): where the mesh forwards
its logs besides `meshctl logs`. Checked here, published with its defaults filled in
(`plugins.logsinks`); its keys are the `logs` and `opensearch` levels of `config_keys`."""

from __future__ import annotations

from typing import Any

from meshd.inputs.config_keys import Level, names_at
from meshd.inputs.vault_config import Checks
from plugins.logsinks import DEFAULT_INDEX, OpenSearchSettings, index_problem, url_problem


def logs_settings(checker: Checks, value: Any, path: str) -> dict[str, Any]:
    """The `logs` object as published; problems go to `checker` (then the result is empty)."""
    before = len(checker.issues)
    body = checker.obj(value, path, names_at(Level.LOGS))
    if body is None or "opensearch" not in body:
        return {}
    where = f"{path}.opensearch"
    given = body["opensearch"]
    if isinstance(given, dict) and "password" in given:  # said apart from an unknown key
        checker.fail(f"{where}.password", "a password is never in the config; set it with "
                     "`meshctl secret set --mesh opensearch_password`")  # fmt: skip
        given = {k: v for k, v in given.items() if k != "password"}
    search = checker.obj(given, where, names_at(Level.OPENSEARCH))
    if search is None:
        return {}
    if "url" not in search:
        checker.fail(where, "OpenSearch needs a url, like 'https://search.example.com:9200'")
        return {}
    url = checker.text(search["url"], f"{where}.url", url_problem)
    index = checker.text(search.get("index", DEFAULT_INDEX), f"{where}.index", index_problem)
    user = checker.text(search["user"], f"{where}.user") if "user" in search else None
    if len(checker.issues) > before:
        return {}
    return {"opensearch": OpenSearchSettings(url.rstrip("/"), index, user).to_data()}
