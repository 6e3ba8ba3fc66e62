"""The deployment config's top-level `acme` object (docs/tls.md): which ACME directory the
`certificates` role orders the domains' certificates from, and the account's contact. Checked
here; published with its defaults filled in, the directory's own CA (a private CA such as
pebble or step-ca) read from its file so that every droplet has it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from meshd.core.certs import LETS_ENCRYPT
from meshd.inputs.config_keys import Level, names_at
from meshd.inputs.vault_config import Checks
from plugins.urls import http_url_problem

EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
PEM_CERTIFICATE = "-----BEGIN CERTIFICATE-----"
MAX_CA_BYTES = 64 * 1024


def default_acme() -> dict[str, Any]:
    """No directory named: the mesh's default (`meshd.core.certs.default_directory`)."""
    return {"directory": "", "email": "", "directory_ca": ""}


def acme_settings(checker: Checks, value: Any, path: str, config_file: str) -> dict[str, Any]:
    """The `acme` object as published (directory, email, directory_ca as PEM text); problems
    go to `checker`. `config_file` is where relative paths start."""
    body = checker.obj(value, path, names_at(Level.ACME))
    if body is None:
        return default_acme()
    settings = default_acme()
    if "directory" in body:
        settings["directory"] = checker.text(
            body["directory"], f"{path}.directory", _directory_problem
        )
    if "email" in body:
        settings["email"] = checker.text(body["email"], f"{path}.email", _email_problem)
    if "directory_ca" in body:
        where = f"{path}.directory_ca"
        name = checker.text(body["directory_ca"], where)
        if name:
            settings["directory_ca"] = _read_ca(checker, where, Path(config_file).parent / name)
    return settings


def _directory_problem(url: str) -> str | None:
    problem = http_url_problem(url, LETS_ENCRYPT)
    if problem is None and not url.startswith("https://"):
        return f"{url!r}: an ACME directory is served over https://, like {LETS_ENCRYPT!r}"
    return problem


def _email_problem(email: str) -> str | None:
    if EMAIL.fullmatch(email):
        return None
    return f"{email!r} is not an email address; the CA writes to it about the account"


def _read_ca(checker: Checks, where: str, path: Path) -> str:
    try:
        data = path.read_bytes()[: MAX_CA_BYTES + 1]
    except OSError as err:
        checker.fail(
            where, f"cannot read {path}: {err.strerror}; a PEM file relative to the config"
        )
        return ""
    text = data.decode("ascii", errors="replace")
    if len(data) > MAX_CA_BYTES or PEM_CERTIFICATE not in text:
        checker.fail(where, f"{path} is not a PEM certificate ('{PEM_CERTIFICATE}')")
        return ""
    return text
