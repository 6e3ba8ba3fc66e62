"""The seed's UAT version tag ("Version Tagging and Promotion Strategy"): when a UAT release is
live and healthy, the builder tags its commit `v<major>.<minor>.<patch>-uat-<YYYYmmdd>-<HHMM>`
(UTC) and pushes the tag. Pure: this module names the tag from the repository's existing tag
names and the time; the builder runs git.

The seed's project `versioning` object holds `auto_tag_uat` (tag UAT releases; true),
`tag_format` (`v{version}-uat-{timestamp}`) and `prod_uses_uat_tags` (prod deploys the tag
UAT tested). It defines no prod tag: prod is a promotion of a tagged UAT release and records
that tag, so there is none here. The seed leaves `get_next_version` open; here the version is
the next patch of the highest version among the tags (any suffix: `v1.2.3`, `v1.2.3-rc1` and
`v1.2.3-uat-20250529-1430` all count), `0.1.0` when there is none. meshd adds `major` and
`minor`, set together, for the operator to choose the line: the version is then the next
patch of the highest tag of that line, `<major>.<minor>.0` when it has none (a new line starts
at patch 0; an older line set on purpose gets its own next patch). A tag is never moved: a
name that exists already (the same minute) gets `-2`, `-3` ...
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from protocol.errors import MeshError

UAT_TAG_FORMAT = "v{version}-uat-{timestamp}"
VERSION, TIMESTAMP = "{version}", "{timestamp}"
TIMESTAMP_FORMAT = "%Y%m%d-%H%M"
VERSIONING_KEYS = ("auto_tag_uat", "tag_format", "prod_uses_uat_tags", "major", "minor")
# What a tag may hold besides its version and time: enough for any scheme, and always a valid
# git ref name (git-check-ref-format(1)) without quoting in a shell.
TAG_TEXT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*\Z")


@dataclass(frozen=True, slots=True, order=True)
class Version:
    major: int
    minor: int
    patch: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"

    def next_patch(self) -> Version:
        return Version(self.major, self.minor, self.patch + 1)


FIRST_VERSION = Version(0, 1, 0)


class VersioningError(MeshError, ValueError):
    """A `versioning` setting that cannot be used; `key` names it, `reason` says what would
    be right."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"versioning.{key}: {reason}")


@dataclass(frozen=True, slots=True)
class Versioning:
    """How a project's UAT releases are tagged. `line` is the (major, minor) the operator
    set, None to follow the tags. Raises `VersioningError` when a value cannot be used."""

    auto_tag_uat: bool = True
    tag_format: str = UAT_TAG_FORMAT
    line: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        problem = _format_problem(self.tag_format)
        if problem:
            raise VersioningError("tag_format", problem)
        for key, number in zip(("major", "minor"), self.line or (), strict=False):
            if isinstance(number, bool) or not isinstance(number, int) or number < 0:
                raise VersioningError(key, f"expected a whole number from 0, got {number!r}")

    @property
    def prefix(self) -> str:
        """The text before the version: the tags that carry a version start with it."""
        return self.tag_format.partition(VERSION)[0]


def versioning_from_config(value: Mapping[str, Any] | None) -> Versioning:
    """The project's `versioning` object of the deployment config as settings; None gives
    the defaults. Raises `VersioningError` for the first key that cannot be used."""
    if not value:
        return Versioning()
    for key in value:
        if key not in VERSIONING_KEYS:
            raise VersioningError(key, f"unknown key; known: {', '.join(VERSIONING_KEYS)}")
    for key in ("auto_tag_uat", "prod_uses_uat_tags"):
        if not isinstance(value.get(key, True), bool):
            raise VersioningError(key, f"expected true or false, got {value[key]!r}")
    if value.get("prod_uses_uat_tags") is False:
        raise VersioningError(
            "prod_uses_uat_tags",
            "prod is deployed only by promoting a tagged UAT release (meshctl promote); "
            "remove the key or set it to true",
        )
    if ("major" in value) != ("minor" in value):
        missing = "minor" if "major" in value else "major"
        raise VersioningError(missing, "major and minor are set together, like 1 and 4")
    line = (value["major"], value["minor"]) if "major" in value else None
    tag_format = value.get("tag_format", UAT_TAG_FORMAT)
    if not isinstance(tag_format, str):
        raise VersioningError("tag_format", f"expected a string like {UAT_TAG_FORMAT!r}")
    return Versioning(value.get("auto_tag_uat", True), tag_format, line)


def version_of(tag: str, prefix: str = "v") -> Version | None:
    """The `<major>.<minor>.<patch>` right after `prefix` at the start of `tag`, whatever
    follows it; None when `tag` carries no version there."""
    found = re.match(re.escape(prefix) + r"([0-9]+)\.([0-9]+)\.([0-9]+)", tag)
    if found is None:
        return None
    major, minor, patch = (int(part) for part in found.groups())
    return Version(major, minor, patch)


def next_version(tags: Iterable[str], versioning: Versioning | None = None) -> Version:
    """The version of the next UAT tag given the repository's tag names (see the module
    docstring)."""
    settings = versioning or Versioning()
    versions = [v for tag in tags if (v := version_of(tag, settings.prefix)) is not None]
    if settings.line is not None:
        major, minor = settings.line
        versions = [v for v in versions if (v.major, v.minor) == (major, minor)]
        return max(versions).next_patch() if versions else Version(major, minor, 0)
    return max(versions).next_patch() if versions else FIRST_VERSION


def uat_tag(version: Version, at: float, tag_format: str = UAT_TAG_FORMAT) -> str:
    """The tag of `version` made at `at` (seconds since the epoch), in UTC."""
    stamp = datetime.fromtimestamp(at, UTC).strftime(TIMESTAMP_FORMAT)
    return tag_format.replace(VERSION, str(version)).replace(TIMESTAMP, stamp)


def unused_tag(name: str, existing: Iterable[str]) -> str:
    """`name`, or `name-2`, `name-3` ... whichever is not a tag yet: a tag is never moved."""
    taken = set(existing)
    candidate, suffix = name, 2
    while candidate in taken:
        candidate, suffix = f"{name}-{suffix}", suffix + 1
    return candidate


def next_uat_tag(tags: Iterable[str], at: float, versioning: Versioning | None = None) -> str:
    """The name of the tag for a UAT release that went live at `at`, given the repository's
    tag names: the next version (`next_version`), never an existing name."""
    settings = versioning or Versioning()
    existing = list(tags)
    version = next_version(existing, settings)
    return unused_tag(uat_tag(version, at, settings.tag_format), existing)


def _format_problem(tag_format: str) -> str | None:
    """Why `tag_format` cannot name tags, or None."""
    if tag_format.count(VERSION) != 1 or tag_format.count(TIMESTAMP) != 1:
        return f"{tag_format!r} needs {VERSION} and {TIMESTAMP} once each, like {UAT_TAG_FORMAT!r}"
    if tag_format.index(VERSION) > tag_format.index(TIMESTAMP):
        return f"{VERSION} comes before {TIMESTAMP}: the tags are found by the text before it"
    sample = tag_format.replace(VERSION, "0.1.0").replace(TIMESTAMP, "20250101-0000")
    if not TAG_TEXT.match(sample) or ".." in sample or sample.endswith((".", ".lock")):
        return (
            f"{tag_format!r} does not make a plain tag name; use letters, digits, '.', '_' "
            f"and '-' around the placeholders, like {UAT_TAG_FORMAT!r}"
        )
    return None
