"""The deployment config's top-level `vault` object (docs/secrets.md, "Vault / OpenBao"):
where the mesh reads secrets from a Vault or OpenBao KV v2 mount. Checked here, published with
its defaults filled in (`plugins.secrets.vault.VaultSettings`); its keys are the `vault` level
of `config_keys`."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, Protocol

from meshd.inputs.config_keys import Level, names_at
from plugins.secrets.vault import (
    DEFAULT_MOUNT,
    DEFAULT_PREFIX,
    VaultAuth,
    VaultSettings,
    address_problem,
)

VAULT_KEYS = names_at(Level.VAULT)
VAULT_PATH = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*(/[A-Za-z0-9_-][A-Za-z0-9_.-]*)*\Z")


class Checks(Protocol):
    """The parts of the deployment config's checker used here (`deploy_config._Checker`)."""

    issues: list[Any]

    def fail(self, path: str, message: str) -> None: ...

    def obj(
        self, value: Any, path: str, allowed: tuple[str, ...] | None = None
    ) -> dict[str, Any] | None: ...

    def text(
        self, value: Any, path: str, check: Callable[[str], str | None] | None = None
    ) -> str: ...


def vault_settings(checker: Checks, value: Any, path: str) -> dict[str, Any]:
    """The `vault` object as published, defaults filled in; problems go to `checker` (then
    the result is empty)."""
    before = len(checker.issues)
    body = checker.obj(value, path, VAULT_KEYS)
    if body is None:
        return {}
    if "address" not in body:
        checker.fail(path, "a vault needs an address, like 'https://vault.example.com:8200'")
        return {}
    address = checker.text(body["address"], f"{path}.address", address_problem)
    mount = checker.text(body.get("mount", DEFAULT_MOUNT), f"{path}.mount", _path_problem)
    prefix = checker.text(body.get("prefix", DEFAULT_PREFIX), f"{path}.prefix", _path_problem)
    auth = body.get("auth", VaultAuth.TOKEN.value)
    if auth not in tuple(VaultAuth):
        known = ", ".join(repr(a.value) for a in VaultAuth)
        checker.fail(f"{path}.auth", f"{_shown(auth)} is not a way to log in; expected {known}")
    if len(checker.issues) > before:
        return {}
    return VaultSettings(address.rstrip("/"), mount, VaultAuth(auth), prefix).to_data()


def _path_problem(value: str) -> str | None:
    if not VAULT_PATH.match(value) or ".." in value.split("/"):
        return (
            f"{_shown(value)} is not a path in Vault; expected names of letters, digits, "
            "'_', '-' and '.' joined by '/', like 'secret' or 'teams/web'"
        )
    return None


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."
