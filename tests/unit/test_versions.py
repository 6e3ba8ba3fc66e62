"""The UAT version tag: `v<major>.<minor>.<patch>-uat-<YYYYmmdd>-<HHMM>` in UTC, the next patch
of the highest version among the repository's tags (0.1.0 first), or of the line the
operator set in `versioning`; never the name of an existing tag."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshd.core.versions import (
    FIRST_VERSION,
    Version,
    Versioning,
    VersioningError,
    next_uat_tag,
    next_version,
    uat_tag,
    unused_tag,
    version_of,
    versioning_from_config,
)

AT = datetime(2025, 5, 29, 14, 30, 59, tzinfo=UTC).timestamp()


def test_the_first_tag_of_a_repository_is_0_1_0_with_the_utc_minute() -> None:
    assert next_uat_tag([], AT) == "v0.1.0-uat-20250529-1430"


def test_the_time_is_utc_whatever_the_zone_it_was_read_in() -> None:
    local = datetime(2025, 5, 29, 16, 30, tzinfo=timezone(timedelta(hours=2)))
    assert uat_tag(Version(1, 2, 3), local.timestamp()) == "v1.2.3-uat-20250529-1430"


@pytest.mark.parametrize(
    ("tags", "version"),
    [
        ([], "0.1.0"),
        (["v1.2.3-uat-20250529-1430"], "1.2.4"),
        (["v1.2.3"], "1.2.4"),  # a hand-made release tag counts
        (["v1.2.3-rc1", "v1.2.2"], "1.2.4"),  # any suffix
        (["v1.9.0", "v1.10.0"], "1.10.1"),  # numbers, not text
        (["v2.0.0", "v10.0.0-uat-20240101-0000"], "10.0.1"),
        (["v1.2.3.4"], "1.2.4"),
        (["release-5", "latest", "1.2.3", "V1.2.3", "vx.y.z", "v1.2"], "0.1.0"),  # no version
        (["v0.1.0-uat-20250529-1430", "v0.1.0-uat-20250529-1430-2"], "0.1.1"),
    ],
)
def test_the_version_is_the_next_patch_of_the_highest_tagged(tags: list[str], version: str) -> None:
    assert str(next_version(tags)) == version


@pytest.mark.parametrize(
    ("tags", "line", "version"),
    [
        (["v1.4.7"], (2, 0), "2.0.0"),  # a line above the latest starts at patch 0
        (["v1.4.7"], (1, 5), "1.5.0"),
        (["v1.4.7", "v1.4.2"], (1, 4), "1.4.8"),  # the latest line goes on
        ([], (3, 1), "3.1.0"),
        (["v2.0.3", "v1.4.7"], (1, 4), "1.4.8"),  # an older line set on purpose goes on too
        (["v2.0.3"], (0, 0), "0.0.0"),
    ],
)
def test_a_line_the_operator_sets_gives_its_next_patch(
    tags: list[str], line: tuple[int, int], version: str
) -> None:
    assert str(next_version(tags, Versioning(line=line))) == version


def test_a_name_that_exists_gets_the_next_free_suffix() -> None:
    name = "v0.1.1-uat-20250529-1430"
    assert unused_tag(name, []) == name
    assert unused_tag(name, [name]) == name + "-2"
    assert unused_tag(name, [name, name + "-2", name + "-3"]) == name + "-4"


@given(
    st.lists(
        st.builds(
            lambda v, suffix: f"v{v[0]}.{v[1]}.{v[2]}{suffix}",
            st.tuples(st.integers(0, 30), st.integers(0, 30), st.integers(0, 30)),
            st.sampled_from(["", "-uat-20250529-1430", "-uat-20250529-1430-2", "-rc1"]),
        )
        | st.text(max_size=12),
        max_size=20,
    ),
    st.integers(0, 4_000_000_000),
    st.none() | st.tuples(st.integers(0, 30), st.integers(0, 30)),
)
def test_the_new_tag_is_never_one_that_exists_and_is_above_its_line(
    tags: list[str], at: int, line: tuple[int, int] | None
) -> None:
    settings = Versioning(line=line)
    tag = next_uat_tag(tags, at, settings)
    assert tag not in tags
    version = version_of(tag)
    assert version is not None
    found = [v for t in tags if (v := version_of(t)) is not None]
    same_line = [v for v in found if line is None or (v.major, v.minor) == line]
    assert all(version > v for v in same_line)
    if not same_line:
        assert version == (FIRST_VERSION if line is None else Version(*line, 0))


def test_the_seeds_tag_format_is_the_default() -> None:
    seed = {"auto_tag_uat": True, "tag_format": "v{version}-uat-{timestamp}",
            "prod_uses_uat_tags": True}  # fmt: skip
    assert versioning_from_config(seed) == Versioning()
    assert versioning_from_config(None) == Versioning()
    assert versioning_from_config({"auto_tag_uat": False}).auto_tag_uat is False


def test_a_custom_format_names_and_finds_its_own_tags() -> None:
    settings = versioning_from_config({"tag_format": "shop-{version}-uat.{timestamp}"})
    tags = ["shop-0.3.9-uat.20250101-0000", "v9.9.9", "shop-0.2.0"]
    assert next_uat_tag(tags, AT, settings) == "shop-0.3.10-uat.20250529-1430"


def test_major_and_minor_from_the_config_set_the_line() -> None:
    settings = versioning_from_config({"auto_tag_uat": True, "major": 2, "minor": 1})
    assert settings.line == (2, 1)
    assert next_uat_tag(["v1.9.9-uat-20250101-0000"], AT, settings) == "v2.1.0-uat-20250529-1430"


@pytest.mark.parametrize(
    ("value", "key", "says"),
    [
        ({"tag_fromat": "x"}, "tag_fromat", "unknown key"),
        ({"auto_tag_uat": "yes"}, "auto_tag_uat", "true or false"),
        ({"prod_uses_uat_tags": False}, "prod_uses_uat_tags", "meshctl promote"),
        ({"major": 1}, "minor", "set together"),
        ({"minor": 1}, "major", "set together"),
        ({"major": -1, "minor": 0}, "major", "whole number from 0"),
        ({"major": 1, "minor": 1.5}, "minor", "whole number"),
        ({"major": True, "minor": 0}, "major", "whole number"),
        ({"tag_format": 3}, "tag_format", "a string"),
        ({"tag_format": "v{version}"}, "tag_format", "once each"),
        ({"tag_format": "{timestamp}-{version}"}, "tag_format", "comes before"),
        ({"tag_format": "v{version}-{timestamp}-{version}"}, "tag_format", "once each"),
        ({"tag_format": "v{version} uat {timestamp}"}, "tag_format", "plain tag name"),
        ({"tag_format": "v{version}-{timestamp}-{env}"}, "tag_format", "plain tag name"),
        ({"tag_format": "-v{version}-{timestamp}"}, "tag_format", "plain tag name"),
        ({"tag_format": "v{version}..{timestamp}"}, "tag_format", "plain tag name"),
        ({"tag_format": "v{version}-{timestamp}.lock"}, "tag_format", "plain tag name"),
    ],
)
def test_versioning_that_cannot_be_used_is_refused_naming_the_key(
    value: dict[str, Any], key: str, says: str
) -> None:
    with pytest.raises(VersioningError) as caught:
        versioning_from_config(value)
    assert caught.value.key == key
    assert says in str(caught.value)
    assert str(caught.value).startswith(f"versioning.{key}: ")
