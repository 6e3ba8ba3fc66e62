"""Which roles this droplet may hold (docs/secrets.md "Who holds what"): those that use
mesh-wide secrets (the cloud token, the SMTP password, the entry's TLS keys) only a trusted
droplet, master or a JetStream server, so that a droplet that only runs projects holds none
of them; the `secrets` role only one that can open the mesh key; `recovery` none whose own
failure is recorded; on a cloud mesh the `builder` too (it reaches master's repositories with
the account's SSH key); the others anybody. The `builder` prefers the droplet with the most
memory to spare."""

from __future__ import annotations

from collections.abc import Callable

from meshd.agent.meshview import MeshView
from meshd.agent.sealed import SealedSecrets
from meshd.core.secret_plan import trusted
from meshd.core.sizes import roomiest
from meshd.core.spec import MASTER
from protocol.subjects import Role

BUILDER_HESITATE_S = 2.0  # a droplet with less room than another lets it build

SENSITIVE_ROLES = frozenset(
    {
        Role.PROVISIONER,
        Role.RECOVERY,
        Role.SNAPSHOTS,
        Role.LB,
        Role.HEARTBEAT,
        Role.BACKUPS,
        Role.LOGS,
        Role.CERTIFICATES,
    }  # fmt: skip
)


class Trust:
    def __init__(
        self, name: str, view: MeshView, secrets: SealedSecrets, cloud: bool = False
    ) -> None:
        self.name = name
        self.cloud = cloud  # droplets start bare: the account's SSH key is a mesh secret
        self.view = view
        self.secrets = secrets
        self.servers: tuple[str, ...] = ()  # the JetStream servers as this agent knows them

    def trusted(self) -> bool:
        return self.name in trusted(self.view.cards, self.servers)

    def may_keep_secrets(self) -> bool:
        """Trusted, and able to open the mesh key: it is sealed to this droplet, or there is
        none yet and this is master (which makes it)."""
        if not self.trusted():
            return False
        if self.secrets.holds_mesh_key:
            return True
        first = self.secrets.holder_known and self.secrets.holder is None
        return first and self.name == MASTER

    def eligibility(self, role: Role) -> Callable[[], bool] | None:
        """When this droplet may hold `role`; None: always."""
        if role is Role.SECRETS:
            return self.may_keep_secrets
        if role is Role.RECOVERY:
            return self.may_recover
        sensitive = role in SENSITIVE_ROLES or (role is Role.BUILDER and self.cloud)
        return self.trusted if sensitive else None

    def may_recover(self) -> bool:
        """Trusted, and not itself confirmed failed: a recovery leader whose own failure was
        recorded (a false alarm it lives through) hands the role over instead of fencing
        itself halfway through a step; a peer's leader fences and rebuilds it."""
        return self.trusted() and self.name not in self.view.failures

    def builder_hesitation(self) -> float:
        """How long to wait before competing for `builder`: none on the droplet with the
        most memory left by its services' reservations (builds need room), a little on the
        others and on one that does not read every allocation (it cannot tell); a holder
        keeps the role wherever it is."""
        if not self.view.allocations_whole.is_set():
            return BUILDER_HESITATE_S
        reserved: dict[str, int] = {}
        for allocation in self.view.allocations.values():
            for droplet in allocation.droplets:
                reserved[droplet] = reserved.get(droplet, 0) + allocation.memory_mb
        sizes = {name: card.size for name, card in self.view.cards.items()}
        best = roomiest(sizes, reserved)
        return 0.0 if best in (None, self.name) else BUILDER_HESITATE_S
