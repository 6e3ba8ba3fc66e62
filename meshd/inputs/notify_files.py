"""The operator's notification files: the seed's `email_config.json` and `sms_config.json`.

`meshctl publish` reads them beside the CSV (or from `--email-config` / `--sms-config`),
checks them with the notifiers' own rules and publishes them with the desired state
(`meshd.core.notify_settings`). They hold no secret: a file that contains `password` or
`auth_token` is refused with the name of the secret to set instead.

Besides the notifier's settings, `email_config.json` may set how often the heartbeats go out:
`heartbeat_minutes` (default 15), `backup_heartbeat_minutes` (10) and `timezone` (UTC) for the
times in subjects.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from meshd.core.errors import InputErrors, InputIssue
from meshd.core.notify_settings import CHANNELS, EMAIL_FILE, SMS_FILE, Channel, NotifySettings
from plugins.notifiers import NotifierConfigError, load_notifier

__all__ = ["EMAIL_FILE", "SMS_FILE", "find_beside", "load_notify_settings"]
SCHEDULE_KEYS = ("heartbeat_minutes", "backup_heartbeat_minutes", "timezone")
SECRET_KEYS = ("password", "auth_token", "token")
CHECK_SECRET = b"checked-at-send-time"  # stands in for the secret while the shape is checked


def find_beside(csv_path: Path, name: str) -> Path | None:
    candidate = csv_path.parent / name
    return candidate if candidate.is_file() else None


def load_notify_settings(email_path: Path | None, sms_path: Path | None) -> NotifySettings:
    """Raises `InputErrors` with every problem of both files."""
    issues: list[InputIssue] = []
    email = _object(email_path, issues)
    sms = _object(sms_path, issues)
    schedule: dict[str, Any] = {}
    if email is not None and email_path is not None:
        schedule = {k: email.pop(k) for k in SCHEDULE_KEYS if k in email}
        _check(email_path, email, CHANNELS["email"], issues)
    if sms is not None and sms_path is not None:
        _check(sms_path, sms, CHANNELS["sms"], issues)
    heartbeat = _minutes(email_path, schedule, "heartbeat_minutes", 15.0, issues)
    backup = _minutes(email_path, schedule, "backup_heartbeat_minutes", 10.0, issues)
    timezone = schedule.get("timezone", "UTC")
    try:
        ZoneInfo(str(timezone))
    except (ZoneInfoNotFoundError, ValueError):
        issues.append(
            InputIssue(
                str(email_path),
                "$.timezone",
                f"unknown time zone {timezone!r}; give one like UTC or Europe/Berlin",
            )
        )
    if issues:
        raise InputErrors(issues)
    return NotifySettings(
        email=email,
        sms=sms,
        heartbeat_s=heartbeat * 60,
        backup_heartbeat_s=backup * 60,
        timezone=str(timezone),
    )


def _object(path: Path | None, issues: list[InputIssue]) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        issues.append(InputIssue(str(path), "", f"cannot read it: {err.strerror or err}"))
        return None
    except (ValueError, UnicodeDecodeError) as err:
        issues.append(InputIssue(str(path), "", f"not valid JSON: {err}"))
        return None
    if not isinstance(data, dict):
        issues.append(InputIssue(str(path), "$", "give a JSON object of settings"))
        return None
    return data


def _check(path: Path, config: dict[str, Any], channel: Channel, issues: list[InputIssue]) -> None:
    for key in SECRET_KEYS:
        if key in config:
            secret = channel.secret_name(config)
            issues.append(
                InputIssue(
                    str(path),
                    f"$.{key}",
                    f"secrets do not belong in this file; remove it and set the secret "
                    f"{secret!r} (environment variable {str(secret).upper()}) on the droplets",
                )
            )
            return
    try:
        load_notifier(channel.notifier, config, CHECK_SECRET, str(path))
    except NotifierConfigError as err:
        issues.append(InputIssue(str(path), "", err.reason))


def _minutes(
    path: Path | None,
    schedule: Mapping[str, Any],
    key: str,
    default: float,
    issues: list[InputIssue],
) -> float:
    value = schedule.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        issues.append(InputIssue(str(path), f"$.{key}", f"{value!r}: give minutes above 0"))
        return default
    return float(value)
