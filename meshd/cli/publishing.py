"""Writing the desired state: compare-and-set on the revision the operator's plan was made
against, so that two operators publishing at once cannot overwrite each other silently."""

from __future__ import annotations

from meshd.agent.store import Conflict, Entry, Store
from protocol import subjects
from protocol.codec import encode
from protocol.errors import MeshError
from protocol.messages import PublishedSpec


class StalePublish(MeshError):
    """The desired state changed after it was read."""


async def write_desired(store: Store, message: PublishedSpec, current: Entry | None) -> int:
    """Write `message` if the desired state is still `current` (None: none was published);
    return the new revision, or raise `StalePublish`."""
    try:
        if current is None:
            return await store.create(
                subjects.DESIRED_BUCKET, subjects.DESIRED_KEY, encode(message)
            )
        return await store.update(
            subjects.DESIRED_BUCKET, subjects.DESIRED_KEY, encode(message), last=current.revision
        )
    except Conflict:
        raise StalePublish(
            "somebody else published while this plan was made; run publish again to plan "
            "against their state"
        ) from None
