"""The `sms` notifier: Twilio's Messages API over aiohttp (the only SMS provider so far).

Configuration (the seed's `sms_config.json`; the auth token is never in it: the caller looks
it up as a secret, `twilio_auth_token` by default):

    {"provider": "twilio", "account_sid": "AC...", "from_number": "+15005550006",
     "to_numbers": ["+15551234567"]}

One request per recipient: `POST {api_base}/2010-04-01/Accounts/{account_sid}/Messages.json`
with the form fields `To`, `From` and `Body`, HTTP basic auth (account SID, auth token); Twilio
answers 201 with the message's `sid`. `api_base` (default https://api.twilio.com) exists for
tests and proxies. A message longer than one SMS is cut at `MAX_BODY` characters.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from typing import Any

import aiohttp

from plugins.notifiers import NotifierConfigError, NotifyError, Outgoing

API_BASE = "https://api.twilio.com"
MAX_BODY = 320  # two SMS segments
PROVIDERS = ("twilio",)
KNOWN = {"provider", "account_sid", "from_number", "to_numbers", "api_base", "token_secret"}
_NUMBER = re.compile(r"\+[1-9]\d{6,14}")  # E.164
_SID = re.compile(r"AC[0-9a-fA-F]{32}")


class TwilioNotifier:
    name = "sms"

    def __init__(
        self,
        *,
        account_sid: str,
        token: bytes,
        sender: str,
        recipients: tuple[str, ...],
        api_base: str,
    ) -> None:
        self.account_sid = account_sid
        self._token = token
        self.sender = sender
        self.recipients = recipients
        self.api_base = api_base.rstrip("/")

    @property
    def channel(self) -> str:
        return f"twilio {self.api_base}"

    @property
    def url(self) -> str:
        return f"{self.api_base}/2010-04-01/Accounts/{self.account_sid}/Messages.json"

    async def send(self, message: Outgoing) -> None:
        body = message.text if len(message.text) <= MAX_BODY else message.text[: MAX_BODY - 1]
        credentials = base64.b64encode(self.account_sid.encode() + b":" + self._token).decode()
        auth = {"Authorization": f"Basic {credentials}"}
        timeout = aiohttp.ClientTimeout(total=15)
        try:
            async with aiohttp.ClientSession(headers=auth, timeout=timeout) as http:
                for number in self.recipients:
                    form = {"To": number, "From": self.sender, "Body": body}
                    async with http.post(self.url, data=form) as reply:
                        if reply.status == 201:
                            continue
                        detail = await _error_of(reply)
                        raise NotifyError(
                            self.channel,
                            f"SMS to {number} refused: {reply.status} {detail}",
                            permanent=reply.status in (400, 401, 403, 404),
                        )
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            raise NotifyError(self.channel, f"not delivered: {err!r}") from None


async def _error_of(reply: aiohttp.ClientResponse) -> str:
    try:
        data = await reply.json(content_type=None)
    except (ValueError, aiohttp.ClientError):
        return (await reply.text())[:200]
    if isinstance(data, dict):
        return f"{data.get('code', '')} {data.get('message', '')}".strip()
    return str(data)[:200]


def create(config: Mapping[str, Any], token: bytes | None, source: str) -> TwilioNotifier:
    unknown = sorted(set(config) - KNOWN)
    if unknown:
        raise NotifierConfigError(
            source, f"unknown settings {', '.join(unknown)}; known: {', '.join(sorted(KNOWN))}"
        )
    provider = config.get("provider", "twilio")
    if provider not in PROVIDERS:
        raise NotifierConfigError(
            source, f"provider {provider!r}: use one of {', '.join(PROVIDERS)}"
        )
    sid = config.get("account_sid")
    if not isinstance(sid, str) or not _SID.fullmatch(sid):
        raise NotifierConfigError(source, "account_sid: give the Twilio account SID, AC + 32 hex")
    sender = config.get("from_number")
    if not isinstance(sender, str) or not _NUMBER.fullmatch(sender):
        raise NotifierConfigError(source, "from_number: give a number as +<country><number>")
    recipients = config.get("to_numbers")
    if isinstance(recipients, str):
        recipients = [recipients]
    if (
        not isinstance(recipients, list)
        or not recipients
        or not all(isinstance(n, str) and _NUMBER.fullmatch(n) for n in recipients)
    ):
        raise NotifierConfigError(source, "to_numbers: give a list of numbers as +<country><...>")
    if token is None:
        secret = config.get("token_secret", "twilio_auth_token")
        raise NotifierConfigError(
            source,
            f"the auth token is missing: set the secret {secret!r} "
            f"(environment variable {str(secret).upper()})",
        )
    api_base = config.get("api_base", API_BASE)
    if not isinstance(api_base, str) or not api_base.startswith(("https://", "http://")):
        raise NotifierConfigError(source, "api_base: give a URL, e.g. https://api.twilio.com")
    return TwilioNotifier(
        account_sid=sid,
        token=token,
        sender=sender,
        recipients=tuple(recipients),
        api_base=api_base,
    )
