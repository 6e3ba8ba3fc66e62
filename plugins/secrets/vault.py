"""Secrets kept in a Vault or OpenBao KV v2 mount (docs/secrets.md, "Vault / OpenBao"): the
only module that imports `hvac`, and only when a vault is configured.

Layout in the mount: `<prefix>/mesh`, `<prefix>/<project>` and `<prefix>/<project>/<env>`,
each one KV v2 secret whose keys are secret names (`db_password`) and whose values are
strings. A path that does not exist is simply empty. Login is a token or an AppRole
(role_id + secret_id, logged in again when its token expires or is refused). hvac blocks: it
runs in a worker thread, never on the event loop. No error message names a token, an id or a
value.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from plugins.urls import http_url_problem
from protocol.errors import MeshError
from protocol.secrets import SecretScope

log = logging.getLogger(__name__)
NAME = re.compile(r"[a-z][a-z0-9_]{0,63}\Z")  # the names `meshctl secret set` accepts too
MAX_VALUE_BYTES = 64 * 1024  # as `meshctl secret set`
DEFAULT_MOUNT = "secret"
DEFAULT_PREFIX = "meshd"
MESH_PATH = "mesh"  # `<prefix>/mesh`: the mesh-scoped secrets
CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 10.0
RELOGIN_MARGIN_S = 30.0  # an AppRole token this close to its end is renewed by a new login


class VaultAuth(StrEnum):
    TOKEN = "token"  # the mesh secret `vault_token`
    APPROLE = "approle"  # the mesh secrets `vault_role_id` and `vault_secret_id`


CREDENTIALS: dict[VaultAuth, tuple[str, ...]] = {
    VaultAuth.TOKEN: ("vault_token",),
    VaultAuth.APPROLE: ("vault_role_id", "vault_secret_id"),
}

LOGIN_NAMES = frozenset(name for names in CREDENTIALS.values() for name in names)


class VaultError(MeshError):
    """Vault could not be read: `address` is the server, `reason` what went wrong (never a
    credential or a value)."""

    def __init__(self, address: str, reason: str) -> None:
        self.address = address
        self.reason = reason
        super().__init__(f"vault at {address}: {reason}")


class VaultUnreachable(VaultError):
    """No answer, or a server that cannot serve (sealed, standby, overloaded): try later."""


class VaultDenied(VaultError):
    """The credentials were refused: the operator must fix them."""


@dataclass(frozen=True, slots=True)
class VaultSettings:
    """The deployment config's `vault` object, as published with the desired state."""

    address: str
    mount: str = DEFAULT_MOUNT
    auth: VaultAuth = VaultAuth.TOKEN
    prefix: str = DEFAULT_PREFIX

    @property
    def credentials(self) -> tuple[str, ...]:
        """The mesh-scoped secrets that hold the login."""
        return CREDENTIALS[self.auth]

    def to_data(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "mount": self.mount,
            "auth": self.auth.value,
            "prefix": self.prefix,
        }

    @classmethod
    def from_data(cls, data: Mapping[str, Any] | None) -> VaultSettings | None:
        """None when no vault is configured."""
        if not data or not data.get("address"):
            return None
        return cls(
            address=str(data["address"]),
            mount=str(data.get("mount") or DEFAULT_MOUNT),
            auth=VaultAuth(data.get("auth") or VaultAuth.TOKEN),
            prefix=str(data.get("prefix") or DEFAULT_PREFIX),
        )


def address_problem(address: str) -> str | None:
    """Why `address` is not a Vault address (None: it is one)."""
    return http_url_problem(address, "https://vault.example.com:8200")


@dataclass(frozen=True, slots=True)
class VaultCredentials:
    """The login, opened by the `secrets` role from the mesh's own secrets. Never shown."""

    token: str | None = field(default=None, repr=False)
    role_id: str | None = field(default=None, repr=False)
    secret_id: str | None = field(default=None, repr=False)

    def words(self) -> list[str]:
        return [w for w in (self.token, self.role_id, self.secret_id) if w]


