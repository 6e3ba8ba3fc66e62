"""Detection holds: taken by the operator or by master's agent while JetStream moves, and a
recovery leader whose own failure was recorded handing its role over."""

from __future__ import annotations

from meshd.agent.holds import end_hold, take_hold
from meshd.agent.meshview import MeshView
from meshd.agent.trust import Trust
from protocol import subjects
from protocol.subjects import Role
from tests.support import factories
from tests.support.memstore import MemoryStore

MOVING = "JetStream is moving to other servers"


async def test_a_move_hold_yields_to_a_longer_one_of_the_operators_and_ends_only_itself() -> None:
    store = MemoryStore()
    operator = await take_hold(store, "master", 600, "agent upgrade", "ana")
    kept = await take_hold(store, "master", 180, MOVING, "master", longer=True)
    assert kept == operator
    assert await end_hold(store, "master", MOVING) is None  # not ours: left alone
    assert await store.get(subjects.DESIRED_BUCKET, subjects.hold_key("master")) is not None

    await end_hold(store, "master")
    ours = await take_hold(store, "master", 180, MOVING, "master", longer=True)
    assert ours.reason == MOVING and ours.until - ours.held_at == 180
    assert await end_hold(store, "master", MOVING) == ours
    assert await store.get(subjects.DESIRED_BUCKET, subjects.hold_key("master")) is None


async def test_a_recovery_leader_whose_own_failure_is_recorded_hands_the_role_over() -> None:
    view = MeshView()
    await view.set_cards({"master": factories.card("master"), "web1": factories.card("web1")})
    eligible = Trust("master", view, None).eligibility(Role.RECOVERY)  # type: ignore[arg-type]
    assert eligible is not None and eligible()
    await view.set_failures({"master": factories.failure("master")})
    assert not eligible()  # a peer's leader fences and rebuilds it, not itself halfway
    peer = Trust("web1", view, None).eligibility(Role.RECOVERY)  # type: ignore[arg-type]
    assert peer is not None and peer()
