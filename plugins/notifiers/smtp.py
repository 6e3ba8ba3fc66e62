"""The `smtp` notifier: mail with a text and an HTML part, over aiosmtplib.

Configuration (the seed's `email_config.json`; the password is never in it: the caller looks
it up as a secret, `smtp_password` by default):

    {"provider": "smtp", "host": "mail.example.com", "port": 587, "security": "starttls",
     "username": "alerts@example.com", "from_address": "alerts@example.com",
     "recipients": ["you@example.com"]}

`security` is `starttls` (default, port 587), `tls` (port 465) or `none` (a relay on a private
network; login then needs `allow_login_without_tls: true`). `cert_bundle` names a CA file for a
server with a private certificate.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

import aiosmtplib

from plugins.notifiers import NotifierConfigError, NotifyError, Outgoing

SECURITY = ("starttls", "tls", "none")
DEFAULT_PORTS = {"starttls": 587, "tls": 465, "none": 25}
KNOWN = {
    "provider",
    "host",
    "port",
    "security",
    "username",
    "from_address",
    "recipients",
    "password_secret",
    "cert_bundle",
    "timeout_s",
    "allow_login_without_tls",
}


class SmtpNotifier:
    name = "smtp"

    def __init__(
        self,
        *,
        host: str,
        port: int,
        security: str,
        sender: str,
        recipients: tuple[str, ...],
        username: str | None,
        password: bytes | None,
        cert_bundle: str | None,
        timeout_s: float,
    ) -> None:
        self.host = host
        self.port = port
        self.security = security
        self.sender = sender
        self.recipients = recipients
        self.username = username
        self._password = password
        self.cert_bundle = cert_bundle
        self.timeout_s = timeout_s

    @property
    def channel(self) -> str:
        return f"smtp {self.host}:{self.port}"

    def message(self, outgoing: Outgoing) -> EmailMessage:
        mail = EmailMessage()
        mail["Subject"] = outgoing.subject
        mail["From"] = self.sender
        mail["To"] = ", ".join(self.recipients)
        mail["Date"] = formatdate(localtime=False)
        mail["Message-ID"] = make_msgid(domain=self.sender.rpartition("@")[2] or None)
        mail.set_content(outgoing.text)
        if outgoing.html is not None:
            mail.add_alternative(outgoing.html, subtype="html")
        return mail

    async def send(self, message: Outgoing) -> None:
        tls_context = None
        if self.security != "none":
            tls_context = ssl.create_default_context(cafile=self.cert_bundle)
        try:
            await aiosmtplib.send(
                self.message(message),
                hostname=self.host,
                port=self.port,
                use_tls=self.security == "tls",
                start_tls=self.security == "starttls",  # False: never upgrade by itself
                tls_context=tls_context,
                username=self.username,
                password=self._password.decode() if self._password is not None else None,
                timeout=self.timeout_s,
            )
        except aiosmtplib.SMTPAuthenticationError as err:
            raise NotifyError(
                self.channel,
                f"login as {self.username!r} refused ({err.code} {err.message}): check the "
                "password secret",
                permanent=True,
            ) from None
        except aiosmtplib.SMTPRecipientsRefused as err:
            refused = ", ".join(r.recipient for r in err.recipients)
            raise NotifyError(
                self.channel, f"recipients refused: {refused}", permanent=True
            ) from None
        except aiosmtplib.SMTPResponseException as err:
            permanent = 500 <= err.code < 600
            raise NotifyError(
                self.channel, f"server said {err.code} {err.message}", permanent=permanent
            ) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as err:
            raise NotifyError(self.channel, f"not delivered: {err}") from None


def create(config: Mapping[str, Any], password: bytes | None, source: str) -> SmtpNotifier:
    unknown = sorted(set(config) - KNOWN)
    if unknown:
        raise NotifierConfigError(
            source, f"unknown settings {', '.join(unknown)}; known: {', '.join(sorted(KNOWN))}"
        )
    host = config.get("host")
    if not isinstance(host, str) or not host:
        raise NotifierConfigError(source, "host: give the SMTP server's name, e.g. smtp.gmail.com")
    security = config.get("security", "starttls")
    if security not in SECURITY:
        raise NotifierConfigError(
            source, f"security {security!r}: use one of {', '.join(SECURITY)}"
        )
    port = config.get("port", DEFAULT_PORTS[security])
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise NotifierConfigError(source, f"port {port!r}: give a number from 1 to 65535")
    sender = config.get("from_address")
    if not isinstance(sender, str) or "@" not in sender:
        raise NotifierConfigError(source, "from_address: give the address mail comes from")
    recipients = config.get("recipients")
    if isinstance(recipients, str):
        recipients = [recipients]
    if (
        not isinstance(recipients, list)
        or not recipients
        or not all(isinstance(r, str) and "@" in r for r in recipients)
    ):
        raise NotifierConfigError(source, "recipients: give a list of email addresses")
    username = config.get("username")
    if username is not None and not isinstance(username, str):
        raise NotifierConfigError(source, "username: give a string")
    if username and password is None:
        secret = config.get("password_secret", "smtp_password")
        raise NotifierConfigError(
            source,
            f"username {username!r} needs a password: set the secret {secret!r} "
            f"(environment variable {str(secret).upper()})",
        )
    if username and security == "none" and not config.get("allow_login_without_tls"):
        raise NotifierConfigError(
            source,
            "security none would send the password in clear; use starttls or tls "
            "(or allow_login_without_tls: true for a private relay)",
        )
    timeout = config.get("timeout_s", 30)
    if not isinstance(timeout, int | float) or timeout <= 0:
        raise NotifierConfigError(source, f"timeout_s {timeout!r}: give seconds above 0")
    return SmtpNotifier(
        host=host,
        port=port,
        security=security,
        sender=sender,
        recipients=tuple(recipients),
        username=username or None,
        password=password if username else None,
        cert_bundle=config.get("cert_bundle"),
        timeout_s=float(timeout),
    )
