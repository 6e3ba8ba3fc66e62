"""How the mesh reaches its operator, as published with the desired state: which channels
(email through the `smtp` notifier, SMS through `sms`), their settings, and how often the
heartbeat mails go out. The settings hold no secret: each channel names the secret its
notifier needs (`smtp_password`, `twilio_auth_token` by default), looked up at send time."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

EMAIL_FILE = "email_config.json"
SMS_FILE = "sms_config.json"
SECRET_SCOPE = ("mesh", "mesh")  # project and env of the lookup: SMTP_PASSWORD is found


@dataclass(frozen=True, slots=True)
class Channel:
    """How one channel's settings become a notifier: the plugin, the file they come from, the
    setting that names the secret and the secret's default name."""

    notifier: str
    file: str
    secret_setting: str
    default_secret: str

    def secret_name(self, config: Mapping[str, Any]) -> str:
        return str(config.get(self.secret_setting, self.default_secret))


CHANNELS = {
    "email": Channel("smtp", EMAIL_FILE, "password_secret", "smtp_password"),
    "sms": Channel("sms", SMS_FILE, "token_secret", "twilio_auth_token"),
}


@dataclass(frozen=True, slots=True)
class NotifySettings:
    email: dict[str, Any] | None = None  # the smtp notifier's settings
    sms: dict[str, Any] | None = None  # the sms notifier's settings
    heartbeat_s: float = 900.0
    backup_heartbeat_s: float = 600.0
    timezone: str = "UTC"

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def configured(self) -> dict[str, dict[str, Any]]:
        """Channel -> its notifier's settings, for the channels that have some."""
        found = {"email": self.email, "sms": self.sms}
        return {channel: config for channel, config in found.items() if config is not None}

    def to_data(self) -> dict[str, Any]:
        return {
            "email": self.email,
            "sms": self.sms,
            "heartbeat_s": self.heartbeat_s,
            "backup_heartbeat_s": self.backup_heartbeat_s,
            "timezone": self.timezone,
        }

    @classmethod
    def from_data(cls, data: Mapping[str, Any] | None) -> NotifySettings:
        if not data:
            return cls()
        return cls(
            email=data.get("email"),
            sms=data.get("sms"),
            heartbeat_s=float(data.get("heartbeat_s", 900.0)),
            backup_heartbeat_s=float(data.get("backup_heartbeat_s", 600.0)),
            timezone=str(data.get("timezone", "UTC")),
        )
