"""The messages of sealed secrets (docs/secrets.md), written as protocol.messages says."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar

from protocol.base import Message


class SecretScope(StrEnum):
    """Where a secret applies; for a service the narrowest that has it wins."""

    MESH = "mesh"
    PROJECT = "project"
    ENV = "env"


@dataclass(frozen=True, slots=True, kw_only=True)
class SecretValue(Message):
    """A secret as the operator set it or the mesh generated it (KV `mesh_secrets/value.<scope
    path>.<name>`, `subjects.secret_value_key`): sealed to the mesh key (`mesh_key`, its
    fingerprint), context `<key>@<version>` (meshd.core.sealing). Never in clear.
    `vault_version` is the KV v2 version of the Vault path it was mirrored from (None: set
    with `meshctl` or generated)."""

    KIND: ClassVar[str] = "secret_value"

    name: str
    scope: SecretScope
    project: str | None
    env: str | None
    version: int
    sealed: str
    mesh_key: str
    set_by: str
    set_at: float
    generated: bool = False
    vault_version: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SealedSecret(Message):
    """A secret sealed to one droplet's key (`key`, its fingerprint) by the `secrets` role
    (lease revision `fence`), for the services of `project`/`env` it runs, or for the mesh
    itself (`project` and `env` None): KV `mesh_secrets/sealed.<droplet>...`, context
    `<key>@<version>`. `source` is the key of the value it was sealed from."""

    KIND: ClassVar[str] = "sealed_secret"

    droplet: str
    name: str
    project: str | None
    env: str | None
    source: str
    version: int
    sealed: str
    key: str
    fence: int


@dataclass(frozen=True, slots=True, kw_only=True)
class MeshKey(Message):
    """The public half of the mesh's secret key (KV `mesh_secrets/mesh-key`): what `meshctl`
    seals values to. Its private half is sealed to each trusted droplet (`holder`)."""

    KIND: ClassVar[str] = "mesh_key"

    public: str
    fingerprint: str
    created_by: str
    created_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class PasswordChange(Message):
    """Give the built-in datastore `service` of a project environment, running on the droplet
    asked, the new value of its password secret `secret` without a restart, once that droplet
    holds `version` of it sealed from `source` (the scope's entry key). Sent by `meshctl
    secret set|rotate` before the datastore's clients roll, as a core NATS request on
    `mesh.datastore.<droplet>`; answered with a `PasswordChangeAnswer`."""

    KIND: ClassVar[str] = "password_change"

    project: str
    env: str
    service: str
    secret: str
    version: int
    source: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PasswordChangeAnswer(Message):
    """How a `PasswordChange` went: `error` None when the datastore takes the new password."""

    KIND: ClassVar[str] = "password_change_answer"

    error: str | None = None
    seconds: float = 0.0
