"""The `certificates` role: one holder in the mesh orders the domains' certificates from the
ACME directory (docs/tls.md), so five droplets make one order, never five.

Each round it compares the project-environments that have domains with `mesh_certs`
(`meshd.core.certs.due`: none yet, names changed, 30 days before the end, asked for) and
orders what is due, one at a time, with HTTP-01: the answers go into `mesh_certs` as
`challenge.<token>`, which the lb holder's agent serves at `/.well-known/acme-challenge/`,
whichever droplet that is. The account key and each certificate's key are mesh secrets
(sealed to the trusted droplets, where the lb holder is); the chain is stored in the clear.
A failed order keeps the certificate there was (the lb serves on with it), is recorded with
its reason and waits longer each time (`backoff`); within 7 days of the end a critical alert
goes out once a day. Every write carries the lease's fence and every outcome is an event:
`certificate_issued`, `certificate_renewed`, `certificate_failed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import replace

from meshd.agent.lease import Term
from meshd.agent.meshkey import put_mesh_secret
from meshd.agent.meshview import MeshView
from meshd.agent.outbox import queue_critical
from meshd.agent.store import Conflict, Store, StoreUnavailable
from meshd.core.certs import (
    NO_DIRECTORY,
    Wanted,
    backoff,
    days_left,
    due,
    needs_alert,
    wanted,
)
from meshd.core.tls_chain import Issued, key_matches
from protocol import subjects
from protocol.certs import Certificate, RenewRequest, challenge_key, renew_key
from protocol.codec import decode, encode
from protocol.errors import ProtocolError

log = logging.getLogger(__name__)
ROUND_S = 5.0
ACCOUNT_KEY = "acme_account_key"  # the mesh secret of the ACME account's key

MeshSecret = Callable[[str], bytes | None]


class Certificates:
    role = subjects.Role.CERTIFICATES

    def __init__(
        self,
        store: Store,
        view: MeshView,
        droplet: str,
        mesh: str,
        secret: MeshSecret,
        default_directory: str = "",
    ) -> None:
        self.store = store
        self.default_directory = default_directory  # when the config names none
        self.view = view
        self.droplet = droplet
        self.mesh = mesh
        self.secret = secret  # a mesh secret sealed to this droplet
        self._made_account_key: bytes | None = None  # until its sealed copy arrives

    async def lead(self, term: Term) -> None:
        while True:
            term.ensure_held()
            try:
                await self.round(term)
            except StoreUnavailable as err:
                log.info("Certificates not checked. error=%s", err)
            await asyncio.sleep(ROUND_S)

    async def round(self, term: Term) -> None:
        wants = wanted(self.view.state)
        if not wants:
            return
        certs: dict[str, Certificate] = {}
        renews: dict[str, RenewRequest] = {}
        for key, entry in (await self.store.entries(subjects.CERTS_BUCKET)).items():
            with contextlib.suppress(ProtocolError):
                if key.startswith("cert.") and entry.value:
                    certs[key] = decode(entry.value, Certificate)
                elif key.startswith("renew.") and entry.value:
                    renews[key] = decode(entry.value, RenewRequest)
        for want in wants:
            cert = certs.get(want.key)
            renew = renews.get(renew_key(want.project, want.env))
            now = time.time()
            if cert is not None and needs_alert(cert, now):
                cert = await self._alert(term, want, cert, now)
            why = due(want, cert, renew, now)
            if why is not None:
                await self.order(term, want, cert, why)

    async def order(self, term: Term, want: Wanted, cert: Certificate | None, why: str) -> None:
        """Order `want`'s certificate; its record says how it went."""
        settings = self.view.state.acme if self.view.state else {}
        directory = settings.get("directory") or self.default_directory
        if not directory:  # said once; not a failure that delays the first real order
            if cert is None or cert.last_error != NO_DIRECTORY:
                await self._failed(term, want, cert, NO_DIRECTORY, time.time(), counts=False)
            return
        # The ACME client (and requests) only where the role is held: not on every droplet.
        from meshd.agent.acme_client import AcmeError, AcmeSession, new_certificate_key  # noqa: PLC0415

        account_key = await self._account_key(term)
        if account_key is None:
            return
        log.info("Ordering a certificate. name=%s domains=%s why=%s", want.name, want.domains, why)
        session = AcmeSession(
            directory, account_key, settings.get("email", ""), settings.get("directory_ca", "")
        )
        published: list[str] = []
        started = time.time()
        try:
            await asyncio.to_thread(session.register)
            key = new_certificate_key()
            pending = await asyncio.to_thread(session.order, want.domains, key)
            for challenge in pending.challenges:
                term.ensure_held()
                name = challenge_key(challenge.token)
                await self.store.put(subjects.CERTS_BUCKET, name, challenge.validation.encode())
                published.append(name)
            for challenge in pending.challenges:
                term.ensure_held()
                await asyncio.to_thread(session.answer, challenge)
            issued = await asyncio.to_thread(session.finalize, pending)
        except AcmeError as err:
            await self._failed(term, want, cert, err.reason, started)
            return
        finally:
            await asyncio.to_thread(session.close)
            for name in published:
                with contextlib.suppress(StoreUnavailable):
                    await self.store.delete(subjects.CERTS_BUCKET, name)
        await self._issued(term, want, cert, issued, key, started)

    async def _account_key(self, term: Term) -> bytes | None:
        """The account's key: sealed to this droplet, made here a moment ago, or made now
        (first order of the mesh). None while it exists but is not sealed here yet."""
        found = self.secret(ACCOUNT_KEY) or self._made_account_key
        if found is not None:
            return found
        stored = await self.store.get(
            subjects.SECRETS_BUCKET, subjects.secret_value_key(ACCOUNT_KEY)
        )
        if stored is not None and stored.value:
            log.info("ACME account key not sealed to this droplet yet.")
            return None
        term.ensure_held()
        from meshd.agent.acme_client import new_account_key  # noqa: PLC0415

        made = new_account_key()
        try:
            version = await put_mesh_secret(self.store, ACCOUNT_KEY, made, f"meshd@{self.droplet}")
        except Conflict:
            return None  # made elsewhere meanwhile: sealed here soon
        if version is None:
            log.info("No mesh key yet: the ACME account waits for it.")
            return None
        self._made_account_key = made
        return made

    async def _issued(
        self,
        term: Term,
        want: Wanted,
        cert: Certificate | None,
        issued: Issued,
        key: bytes,
        started: float,
    ) -> None:
        assert key_matches(issued.chain, key)
        term.ensure_held()
        version = await put_mesh_secret(self.store, want.key_secret, key, f"meshd@{self.droplet}")
        renewed = cert is not None and cert.issued
        record = Certificate(
            project=want.project,
            env=want.env,
            domains=want.domains,
            covers=issued.covers,
            chain=issued.chain,
            issuer=issued.issuer,
            not_before=issued.not_before,
            not_after=issued.not_after,
            key_secret=want.key_secret,
            key_version=version or 0,
            issued_at=time.time(),
            renewals=(cert.renewals + 1) if renewed and cert else 0,
            last_attempt_at=started,
            fence=term.fence,
        )
        term.ensure_held()
        await self.store.put(subjects.CERTS_BUCKET, want.key, encode(record))
        with contextlib.suppress(StoreUnavailable):
            await self.store.delete(subjects.CERTS_BUCKET, renew_key(want.project, want.env))
        event = "certificate_renewed" if renewed else "certificate_issued"
        log.info(
            "Certificate %s. name=%s until=%s", event.split("_")[1], want.name, issued.not_after
        )
        detail = {
            "domains": list(want.domains),
            "issuer": issued.issuer,
            "not_after": issued.not_after,
            "took_s": round(time.time() - started, 1),
        }
        await self.store.record(event, self.droplet, want.name, detail, term.fence)

    async def _failed(
        self,
        term: Term,
        want: Wanted,
        cert: Certificate | None,
        reason: str,
        started: float,
        counts: bool = True,
    ) -> None:
        failures = (cert.failures if cert else 0) + (1 if counts else 0)
        wait = backoff(failures) if counts else 0.0
        base = cert or Certificate(project=want.project, env=want.env, domains=want.domains)
        record = replace(
            base,
            domains=want.domains,
            last_attempt_at=started,
            last_error=reason,
            failures=failures,
            next_attempt_at=time.time() + wait if counts else 0.0,
            fence=term.fence,
        )
        log.warning(
            "Certificate not issued. name=%s error=%s retry_in_s=%s", want.name, reason, wait
        )
        term.ensure_held()
        await self.store.put(subjects.CERTS_BUCKET, want.key, encode(record))
        detail = {
            "domains": list(want.domains),
            "error": reason,
            "failures": failures,
            "retry_in_s": wait,
            "serving": "the old certificate" if base.issued else "plain HTTP",
        }
        await self.store.record("certificate_failed", self.droplet, want.name, detail, term.fence)

    async def _alert(self, term: Term, want: Wanted, cert: Certificate, now: float) -> Certificate:
        left = days_left(cert, now)
        what = f"certificate of {want.name} expires in {left} days"
        details = {"domains": ", ".join(want.domains), "expires": time.strftime(
            "%Y-%m-%d %H:%M UTC", time.gmtime(cert.not_after)),
            "last error": cert.last_error or "none"}  # fmt: skip
        term.ensure_held()
        await queue_critical(
            self.store, self.view.notify, what, details, (self.mesh, self.droplet, term.fence)
        )
        alerted = replace(cert, alerted_at=now, fence=term.fence)
        await self.store.put(subjects.CERTS_BUCKET, want.key, encode(alerted))
        await self.store.record(
            "certificate_expiring", self.droplet, want.name, {"days_left": left}, term.fence
        )
        return alerted
