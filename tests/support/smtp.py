"""A real SMTP server (aiosmtpd) on the test's own loop: plain, or with STARTTLS required and
AUTH LOGIN/PLAIN checked against one user, with a self-signed certificate made for it."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import queue
import ssl
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

USER, PASSWORD = "alerts@example.com", "s3cret-pass"


@dataclass
class Received:
    sender: str
    recipients: list[str]
    message: EmailMessage
    at: float = field(default_factory=time.time)

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    def part(self, subtype: str) -> str:
        found = self.message.get_body(preferencelist=(subtype,))
        assert found is not None, f"no text/{subtype} part"
        content = str(found.get_content())  # type: ignore[attr-defined]
        return content.replace("\r\n", "\n")  # as sent on the wire


@dataclass
class Mailbox:
    """What the server received, and how to reach it."""

    port: int
    cert: Path | None
    received: list[Received] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        content = envelope.original_content or b""
        message = message_from_bytes(content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        self.received.append(Received(str(envelope.mail_from), list(envelope.rcpt_tos), message))
        self.arrived.set()
        return "250 OK"


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _authenticator(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
) -> AuthResult:
    good = (
        isinstance(data, LoginPassword)
        and data.login.decode() == USER
        and data.password.decode() == PASSWORD
    )
    # handled=False on failure, or aiosmtplib waits until its timeout.
    return AuthResult(success=True) if good else AuthResult(success=False, handled=False)


@contextlib.asynccontextmanager
async def smtp_server(directory: Path | None = None, port: int = 0) -> AsyncIterator[Mailbox]:
    """Plain SMTP without `directory`; with it, STARTTLS required and AUTH checked. On `port`,
    or a free one."""
    loop = asyncio.get_running_loop()
    cert: Path | None = None
    context: ssl.SSLContext | None = None
    if directory is not None:
        cert, key = self_signed(directory)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
    box = Mailbox(port=0, cert=cert)

    def factory() -> SMTP:
        if context is None:
            return SMTP(box)
        return SMTP(
            box,
            tls_context=context,
            require_starttls=True,
            authenticator=_authenticator,
            auth_require_tls=True,
            auth_required=True,
        )

    server = await loop.create_server(factory, "127.0.0.1", port)
    box.port = server.sockets[0].getsockname()[1]
    try:
        yield box
    finally:
        server.close()
        await server.wait_closed()


@contextlib.contextmanager
def smtp_in_thread(directory: Path | None = None, port: int = 0) -> Iterator[Mailbox]:
    """`smtp_server` on a loop of its own thread, for tests that are not async (a local
    mesh sends to it from its droplets)."""
    loop = asyncio.new_event_loop()
    ready: queue.Queue[Mailbox | BaseException] = queue.Queue()
    stop = asyncio.Event()

    async def serve() -> None:
        try:
            async with smtp_server(directory, port) as box:
                ready.put(box)
                await stop.wait()
        except BaseException as err:  # noqa: BLE001 - handed to the test's thread
            ready.put(err)

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    found = ready.get(timeout=10)
    if isinstance(found, BaseException):
        raise found
    try:
        yield found
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=10)
        loop.close()
