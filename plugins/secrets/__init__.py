"""Where secret values come from. `Secrets.get` returns a service's secret by its short name
(`db_password`), looked up in the seed's order; values are bytes and never logged."""

from __future__ import annotations

from typing import Protocol


def lookup_names(key: str, project: str, env: str) -> list[str]:
    """The seed's lookup order: `<PROJECT>_<ENV>_<KEY>`, `<KEY>`, `<PROJECT>_<KEY>`,
    `<ENV>_<KEY>` (upper case, `-` as `_`)."""
    k, p, e = (part.upper().replace("-", "_") for part in (key, project, env))
    return [f"{p}_{e}_{k}", k, f"{p}_{k}", f"{e}_{k}"]


class Secrets(Protocol):
    name: str

    def get(self, key: str, project: str, env: str) -> bytes | None: ...
