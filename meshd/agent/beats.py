"""The liveness beats this agent needs, received once (one subscription per droplet heard,
however many watchers use them): when each was last heard, and the beats handed to whoever
listens (the failure detector).

An agent hears only the droplets someone here asks for: the detector asks for its targets
(at most three, whatever the size of the mesh), the quorum watch for every droplet only while
JetStream does not answer. So a droplet's work on beats does not grow with the mesh.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection

from meshd.agent.store import Received, Store
from meshd.agent.subject_set import SubjectSet
from protocol import subjects
from protocol.codec import decode
from protocol.errors import ProtocolError
from protocol.messages import LivenessBeat

EVERYONE = "*"


class BeatListener:
    def __init__(self, store: Store) -> None:
        self.heard: dict[str, float] = {}  # droplet -> its last beat (monotonic)
        self._listeners: list[Callable[[LivenessBeat], None]] = []
        self._wanted: dict[str, frozenset[str]] = {}  # who asks -> droplets (EVERYONE: all)
        self._subjects = SubjectSet(store, _beats_of, self._on_beat, "Beats")

    def listen(self, callback: Callable[[LivenessBeat], None]) -> None:
        self._listeners.append(callback)

    def want(self, who: str, droplets: Collection[str] | None) -> None:
        """`who` needs the beats of `droplets` (None: of every droplet) from now on."""
        self._wanted[who] = frozenset({EVERYONE}) if droplets is None else frozenset(droplets)
        wanted = frozenset().union(*self._wanted.values())
        self._subjects.want({EVERYONE} if EVERYONE in wanted else wanted)

    async def run(self) -> None:
        await self._subjects.run()

    async def _on_beat(self, msg: Received) -> None:
        try:
            beat = decode(msg.data, LivenessBeat)
        except ProtocolError:
            return
        self.heard[beat.droplet] = time.monotonic()
        for listener in self._listeners:
            listener(beat)


def _beats_of(name: str) -> str:
    return subjects.BEATS_ALL if name == EVERYONE else subjects.beats(name)
