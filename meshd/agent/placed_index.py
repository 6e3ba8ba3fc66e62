"""The scheduler's second write: beside the allocations, per droplet, the keys of those that
name it (`mesh_index/placed.<droplet>`, protocol.cards.PlacedKeys). A droplet that holds no
role reads only its own and the allocations they name (`agent.allocation_feed`), so that a
publish of many projects costs it what concerns it, not the mesh's size (docs/scale.md).

Written after the allocations: a droplet newly named reads its key the moment it is listed,
and one no longer named sees the allocation change before it stops watching it."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from meshd.agent.key_mirror import KeyMirror
from meshd.agent.lease import Term
from meshd.agent.records import write_over
from meshd.agent.store import Store
from protocol import subjects
from protocol.cards import PlacedKeys
from protocol.codec import decode, encode
from protocol.errors import ProtocolError
from protocol.messages import Allocation

log = logging.getLogger(__name__)


def placed_keys(
    allocations: Mapping[str, Allocation], droplets: Iterable[str]
) -> dict[str, tuple[str, ...]]:
    """Each droplet (of `droplets` and of the allocations) -> the sorted keys naming it."""
    placed: dict[str, list[str]] = {name: [] for name in droplets}
    for key, allocation in sorted(allocations.items()):
        for droplet in dict.fromkeys(allocation.droplets):
            placed.setdefault(droplet, []).append(key)
    return {name: tuple(keys) for name, keys in placed.items()}


async def index_placed(
    store: Store,
    term: Term,
    allocations: Mapping[str, Allocation],
    droplets: Iterable[str],
    index: KeyMirror,
) -> int:
    """Write the entry of each droplet placed (`droplets`) or with a card in the index (a
    droplet the placement does not use runs nothing: it reads nothing) that differs from what
    the index holds, over the revision read (a newer leader's write wins); remove those of
    droplets gone. How many were written or removed. `index`: the bucket as last read."""
    found = await index.entries()
    prefix = subjects.PLACED.removesuffix("*")
    current = {key: entry for key, entry in found.items() if key.startswith(prefix)}
    carded = [key for key in found if "." not in key]  # a card's key is its droplet's name
    wanted = placed_keys(allocations, [*droplets, *carded])
    changed = 0
    for droplet, keys in sorted(wanted.items()):
        key = subjects.placed_key(droplet)
        entry = current.pop(key, None)
        if entry is not None and _keys(entry.key, entry.value) == keys:
            continue
        term.ensure_held()
        data = encode(PlacedKeys(droplet=droplet, keys=keys, fence=term.fence))
        last = entry.revision if entry else None
        index.wrote(key, data, await write_over(store, subjects.INDEX_BUCKET, key, data, last))
        changed += 1
    for key, entry in sorted(current.items()):  # droplets gone
        term.ensure_held()
        await store.delete(subjects.INDEX_BUCKET, key, last=entry.revision)
        index.deleted(key, entry.revision)
        changed += 1
    return changed


def _keys(key: str, value: bytes | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    try:
        return decode(value, PlacedKeys).keys
    except ProtocolError as err:
        log.error("Placed keys unreadable; writing them anew. key=%s error=%s", key, err)
        return None
