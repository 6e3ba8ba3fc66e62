"""The deployment config's project key `backups`: how often the project's datastores are
backed up and how long their backups are kept (`every_hours`, `keep_days`; each optional, the
seed's when absent: `meshd.core.backup_policy.SCHEDULES`). Checked here with the JSON path of
each problem; its keys are the `backups` level of `config_keys`."""

from __future__ import annotations

import json
from typing import Any

from meshd.core.spec import BackupSchedule
from meshd.inputs.config_keys import Level, names_at
from meshd.inputs.vault_config import Checks

BACKUP_KEYS = names_at(Level.BACKUPS)
EVERY_HOURS_RANGE = (1, 168)  # up to a week
KEEP_DAYS_RANGE = (1, 365)  # up to a year
UNITS = {"every_hours": ("hours", EVERY_HOURS_RANGE), "keep_days": ("days", KEEP_DAYS_RANGE)}


def backup_schedule(checker: Checks, project: dict[str, Any], path: str) -> BackupSchedule | None:
    """The `backups` of the project object at `path`, or None when it has none or sets
    nothing (the seed's schedule); problems go to `checker` (then the result is None)."""
    if "backups" not in project:
        return None
    where = f"{path}.backups"
    found = checker.obj(project["backups"], where, BACKUP_KEYS)
    if found is None:
        return None
    before = len(checker.issues)
    values: dict[str, int | None] = dict.fromkeys(UNITS)
    for key, (unit, (low, high)) in UNITS.items():
        if key not in found:
            continue
        value = found[key]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            checker.fail(
                f"{where}.{key}",
                f"expected a whole number of {unit} from {low} to {high}, got {json.dumps(value)}",
            )
        else:
            values[key] = value
    if len(checker.issues) > before or values == dict.fromkeys(UNITS):
        return None
    return BackupSchedule(every_hours=values["every_hours"], keep_days=values["keep_days"])
