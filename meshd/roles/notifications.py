"""The `heartbeat` role (prefers master): the seed's passive monitoring, where silence is the
alarm (docs/notifications.md).

While it holds the role, an agent
- queues `✅ Infrastructure OK` every `heartbeat_minutes`, or, while master is down (it has a
  failure record or stopped reporting), `⚠️ Backup Heartbeat - Master may be down` every
  `backup_heartbeat_minutes`. The last one queued is claimed in `mesh_desired/notify.heartbeat`
  with compare-and-set before it is queued, so one mail goes out per interval across the mesh,
  also when the role moves;
- queues `🚨 CRITICAL` by email and SMS once per confirmed failure (one droplet's life),
  claimed with KV create on `mesh_desired/notify.alerted.<droplet>.<incarnation>`, and once
  more if its recovery fails (`...<incarnation>.recovery`, from the `recovery_failed` events);
- beside it, under the same lease, the courier delivers the queue (`meshd.roles.courier`).

Intervals compare the wall clocks of the holders of the role, which may differ by seconds;
against minutes-long intervals that does not matter.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime

from meshd.agent.backoff import retries
from meshd.agent.lease import Term
from meshd.agent.meshview import MeshView
from meshd.agent.outbox import Outbox
from meshd.agent.store import Conflict, Store, StoreUnavailable
from meshd.core.health import STALE_AFTER_S
from meshd.core.notices import backup_heartbeat_mail, critical_alert, heartbeat_mail, summarize
from meshd.core.notify_settings import NotifySettings
from meshd.core.spec import MASTER
from meshd.core.status import mesh_status
from plugins.notifiers import Outgoing
from protocol import subjects
from protocol.codec import decode, encode
from protocol.errors import ProtocolError
from protocol.messages import Event, FailureRecord, HeartbeatMark, Notification

log = logging.getLogger(__name__)
TICK_S = 1.0
QUEUE_SPAN_S = 30.0  # a notification whose slot is claimed is queued for this long
RECENT_EVENTS = 200
QUEUE_RETRY_S = 0.5
QUEUE_RETRY_MAX_S = 4.0


class HeartbeatMails:
    role = subjects.Role.HEARTBEAT

    def __init__(self, store: Store, view: MeshView, droplet: str, mesh: str) -> None:
        self.store = store
        self.view = view
        self.droplet = droplet
        self.mesh = mesh
        self.outbox = Outbox(store)
        self._alerted: set[str] = set()

    @property
    def settings(self) -> NotifySettings:
        return self.view.notify

    # --- leading -------------------------------------------------------------------------------

    async def lead(self, term: Term) -> None:
        self._alerted.clear()
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._watch(term))
            tasks.create_task(self._watch_recoveries(term))

    async def _watch(self, term: Term) -> None:
        while True:
            term.ensure_held()
            if self.view.ready and self.settings.email is not None:
                try:
                    await self.alert(term)
                    await self.beat(term)
                except StoreUnavailable as err:
                    log.info("Heartbeat check interrupted. error=%s", err)
            await asyncio.sleep(TICK_S)

    async def _watch_recoveries(self, term: Term) -> None:
        """A critical alert for each failed recovery: those still told in the recent events
        when the role is taken, then every new one."""
        seen_recent = False
        while True:
            term.ensure_held()
            try:
                if not seen_recent:
                    for event in await self.store.recent_events(RECENT_EVENTS):
                        await self.alert_recovery(term, event)
                    seen_recent = True
                async with self.store.follow_events() as events:
                    async for event in events:
                        await self.alert_recovery(term, event)
            except StoreUnavailable as err:  # the subscription comes back after a pause
                log.info("Events not readable for alerts. error=%s", err)
            await asyncio.sleep(TICK_S)

    async def alert_recovery(self, term: Term, event: Event) -> None:
        """Alert once for a `recovery_failed` event of a failure that is still open."""
        if event.name != "recovery_failed" or self.settings.email is None:
            return
        record = self.view.failures.get(event.subject)
        incarnation = event.detail.get("incarnation")
        if record is None or (incarnation is not None and incarnation != record.incarnation):
            return  # recovered (or another life) since
        key = f"{subjects.alerted_key(record.droplet, record.incarnation)}.recovery"
        if key in self._alerted:
            return
        term.ensure_held()
        try:
            await self.store.create(subjects.DESIRED_BUCKET, key, encode(record))
        except Conflict:
            self._alerted.add(key)
            return
        self._alerted.add(key)
        now = time.time()
        zone = self.settings.zone
        details = {
            "droplet": record.droplet,
            "error": event.detail.get("error", "unknown"),
            "recovery step": event.detail.get("step", record.state.value),
            "failed since": datetime.fromtimestamp(record.confirmed_at, zone)
            .strftime("%Y-%m-%d %H:%M:%S %Z"),
        }  # fmt: skip
        what = f"Recovery of {record.droplet} failed"
        at = datetime.fromtimestamp(now, zone)
        email, sms = critical_alert(what, details, at, self.mesh, self.droplet)
        await self._queue(term, "email", "critical", email, now)
        if self.settings.sms is not None:
            await self._queue(term, "sms", "critical", sms, now)

    def master_down(self) -> bool:
        node = self.view.nodes.get(MASTER)
        stale = node is None or time.time() - node.updated_at >= STALE_AFTER_S
        return MASTER in self.view.failures or stale

    async def beat(self, term: Term) -> None:
        """Queue the heartbeat (or the backup heartbeat) if its interval has passed."""
        settings = self.settings
        down = self.master_down()
        purpose = "backup_heartbeat" if down else "heartbeat"
        interval = settings.backup_heartbeat_s if down else settings.heartbeat_s
        entry = await self.store.get(subjects.DESIRED_BUCKET, subjects.HEARTBEAT_MARK_KEY)
        last = None
        if entry is not None and entry.value is not None:
            try:
                last = decode(entry.value, HeartbeatMark)
            except ProtocolError as err:
                log.warning("HeartbeatMails mark unreadable; sending. error=%s", err)
        now = time.time()
        if last is not None and now - last.sent_at < interval:
            return
        mark = HeartbeatMark(purpose=purpose, sent_at=now, by=self.droplet, fence=term.fence)
        term.ensure_held()
        try:
            if entry is None:
                await self.store.create(
                    subjects.DESIRED_BUCKET, subjects.HEARTBEAT_MARK_KEY, encode(mark)
                )
            else:
                await self.store.update(
                    subjects.DESIRED_BUCKET,
                    subjects.HEARTBEAT_MARK_KEY,
                    encode(mark),
                    last=entry.revision,
                )
        except Conflict:
            return  # another holder queued this interval's mail
        since = last.sent_at if last is not None else now - interval
        message = await self._compose(purpose, since, now)
        await self._queue(term, "email", purpose, message, now)

    async def _compose(self, purpose: str, since: float, now: float) -> Outgoing:
        settings = self.settings
        at = datetime.fromtimestamp(now, settings.zone)
        status = mesh_status(self.view.nodes, self.view.allocations, {}, now, self.view.failures)
        summary = summarize(status, await self._recoveries(since), settings.zone)
        if purpose == "heartbeat":
            return heartbeat_mail(summary, at, self.mesh, self.droplet)
        peers = {
            d["name"]: "healthy" if d["healthy"] and not d["failure"] else "unreachable"
            for d in status["droplets"]
            if d["name"] not in (MASTER, self.droplet)
        }
        return backup_heartbeat_mail(summary, at, self.mesh, self.droplet, peers)

    async def _recoveries(self, since: float) -> list[Event]:
        events = await self.store.recent_events(200)
        return [e for e in events if e.name == "droplet_recovered" and e.at > since]

    async def alert(self, term: Term) -> None:
        """Queue a critical alert for each confirmed failure not alerted yet."""
        for record in list(self.view.failures.values()):
            key = subjects.alerted_key(record.droplet, record.incarnation)
            if key in self._alerted:
                continue
            term.ensure_held()
            try:
                await self.store.create(subjects.DESIRED_BUCKET, key, encode(record))
            except Conflict:
                self._alerted.add(key)  # alerted by an earlier holder
                continue
            self._alerted.add(key)
            await self._alert(term, record)

    async def _alert(self, term: Term, record: FailureRecord) -> None:
        now = time.time()
        at = datetime.fromtimestamp(now, self.settings.zone)
        what = f"Droplet {record.droplet} failed"
        details = {
            "droplet": record.droplet,
            "confirmed by": list(record.confirmed_by),
            "confirmed at": datetime.fromtimestamp(record.confirmed_at, self.settings.zone)
            .strftime("%Y-%m-%d %H:%M:%S %Z"),
            "recovery step": record.state.value,
            "life (incarnation)": record.incarnation,
        }  # fmt: skip
        email, sms = critical_alert(what, details, at, self.mesh, self.droplet)
        await self._queue(term, "email", "critical", email, now)
        if self.settings.sms is not None:
            await self._queue(term, "sms", "critical", sms, now)

    async def _queue(
        self, term: Term, channel: str, purpose: str, message: Outgoing, now: float
    ) -> None:
        notification = Notification(
            channel=channel,
            purpose=purpose,
            subject=message.subject,
            text=message.text,
            html=message.html,
            created_at=now,
            fence=term.fence,
        )
        # Its slot is claimed: it must not be lost to a JetStream election.
        deadline = time.monotonic() + QUEUE_SPAN_S
        async for attempt in retries(QUEUE_RETRY_S, QUEUE_RETRY_MAX_S, deadline=deadline):
            term.ensure_held()
            try:
                await self.outbox.put(notification)
                break
            except StoreUnavailable as err:
                log.info("Notification not queued yet. attempt=%d error=%s", attempt + 1, err)
        else:
            log.error("Notification lost: the queue did not answer. subject=%s", message.subject)
            return
        log.info("Notification queued. channel=%s subject=%s", channel, message.subject)
