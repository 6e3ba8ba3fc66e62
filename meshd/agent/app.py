"""The agent's lifecycle: one `meshd agent` per droplet.

Instances come first: the reconciler starts from the local copy of allocations before any
NATS server answers. The control plane (membership, allocation feed, leases and the roles
they guard) joins once the store is reachable and keeps retrying while it is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path

from meshd.agent import metrics
from meshd.agent.allocation_feed import AllocationFeed
from meshd.agent.answering import answer_requests
from meshd.agent.api import Dashboard, GitHooks, create_app, serve
from meshd.agent.beats import BeatListener
from meshd.agent.bootstrapping import DropletBootstrap
from meshd.agent.certificates import CertificateExpiry
from meshd.agent.config import (
    AGENT_HTTP_PORT,
    DropletIdentity,
    MeshConfig,
    ServerPlacement,
    mesh_tag,
    user_data_now,
)
from meshd.agent.feeds import ReportFeed, feed_cards, mirrors
from meshd.agent.git_shell import serve_git
from meshd.agent.lease import LeaseTiming, Term
from meshd.agent.leaseboard import LeaseBoard
from meshd.agent.logship import LogShipper
from meshd.agent.membership import Membership, next_incarnation, node_status
from meshd.agent.meshview import MeshView
from meshd.agent.notifiers import Channels
from meshd.agent.provider import agent_provider
from meshd.agent.reconciler import Reconciler
from meshd.agent.reconciler.volumes import DropletVolumes
from meshd.agent.sealed import SealedSecrets
from meshd.agent.sealkey import droplet_keys
from meshd.agent.servers import Journal, ServerMover, ServersListener, nats_urls, replicas
from meshd.agent.store import Store, StoreUnavailable, open_store
from meshd.agent.store.jetstream import NatsStore
from meshd.agent.trust import Trust
from meshd.core.certs import default_directory
from meshd.core.notify_settings import SECRET_SCOPE
from meshd.core.secret_plan import INFRASTRUCTURE_KEY
from meshd.core.spec import MASTER
from meshd.local.power import follow_power
from meshd.roles import Roles, Together, lease_keepers
from meshd.roles.backups import Backups
from meshd.roles.builder import Builder
from meshd.roles.certificates import Certificates
from meshd.roles.courier import Courier
from meshd.roles.entry import EntryPoint
from meshd.roles.logs import LogForwarder
from meshd.roles.notifications import HeartbeatMails
from meshd.roles.provisioner import Provisioner
from meshd.roles.recovery import Recovery
from meshd.roles.scheduler import Scheduler
from meshd.roles.secrets import SecretKeeper
from meshd.roles.snapshots import Snapshots
from meshd.roles.vault_mirror import VaultMirror
from meshd.watchers.detector import Detector
from meshd.watchers.quorum import QuorumWatch
from meshd.watchers.rescue import MasterRescue
from plugins.providers import Provider, Volumes
from plugins.runtimes import RuntimeContext, load_runtime
from plugins.secrets.env import EnvSecrets
from protocol.messages import NodeStatus
from protocol.subjects import Role

log = logging.getLogger(__name__)
RETRY_S = 1.0
# The entry point moves within about 3 s of its holder's death: a short lease, renewed 4/s.
LB_TIMING = LeaseTiming(ttl=2.0, renew_every=0.5, margin=0.5, retry_every=0.25)
LB_HESITATE_S = 0.5  # other droplets wait this long before each try: master wins the race


class Agent:
    def __init__(self, droplet_dir: Path) -> None:
        self.dir = droplet_dir
        self.identity = DropletIdentity.load(droplet_dir)
        self._identity_mtime = (droplet_dir / "droplet.json").stat().st_mtime
        self.config = MeshConfig.from_json((droplet_dir / "user_data").read_text())
        self.data_dir = droplet_dir / "agent"
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        self.incarnation = next_incarnation(self.data_dir)
        self.keys = droplet_keys(self.data_dir, self.identity.id)
        self.secrets = SealedSecrets(self.keys, EnvSecrets())
        self.terms: dict[str, Term] = {}
        self.reports: ReportFeed | None = None
        self.allocations: AllocationFeed | None = None
        self.board: LeaseBoard | None = None
        self.store: Store | None = None
        self.view = MeshView()
        bare = bool(self.config.bootstrap)  # droplets start bare: leaders bootstrap them
        self.trust = Trust(self.identity.name, self.view, self.secrets, cloud=bare)
        self.trust.servers = ServerPlacement.load(self.dir, self.config).names()
        self.reconciler: Reconciler
        self.boot = DropletBootstrap(self.dir, self.config, self.mesh_secret) if bare else None
        self.tls_expires = CertificateExpiry(droplet_dir)  # the provisioner renews it when due

    def mesh_secret(self, name: str) -> bytes | None:
        """A mesh-scoped secret sealed to this droplet, in memory (the cloud token, the SSH key)."""
        return self.secrets.get(name, *SECRET_SCOPE)

    def current_store(self) -> Store | None:
        return self.store

    def status(self) -> NodeStatus:
        self._refresh_identity()
        return node_status(
            self.identity,
            self.incarnation,
            self.roles(),
            self.reconciler.statuses(),
            seal_key=self.keys.current.public_text,
            env_secrets=tuple(sorted(self.secrets.from_environment)),
            tls_expires=self.tls_expires(),
        )

    def _servers_changed(self, servers: tuple[str, ...]) -> None:
        self.trust.servers = servers
        self._trust_changed()

    def _trust_changed(self) -> None:
        """Which roles this droplet may hold may have changed: the leases it watches and the
        reports it reads follow (else within their `RESCOPE_EVERY_S`)."""
        for scoped in (self.board, self.reports, self.allocations):
            if scoped is not None:
                scoped.rescope.set()

    def _refresh_identity(self) -> None:
        """The provider rewrites droplet.json when it resizes the droplet; a stat is cheap."""
        mtime = (self.dir / "droplet.json").stat().st_mtime
        if mtime != self._identity_mtime:
            self._identity_mtime = mtime
            self.identity = DropletIdentity.load(self.dir)

    def _scoped_feeds(
        self, store: Store, reconciler: Reconciler
    ) -> tuple[ReportFeed, AllocationFeed]:
        """What this droplet reads of the reports and the allocations: every one while it
        holds a role or may hold the sensitive ones (docs/scale.md)."""
        name, everything = self.identity.name, lambda: bool(self.roles()) or self.trust.trusted()
        self.reports = ReportFeed(store, self.view, reconciler, name, everything)
        self.allocations = AllocationFeed(
            store, self.view, reconciler, name, everything, self.reports.rescope
        )
        return self.reports, self.allocations

    def roles(self) -> tuple[str, ...]:
        return tuple(sorted(role for role, term in self.terms.items() if term.valid))

    def _observe(self, role: str, term: Term | None) -> None:
        if term is not None and self.terms.get(role) is not term:
            metrics.LEASE_TERMS.labels(role).inc()
        if term is None:
            self.terms.pop(role, None)
        else:
            self.terms[role] = term
        for scoped in (self.reports, self.allocations):  # a role holder reads everything
            if scoped is not None:
                scoped.rescope.set()

    async def run(self) -> None:
        await serve_git(self.dir, self.config, self.identity.name)
        runtime_config = self.config.runtime or {"name": "process"}
        runtime = load_runtime(
            runtime_config.get("name", "process"),
            RuntimeContext(
                mesh=self.config.mesh,
                droplet=self.identity.name,
                data_dir=self.data_dir / "runtime",
                config=dict(runtime_config.get("config", {})),
                logger=logging.getLogger("plugins.runtimes"),
            ),
        )
        reconciler = Reconciler(
            runtime, self.identity.name, self.identity.address, self.data_dir, self.secrets
        )
        self.reconciler = reconciler
        logs = LogShipper(
            self.current_store, self.identity.name, runtime, self.dir / "lb", self.data_dir
        )
        logging.getLogger().addHandler(logs.own)
        async with AsyncExitStack() as stack:
            stack.push_async_callback(runtime.close)
            me = self.identity
            board = Dashboard(
                self.view, self.current_store, self.mesh_secret, self.config.mesh, me.address
            )
            app = create_app(
                self.status,
                lambda: bool(self.store and self.store.connected),
                GitHooks(me.name, self.current_store, self.view, self.secrets),
                metrics.serve(self.status, logs.counts, lambda: self.view.allocations),
                board,
                self.current_store,  # answers ACME challenges where the entry is
            )
            stack.push_async_callback((await serve(app, me.address, AGENT_HTTP_PORT)).cleanup)
            log.info(
                "Agent started. droplet=%s address=%s incarnation=%d",
                self.identity.name,
                self.identity.address,
                self.incarnation,
            )
            provider = self._provider()
            if isinstance(provider, Volumes):
                reconciler.volumes = DropletVolumes(
                    provider, self.config.mesh, me.name, me.id, runtime.name, self.current_store
                )
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(reconciler.run(), name="reconciler")
                tasks.create_task(logs.run(), name="log-shipper")
                tasks.create_task(board.sample(), name="dashboard-chart")
                tasks.create_task(metrics.measure_round_trips(self.current_store), name="nats-rtt")
                tasks.create_task(self._control_plane(reconciler, provider), name="control-plane")
                if self.identity.name != MASTER:
                    tasks.create_task(self._rescue(provider).run(), name="master-rescue")

    def _rescue(self, provider: Provider) -> MasterRescue:
        """Rebuilds master when JetStream ran on it alone and it died (watchers/rescue.py)."""
        return MasterRescue(
            self.dir,
            self.config,
            self.identity.name,
            self.current_store,
            lambda: self.view.cards,
            provider,
            mesh_tag(self.config.mesh),
        )

    async def _control_plane(self, reconciler: Reconciler, provider: Provider) -> None:
        placement = ServerPlacement.load(self.dir, self.config)
        store = await open_store(
            nats_urls(placement, self.config),
            "agent",
            self.config.passwords["agent"],
            name=f"meshd-{self.identity.name}",
            forever=True,
            trust=self.config.trust(),
        )
        self.store = reconciler.artifacts.store = store  # artifacts are fetched from now on
        entry: EntryPoint | None = None
        mover: ServerMover | None = None
        # Beats and reports from the start: a master that finishes a move after a restart
        # must not look dead meanwhile (its monitors would have it rebuilt).
        membership = Membership(
            store, self.identity, self.status, reconciler.observed, reconciler.published
        )
        beating = asyncio.create_task(membership.run(), name="membership")
        try:
            if self.identity.name == MASTER:  # master creates the schema and moves the state
                assert isinstance(store, NatsStore)
                mover = ServerMover(store, self.dir, self.data_dir, self.config)
                await self._prepare_store(store, mover)
            name = self.identity.name
            view = self.view
            entry = EntryPoint(
                store, self.identity, self.config, provider, view, self.dir / "lb", self.mesh_secret
            )
            tag = mesh_tag(self.config.mesh)
            # Master holds the entry point and mails when it can; the roomiest droplet builds.
            away, builds = 0.0 if name == MASTER else LB_HESITATE_S, self.trust.builder_hesitation

            provisioner = Provisioner(store, provider, self.config, name, self.boot)
            leaders: Roles = [
                (Scheduler(store, name), None, 0.0),
                (provisioner, None, provisioner.hesitation),
                (self._recovery(store, provider), None, 0.0),
                (Snapshots(store, provider, view, name, tag), None, 0.0),
                (self._builder(store, reconciler), None, builds),
                (self._backups(store), None, 0.0),
                (LogForwarder(store, view, name, self.config.mesh, self.mesh_secret), None, 0.0),
                (self._certificates(store), None, away),
                (
                    Together(
                        Role.HEARTBEAT,
                        HeartbeatMails(store, view, name, self.config.mesh),
                        Courier(store, Channels(lambda: view.notify, self.secrets), name),
                    ),
                    None,
                    away,
                ),
                (entry, LB_TIMING, away),
                (
                    SecretKeeper(store, view, name, self.keys, VaultMirror(store, name)),
                    None,
                    away,
                ),
            ]
            board, keepers = lease_keepers(
                store, name, self.incarnation, leaders, self.trust, self._observe
            )
            self.board = board
            beats = BeatListener(store)
            reports, allocations = self._scoped_feeds(store, reconciler)
            detector = Detector(store, self.identity, self.incarnation, view, provider, tag, beats)
            listener = ServersListener(
                store, name, self.dir, self.config, on_change=self._servers_changed
            )
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(listener.run(), name="jetstream-servers")
                if mover is not None:
                    tasks.create_task(mover.run(), name="jetstream-mover")
                tasks.create_task(_joined(beating), name="membership")
                tasks.create_task(board.run(), name="lease-board")
                tasks.create_task(detector.run(), name="detector")
                tasks.create_task(beats.run(), name="beats")
                quorum = QuorumWatch(store, view, name, self.config.mesh, self.secrets, beats)
                tasks.create_task(quorum.run(), name="quorum")
                tasks.create_task(allocations.run(), name="allocations")
                tasks.create_task(
                    feed_cards(store, reconciler, view, self._trust_changed), name="cards"
                )
                tasks.create_task(reports.run(), name="reports")
                tasks.create_task(  # release commands, passwords, backups: done here
                    answer_requests(
                        store, reconciler, name, self.secrets, self.keys, self.dir / "backups"
                    ),
                    name="answering",
                )
                for label, mirror in mirrors(store, view, self.secrets, name).items():
                    tasks.create_task(mirror, name=label)
                for keeper in keepers:
                    tasks.create_task(keeper.run(), name=f"lease-{keeper.role}")
        finally:
            beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beating
            if entry is not None:
                await entry.close()
            self.store = reconciler.artifacts.store = None
            await store.close()

    def _recovery(self, store: Store, provider: Provider) -> Recovery:
        return Recovery(store, provider, self.view, self.identity.name, mesh_tag(self.config.mesh),
                        partial(user_data_now, self.dir, self.config), self.boot)  # fmt: skip

    def _backups(self, store: Store) -> Backups:
        secret = partial(self.secrets.get, project=SECRET_SCOPE[0], env=SECRET_SCOPE[1])
        return Backups(store, self.view, self.identity.name, self.keys,
                       self.data_dir / "backup-leader", self.config.mesh, secret)  # fmt: skip

    def _certificates(self, store: Store) -> Certificates:
        directory = default_directory(self.config.provider)  # Let's Encrypt on DigitalOcean
        return Certificates(store, self.view, self.identity.name, self.config.mesh,
                            self.mesh_secret, directory)  # fmt: skip

    def _builder(self, store: Store, reconciler: Reconciler) -> Builder:
        key = partial(self.mesh_secret, INFRASTRUCTURE_KEY)  # reaches master's repositories
        return Builder(store, self.view, reconciler.runtime, self.identity.name,
                       self.data_dir / "builder", self.config.mesh, self.dir, key)  # fmt: skip

    def _provider(self) -> Provider:
        return agent_provider(
            self.config, follow_power(self.config.mesh), self.current_store, self.mesh_secret
        )

    async def _prepare_store(self, store: NatsStore, mover: ServerMover) -> None:
        """Finish a move of the JetStream state that an earlier life left midway, then create
        what the schema lacks (only master does: an agent that started mid-move must not
        create an empty bucket where a restore is due)."""
        while True:
            try:
                journal = Journal.load(self.data_dir)
                if journal is not None:
                    await mover.resume(journal)
                placement = ServerPlacement.load(self.dir, self.config)
                await store.ensure(replicas(placement))
                return
            except StoreUnavailable as err:
                log.info("Waiting for JetStream. error=%s", err)
                await asyncio.sleep(RETRY_S)


async def _joined(task: asyncio.Task[None]) -> None:
    """A task started before a task group, awaited in it: its failure fails the group."""
    await task


async def run_agent(droplet_dir: Path) -> None:
    """Run until SIGTERM or SIGINT, then stop cleanly: leases are handed over at once and
    instances keep running (the next agent re-adopts them)."""
    agent = Agent(droplet_dir)
    main = asyncio.current_task()
    assert main is not None
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, main.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await agent.run()
    log.info("Agent stopped. droplet=%s", agent.identity.name)
