"""Reading a service's `env_template` (the seed's `templates/backend.env`): `KEY=VALUE` lines
as docker's `--env-file` and compose read them, `#` comments, blank lines, an optional
`export `, values optionally in single or double quotes. Plain settings only: a secret
belongs in `meshctl secret`, and a line naming a secret file variable is refused."""

from __future__ import annotations

from meshd.core.envvars import config_problem
from meshd.core.errors import InputErrors, InputIssue


def parse_env_file(text: str, filename: str) -> dict[str, str]:
    """The file's variables; raises `InputErrors` listing every bad line."""
    issues: list[InputIssue] = []
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        name, equals, value = line.partition("=")
        name = name.strip()
        if not equals:
            issues.append(
                InputIssue(filename, str(number), f"expected NAME=value, got {line[:40]!r}")
            )
            continue
        value = _unquoted(value.strip())
        problem = config_problem(name, value)
        if problem is None and name in values:
            problem = f"{name} is set twice"
        if problem:
            issues.append(InputIssue(filename, str(number), problem))
            continue
        values[name] = value
    if issues:
        raise InputErrors(issues)
    return values


def _unquoted(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    if " #" in value:  # a comment after an unquoted value
        return value.split(" #", 1)[0].rstrip()
    return value
