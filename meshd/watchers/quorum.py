"""Loss of the JetStream quorum, told by mail and SMS even though the mesh's own queue, leases
and records are then out of reach.

Every agent asks JetStream every `CHECK_S` whether it answers. When it has not for
`LOST_AFTER_S` while core NATS still carries heartbeats, the first droplet in ring order
(master first) among those whose heartbeats this agent still hears sends a critical alert
itself, straight through the notifiers (the queue is a JetStream stream), with the settings of
the last desired state it saw. It tells once per outage; an agent restarted meanwhile may tell
again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime

from meshd.agent.beats import BeatListener
from meshd.agent.meshview import MeshView
from meshd.agent.notifiers import notifiers
from meshd.agent.store import Store
from meshd.core.monitors import ring
from meshd.core.notices import critical_alert
from plugins.notifiers import NotifierConfigError, NotifyError
from plugins.secrets import Secrets

log = logging.getLogger(__name__)
CHECK_S = 5.0
LOST_AFTER_S = 20.0
HEARD_WITHIN_S = 10.0


def teller(me: str, heard: dict[str, float], now: float) -> str:
    """Who tells: the first droplet in ring order among me and those heard lately."""
    alive = {name for name, at in heard.items() if now - at < HEARD_WITHIN_S} | {me}
    return ring(sorted(alive))[0]


class QuorumWatch:
    def __init__(
        self,
        store: Store,
        view: MeshView,
        droplet: str,
        mesh: str,
        secrets: Secrets,
        beats: BeatListener,
    ) -> None:
        self.store = store
        self.view = view
        self.droplet = droplet
        self.mesh = mesh
        self.secrets = secrets
        self.beats = beats  # every droplet's beats are heard only while JetStream is lost

    async def run(self) -> None:
        lost_since: float | None = None
        told = False
        while True:
            if await self.store.jetstream_answers():
                if lost_since is not None:
                    log.info("JetStream answers again.")
                lost_since, told = None, False
                self.beats.want("quorum", ())
            else:
                now = time.monotonic()
                lost_since = lost_since or now
                self.beats.want("quorum", None)  # who is still heard decides who tells
                mine = teller(self.droplet, dict(self.beats.heard), now) == self.droplet
                if now - lost_since >= LOST_AFTER_S and not told and mine:
                    told = await self._tell(now - lost_since)
            await asyncio.sleep(CHECK_S)

    async def _tell(self, lost_for: float) -> bool:
        settings = self.view.notify
        if settings.email is None and settings.sms is None:
            log.error("JetStream lost its quorum; no notifier is configured to tell.")
            return True
        now = time.time()
        now_s = time.monotonic()
        heard = sorted(n for n, at in self.beats.heard.items() if now_s - at < HEARD_WITHIN_S)
        details = {
            "unanswered for": f"{lost_for:.0f} s",
            "droplets still heard": heard or "none",
            "what stops": "leases, scheduling, recovery and this mesh's notification queue",
        }
        email, sms = critical_alert(
            "JetStream has lost its quorum", details, datetime.fromtimestamp(now, settings.zone),
            self.mesh, self.droplet,
        )  # fmt: skip
        sent = False
        messages = {"email": email, "sms": sms}
        for channel, notifier in notifiers(settings, self.secrets).items():
            try:
                if isinstance(notifier, NotifierConfigError):
                    raise notifier
                await notifier.send(messages[channel])
            except (NotifierConfigError, NotifyError) as err:
                log.error("Quorum alert not sent. channel=%s error=%s", channel, err)
                continue
            sent = True
            log.warning("Quorum alert sent. channel=%s", channel)
        return sent
