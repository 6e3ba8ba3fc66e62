"""A droplet's own side of secrets: its key is made once per droplet (a rebuilt one makes a
new pair and keeps the inherited one as previous); it opens what is sealed to its key and
nothing copied from another entry; the environment fallback is reported."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from meshd.agent.meshview import MeshView
from meshd.agent.sealed import SealedSecrets
from meshd.agent.sealkey import KEY_FILE, droplet_keys
from meshd.agent.trust import SENSITIVE_ROLES, Trust
from meshd.core.sealing import KeyPair, entry_context, seal, to_text
from plugins.secrets.env import EnvSecrets
from protocol import subjects
from protocol.secrets import SealedSecret
from protocol.subjects import Role
from tests.support import factories


def sealed_to(keys: KeyPair, key: str, value: bytes, version: int = 1) -> SealedSecret:
    parts = key.split(".")
    project, env = (None, None) if parts[2] == "mesh" else (parts[2], parts[3])
    return SealedSecret(
        droplet=parts[1],
        name=parts[-1],
        project=project,
        env=env,
        source="value.mesh.x",
        version=version,
        sealed=to_text(seal(keys.public, value, entry_context(key, version))),
        key=keys.fingerprint,
        fence=1,
    )


def test_a_droplet_keeps_its_key_and_a_rebuilt_one_makes_a_new_one(tmp_path: Path) -> None:
    first = droplet_keys(tmp_path, "11")
    assert stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode) == 0o600
    assert droplet_keys(tmp_path, "11") == first  # the same droplet, restarted
    rebuilt = droplet_keys(tmp_path, "12")  # the snapshot's file, a new droplet
    assert rebuilt.current != first.current and rebuilt.previous == first.current
    assert json.loads((tmp_path / KEY_FILE).read_text())["owner"] == "12"
    assert droplet_keys(tmp_path, "12") == rebuilt


async def test_an_agent_opens_only_what_is_sealed_to_it(tmp_path: Path) -> None:
    keys = droplet_keys(tmp_path, "1")
    secrets = SealedSecrets(keys, EnvSecrets({"SMTP_PASSWORD": "from-env"}))
    mine = subjects.sealed_key("web1", "api_key", "shop", "prod")
    other = subjects.sealed_key("web1", "api_key", "shop", "uat")
    await secrets.set_sealed(
        {
            mine: sealed_to(keys.current, mine, b"prod-value"),
            # A box sealed for prod, copied under uat's key: it does not open there.
            other: sealed_to(keys.current, mine, b"prod-value"),
            subjects.sealed_key("web1", "jwt", "shop", "prod"): sealed_to(
                KeyPair.new(), subjects.sealed_key("web1", "jwt", "shop", "prod"), b"x"
            ),
        }
    )
    assert secrets.get("api_key", "shop", "prod") == b"prod-value"
    assert secrets.get("api_key", "shop", "uat") is None
    assert secrets.get("jwt", "shop", "prod") is None  # sealed to another droplet's key
    assert secrets.from_environment == set()
    assert secrets.get("smtp_password", "mesh", "mesh") == b"from-env"
    assert secrets.from_environment == {"smtp_password"}


async def test_the_mesh_key_holder_is_known_by_its_key(tmp_path: Path) -> None:
    keys = droplet_keys(tmp_path, "1")
    secrets = SealedSecrets(keys, EnvSecrets({}))
    assert not secrets.holder_known and not secrets.holds_mesh_key
    await secrets.set_holder({})
    assert secrets.holder_known and secrets.holder is None
    holder = sealed_to(keys.current, subjects.sealed_key("web1", "mesh_key"), b"k")
    await secrets.set_holder({subjects.holder_key("web1"): holder})
    assert secrets.holds_mesh_key
    stale = sealed_to(KeyPair.new(), subjects.sealed_key("web1", "mesh_key"), b"k")
    await secrets.set_holder({subjects.holder_key("web1"): stale})
    assert not secrets.holds_mesh_key  # sealed to a key this droplet does not have


def test_only_trusted_droplets_may_hold_the_roles_that_use_mesh_secrets(tmp_path: Path) -> None:
    view = MeshView()
    view.cards = {name: factories.card(name) for name in ("master", "a", "b", "c")}
    secrets = SealedSecrets(droplet_keys(tmp_path, "1"), EnvSecrets({}))
    trust = {name: Trust(name, view, secrets) for name in view.cards}
    for droplet in trust.values():
        droplet.servers = ("master", "a", "b")
    for role in SENSITIVE_ROLES:
        allowed = {n for n, t in trust.items() if (check := t.eligibility(role)) and check()}
        assert allowed == {"master", "a", "b"}, role
    assert trust["c"].eligibility(Role.SCHEDULER) is None  # anybody
    assert not trust["c"].may_keep_secrets()
    view.cards = {name: factories.card(name) for name in ("master", "c")}  # below three
    assert trust["c"].trusted()
