"""The notifier interface: how the mesh tells its operator (docs/notifications.md).

A notifier plugin (`smtp`, `sms`) implements `Notifier`; `load_notifier` imports it lazily
from `NOTIFIERS` by name. What crosses the seam is an `Outgoing` message (subject, text, and
for email an HTML part) and `NotifyError`, which says whether trying again can help.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, cast

from protocol.errors import MeshError

NOTIFIERS: dict[str, str] = {
    "smtp": "plugins.notifiers.smtp:create",
    "sms": "plugins.notifiers.sms:create",
}


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to the operator. `html` is for email (None: text only); an SMS sends
    `text` alone."""

    subject: str
    text: str
    html: str | None = None


class NotifyError(MeshError):
    """A message was not delivered: `channel` says where it was going ("smtp mail.example.com:
    587"), `reason` what went wrong; `permanent` when trying again cannot help (a refused
    login, a bad address) until the configuration changes."""

    def __init__(self, channel: str, reason: str, *, permanent: bool = False) -> None:
        self.channel = channel
        self.reason = reason
        self.permanent = permanent
        super().__init__(f"{channel}: {reason}")


class NotifierConfigError(MeshError, ValueError):
    """A notifier's configuration is wrong: `source` names where it came from, `reason` says
    what is wrong and what would be right."""

    def __init__(self, source: str, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"{source}: {reason}")


class Notifier(Protocol):
    name: str

    async def send(self, message: Outgoing) -> None:
        """Deliver `message` to every configured recipient; raise NotifyError."""
        ...


def load_notifier(
    name: str, config: Mapping[str, Any], password: bytes | None, source: str
) -> Notifier:
    """Create the notifier called `name` from its configuration (`source` names the file, for
    errors) and its secret (the SMTP password, the Twilio auth token)."""
    target = NOTIFIERS.get(name)
    if target is None:
        known = ", ".join(sorted(NOTIFIERS))
        raise NotifierConfigError(source, f"no notifier {name!r}; known: {known}")
    module_name, _, attribute = target.partition(":")
    factory = cast(
        Callable[[Mapping[str, Any], bytes | None, str], Notifier],
        getattr(importlib.import_module(module_name), attribute),
    )
    return factory(config, password, source)