@dataclass(frozen=True, slots=True)
class VaultEntry:
    """One secret as Vault holds it: `version` is the KV v2 version of its path."""

    scope: SecretScope
    project: str | None
    env: str | None
    name: str
    version: int
    value: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class _Path:
    scope: SecretScope
    project: str | None = None
    env: str | None = None

    def under(self, prefix: str) -> str:
        """`<prefix>/mesh`, `<prefix>/<project>` or `<prefix>/<project>/<env>`."""
        if self.project is None:
            return f"{prefix}/{MESH_PATH}"
        return "/".join(p for p in (prefix, self.project, self.env) if p)


class VaultSource:
    """Reads the mesh's secrets from one Vault KV v2 mount with one login."""

    def __init__(self, settings: VaultSettings, credentials: VaultCredentials) -> None:
        self.settings = settings
        self._credentials = credentials
        self._client: Any = None  # hvac.Client, made at the first read
        self._expires: float | None = None  # monotonic end of an AppRole token
        self._lock = threading.Lock()
        self._warned: set[tuple[str, str]] = set()

    async def read(self, projects: Mapping[str, Sequence[str]]) -> list[VaultEntry]:
        """Every secret of the mesh, of each project and of each of its environments."""
        paths = [_Path(SecretScope.MESH)]
        for project, envs in sorted(projects.items()):
            if project != MESH_PATH:  # `<prefix>/mesh` is the mesh's: such a project has envs only
                paths.append(_Path(SecretScope.PROJECT, project))
            paths += [_Path(SecretScope.ENV, project, env) for env in envs]
        return await asyncio.to_thread(self._read_all, paths)

    def close(self) -> None:
        """Drop the HTTP session; idempotent (a later read opens a new one). Never waits for
        a read still running in its thread (that one fails or is ignored)."""
        client, self._client, self._expires = self._client, None, None
        if client is not None:
            client.adapter.close()

    # --- in the worker thread ------------------------------------------------------------

    def _read_all(self, paths: list[_Path]) -> list[VaultEntry]:
        with self._lock, self._translated():
            try:
                return self._read_paths(self._logged_in(), paths)
            except Exception as err:
                if not self._refused(err) or self.settings.auth is not VaultAuth.APPROLE:
                    raise
            self._expires = None  # revoked or expired early: one new login, then as before
            return self._read_paths(self._logged_in(), paths)

    def _read_paths(self, client: Any, paths: list[_Path]) -> list[VaultEntry]:
        import hvac.exceptions

        found: list[VaultEntry] = []
        for path in paths:
            where = path.under(self.settings.prefix)
            try:
                answer = client.secrets.kv.v2.read_secret_version(
                    path=where, mount_point=self.settings.mount, raise_on_deleted_version=True
                )
            except hvac.exceptions.InvalidPath as err:
                if err.errors:  # "no handler for route": the mount is not there
                    raise VaultError(
                        self.settings.address,
                        f"no KV v2 mount {self.settings.mount!r} (reading {where!r})",
                    ) from None
                continue  # no secret at this path (or its latest version deleted)
            data = answer["data"]
            found += self._entries(path, where, int(data["metadata"]["version"]), data["data"])
        return found

    def _entries(
        self, path: _Path, where: str, version: int, data: Mapping[str, Any] | None
    ) -> list[VaultEntry]:
        entries = []
        for name, value in sorted((data or {}).items()):
            problem = _problem(name, value)
            if path.scope is SecretScope.MESH and name in LOGIN_NAMES:
                problem = "the login to Vault is kept in the mesh (`meshctl secret set --mesh`)"
            if problem:
                self._warn(where, name, problem)
                continue
            entries.append(
                VaultEntry(path.scope, path.project, path.env, name, version, value.encode())
            )
        return entries

    def _warn(self, where: str, name: str, problem: str) -> None:
        if (where, name) not in self._warned:
            self._warned.add((where, name))
            log.warning("Vault key ignored. path=%s key=%r problem=%s", where, name, problem)

    def _logged_in(self) -> Any:
        if self._client is None:
            import hvac

            self._client = hvac.Client(
                url=self.settings.address,
                token=self._credentials.token or "",
                timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S),
            )
        if self.settings.auth is VaultAuth.TOKEN:
            if not self._credentials.token:
                raise VaultDenied(self.settings.address, "no token (mesh secret vault_token)")
            return self._client
        if self._expires is None or time.monotonic() >= self._expires:
            self._login(self._client)
        return self._client

    def _login(self, client: Any) -> None:
        credentials = self._credentials
        if not credentials.role_id or not credentials.secret_id:
            raise VaultDenied(
                self.settings.address,
                "no AppRole login (mesh secrets vault_role_id and vault_secret_id)",
            )
        try:
            answer = client.auth.approle.login(
                role_id=credentials.role_id, secret_id=credentials.secret_id
            )
        except Exception as err:
            if self._refused(err) or _status(err) == 400:  # 400: invalid role or secret ID
                raise VaultDenied(
                    self.settings.address,
                    "AppRole login refused (mesh secrets vault_role_id and vault_secret_id)",
                ) from None
            raise
        ttl = float(answer["auth"].get("lease_duration") or 0)
        # A token without an end (ttl 0) is used until it is refused.
        end = time.monotonic() + max(ttl - min(RELOGIN_MARGIN_S, ttl / 10), 0.0)
        self._expires = end if ttl else float("inf")
        log.info("Vault login. address=%s auth=approle ttl=%.0f", self.settings.address, ttl)

    @staticmethod
    def _refused(err: Exception) -> bool:
        return _status(err) in (401, 403)

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        """hvac's and requests' errors as VaultError, with every credential word removed."""
        import hvac.exceptions
        import requests

        address = self.settings.address
        try:
            yield
        except VaultError:
            raise
        except requests.exceptions.RequestException as err:
            raise VaultUnreachable(address, f"no answer ({type(err).__name__})") from None
        except hvac.exceptions.VaultError as err:
            said = self._scrub(", ".join(err.errors or []) or type(err).__name__)
            if self._refused(err):
                names = " and ".join(self.settings.credentials)
                where = f"{self.settings.mount}/data/{self.settings.prefix}/*"
                raise VaultDenied(
                    address,
                    f"permission denied: check mesh secret {names} and its policy on {where}",
                ) from None
            if _status(err) in (429, 500, 502, 503):
                raise VaultUnreachable(address, f"cannot serve: {said}") from None
            raise VaultError(address, f"refused the read: {said}") from None
        except (KeyError, TypeError, ValueError) as err:
            raise VaultError(address, f"unexpected answer ({type(err).__name__})") from None
        except Exception as err:  # a client bug must not stop the role that reads through it
            log.error("Vault client failed. address=%s error=%s", address, type(err).__name__)
            raise VaultError(address, f"client error ({type(err).__name__})") from None

    def _scrub(self, text: str) -> str:
        for word in self._credentials.words():
            text = text.replace(word, "***")
        return text


def _status(err: Exception) -> int | None:
    import hvac.exceptions

    statuses: dict[type[Exception], int] = {
        hvac.exceptions.InvalidRequest: 400,
        hvac.exceptions.Unauthorized: 401,
        hvac.exceptions.Forbidden: 403,
        hvac.exceptions.RateLimitExceeded: 429,
        hvac.exceptions.InternalServerError: 500,
        hvac.exceptions.BadGateway: 502,
        hvac.exceptions.VaultDown: 503,
    }
    return next((code for kind, code in statuses.items() if isinstance(err, kind)), None)


def _problem(name: str, value: object) -> str | None:
    if not NAME.match(name):
        return "not a secret name: 1-64 of a-z, 0-9 and _, starting with a letter"
    if not isinstance(value, str) or not value:
        return "the value is not a non-empty string"
    if len(value.encode()) > MAX_VALUE_BYTES:
        return f"the value is over {MAX_VALUE_BYTES // 1024} KiB"
    return None
