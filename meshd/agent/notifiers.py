"""The notifiers an agent sends with: built from the published notification settings and the
secrets this droplet can read, rebuilt when the settings change. The `heartbeat` holder's
mails, its courier and the quorum alert share this one way of building them."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from meshd.core.notify_settings import CHANNELS, SECRET_SCOPE, NotifySettings
from plugins.notifiers import Notifier, NotifierConfigError, load_notifier
from plugins.secrets import Secrets

log = logging.getLogger(__name__)


def notifiers(
    settings: NotifySettings, secrets: Secrets, source: str = "(published)"
) -> dict[str, Notifier | NotifierConfigError]:
    """The configured channels' notifiers, each with its secret looked up in `secrets`, or
    why one cannot work (a secret missing, a setting the plugin refuses)."""
    built: dict[str, Notifier | NotifierConfigError] = {}
    for name, config in settings.configured().items():
        channel = CHANNELS[name]
        value = secrets.get(channel.secret_name(config), *SECRET_SCOPE)
        try:
            built[name] = load_notifier(channel.notifier, config, value, f"{channel.file} {source}")
        except NotifierConfigError as err:
            built[name] = err
    return built


class Channels:
    """Channel -> its notifier, or why it cannot work; rebuilt when the settings or their
    secrets change.
    Callable, so that a courier asks for the current ones before each delivery."""

    def __init__(self, settings: Callable[[], NotifySettings], secrets: Secrets) -> None:
        self._settings = settings
        self._secrets = secrets
        self._built: tuple[object, dict[str, Notifier | NotifierConfigError]] | None = None

    def __call__(self) -> Mapping[str, Notifier | NotifierConfigError]:
        settings = self._settings()
        # A secret set or rotated (`meshctl secret set --mesh smtp_password`) rebuilds too.
        values = tuple(
            self._secrets.get(CHANNELS[name].secret_name(config), *SECRET_SCOPE)
            for name, config in settings.configured().items()
        )
        key = (settings.email, settings.sms, values)
        if self._built is None or self._built[0] != key:
            built = notifiers(settings, self._secrets)
            for name, problem in built.items():
                if isinstance(problem, NotifierConfigError):
                    log.error("Notifier not usable. channel=%s error=%s", name, problem)
            self._built = (key, built)
        return self._built[1]
