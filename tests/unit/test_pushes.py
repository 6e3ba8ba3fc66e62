"""The post-receive hook's input: one pushed branch per `<old> <new> <ref>` line that moved a
branch (tags, deletions and other refs skipped), a malformed line refused by its number, and
the `git push -o` options read from the hook's environment."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshd.core.pushes import (
    PushedBranch,
    PushInputError,
    PushOptions,
    parse_post_receive,
    parse_push_options,
)

OLD = "28e1879d029cb852e4844d9c718537df08844e03"
NEW = "bffeb74224043ba2feb48d137756c8a9331c449a"
ZERO = "0" * 40
OLD256 = "a" * 64
NEW256 = "b" * 64
SHAS = st.from_regex(r"[0-9a-f]{40}", fullmatch=True)


def test_each_updated_branch_is_a_pushed_branch_in_gits_order() -> None:
    text = f"{OLD} {NEW} refs/heads/main\n{ZERO} {NEW} refs/heads/feature/x\n"
    assert parse_post_receive(text, pusher="ada") == (
        PushedBranch("main", NEW, OLD, "ada"),
        PushedBranch("feature/x", NEW, ZERO, "ada"),
    )
    main, feature = parse_post_receive(text)
    assert (main.ref, main.created, feature.created) == ("refs/heads/main", False, True)


@pytest.mark.parametrize(
    "line",
    [
        f"{ZERO} {NEW} refs/tags/v0.1.0-uat-20250529-1430",  # the builder's own tag push
        f"{OLD} {NEW} refs/tags/v1",
        f"{OLD} {ZERO} refs/heads/gone",  # a deletion: nothing to build
        f"{OLD} {NEW} refs/notes/commits",
        f"{OLD} {NEW} refs/remotes/origin/main",
        f"{OLD} {NEW} refs/heads/",
        f"{OLD} {NEW} HEAD",
    ],
)
def test_tags_deletions_and_other_refs_deploy_nothing(line: str) -> None:
    assert parse_post_receive(line + "\n") == ()


def test_sha256_repositories_are_read_too() -> None:
    (pushed,) = parse_post_receive(f"{OLD256} {NEW256} refs/heads/main\n")
    assert pushed.sha == NEW256


def test_a_push_of_nothing_is_no_branch() -> None:
    assert parse_post_receive("") == ()
    assert parse_post_receive("\n\n") == ()


def test_a_branch_name_keeps_what_git_allows_in_it() -> None:
    name = "caf\u00e9\u00a0x\u2028y"  # a no-break space and a line separator are legal
    (pushed,) = parse_post_receive(f"{OLD} {NEW} refs/heads/{name}\n")
    assert pushed.branch == name


@pytest.mark.parametrize(
    ("text", "line_number", "says"),
    [
        (f"{OLD} {NEW}", 1, "expected '<old-sha> <new-sha> <refname>'"),
        (f"{OLD} {NEW} refs/heads/main extra", 1, "expected"),
        (f"{OLD}  {NEW} refs/heads/main", 1, "expected"),  # two spaces: not git's output
        (f"{OLD} {NEW} refs/heads/a\n{OLD} {NEW[:-1]} refs/heads/b", 2, "new object name"),
        (f"{OLD.upper()} {NEW} refs/heads/main", 1, "old object name"),
        (f"{OLD[:-1]}g {NEW} refs/heads/main", 1, "40 or 64 lowercase hex digits"),
        (f"{OLD} {NEW256} refs/heads/main", 1, "SHA-1 and SHA-256 mixed"),
        ("\n\nnot-a-line", 3, "expected"),
        ("\n\nnot a line", 3, "the old object name 'not'"),
    ],
)
def test_a_malformed_line_is_refused_naming_it(text: str, line_number: int, says: str) -> None:
    with pytest.raises(PushInputError) as caught:
        parse_post_receive(text)
    assert caught.value.line_number == line_number
    assert says in str(caught.value)
    assert f"line {line_number} " in str(caught.value)


@given(st.lists(st.tuples(SHAS, SHAS, st.sampled_from(["heads", "tags"]), st.booleans())))
def test_every_branch_line_that_does_not_delete_is_kept_in_order(
    updates: list[tuple[str, str, str, bool]],
) -> None:
    lines = [
        f"{old} {ZERO if deleted else new} refs/{kind}/b{i}"
        for i, (old, new, kind, deleted) in enumerate(updates)
    ]
    expected = [
        (f"b{i}", new)
        for i, (_, new, kind, deleted) in enumerate(updates)
        if kind == "heads" and not deleted and set(new) != {"0"}
    ]
    pushed = parse_post_receive("\n".join(lines) + "\n")
    assert [(p.branch, p.sha) for p in pushed] == expected


# --- push options -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "options"),
    [
        ({}, PushOptions()),
        ({"GIT_PUSH_OPTION_COUNT": "0"}, PushOptions()),
        ({"GIT_PUSH_OPTION_COUNT": "1", "GIT_PUSH_OPTION_0": "nowait"}, PushOptions(True)),
        (
            {"GIT_PUSH_OPTION_COUNT": "2", "GIT_PUSH_OPTION_0": "ci.skip", "GIT_PUSH_OPTION_1": ""},
            PushOptions(False, ("ci.skip", "")),
        ),
        (
            {"GIT_PUSH_OPTION_COUNT": "2", "GIT_PUSH_OPTION_0": "x", "GIT_PUSH_OPTION_1": "nowait"},
            PushOptions(True, ("x",)),
        ),
        ({"GIT_PUSH_OPTION_0": "nowait"}, PushOptions()),  # no count: options not advertised
        (
            {"GIT_PUSH_OPTION_COUNT": "1", "GIT_PUSH_OPTION_0": "NOWAIT"},
            PushOptions(False, ("NOWAIT",)),
        ),
    ],
)
def test_push_options_come_from_the_hook_environment(
    environ: dict[str, str], options: PushOptions
) -> None:
    assert parse_push_options(environ) == options


@pytest.mark.parametrize(
    ("environ", "says"),
    [
        ({"GIT_PUSH_OPTION_COUNT": "two"}, "not a whole number"),
        ({"GIT_PUSH_OPTION_COUNT": "-1"}, "not a whole number"),
        ({"GIT_PUSH_OPTION_COUNT": "\u00b2"}, "not a whole number"),
        ({"GIT_PUSH_OPTION_COUNT": "2", "GIT_PUSH_OPTION_0": "nowait"}, "GIT_PUSH_OPTION_1"),
    ],
)
def test_push_options_that_git_would_not_set_are_refused(
    environ: dict[str, str], says: str
) -> None:
    with pytest.raises(PushInputError, match=says):
        parse_push_options(environ)
