"""The projects CSV: every bad file is refused with file, line and column; good files parse.

Most cases are data files in `tests/cases/csv/` with their expectations in
`tests/cases/csv_cases.json`; cases whose point is exact bytes (BOM, CRLF, UTF-16, invalid
UTF-8) are bytes literals here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.core.errors import InputErrors, InputIssue
from meshd.core.sizes import SIZES
from meshd.inputs.csvfile import MAX_PROJECT_NAME, MAX_SERVERS, ProjectRow, parse_projects_csv

CASES = Path(__file__).parents[1] / "cases"
CSV_CASES = CASES / "csv"
TABLE: dict[str, Any] = json.loads((CASES / "csv_cases.json").read_text(encoding="utf-8"))
HEADER = b"Project,Servers,MasterSpec,WebSpec"
ROW = b"myapp,1,s-1vcpu-1gb,s-1vcpu-1gb"
NAME_RULE = re.compile(r"[a-z][a-z0-9-]*\Z")


def issues_of(data: bytes, filename: str = "projects.csv") -> tuple[InputIssue, ...]:
    with pytest.raises(InputErrors) as caught:
        parse_projects_csv(data, filename)
    return caught.value.issues


def assert_issues(issues: tuple[InputIssue, ...], filename: str, expected: list[Any]) -> None:
    """Issues match `expected` ({"line", "says": [fragments]}) one to one, in order."""
    found = [(issue.where, issue.message) for issue in issues]
    assert len(issues) == len(expected), found
    for issue, want in zip(issues, expected, strict=True):
        assert issue.file == filename
        assert issue.where == want["line"], found
        for fragment in want["says"]:
            assert fragment in issue.message, (fragment, issue.message)


# --- the data-file table ------------------------------------------------------------------


def test_every_csv_case_file_has_an_expectation_and_every_expectation_a_file() -> None:
    files = {path.name for path in CSV_CASES.glob("*.csv")}
    assert files == set(TABLE["refused"]) | set(TABLE["accepted"])
    assert not set(TABLE["refused"]) & set(TABLE["accepted"])


@pytest.mark.parametrize("case", sorted(TABLE["refused"]), ids=lambda c: c.removesuffix(".csv"))
def test_parser_refuses_bad_csv_naming_file_line_and_problem(case: str) -> None:
    filename = f"cases/csv/{case}"
    issues = issues_of((CSV_CASES / case).read_bytes(), filename)
    assert_issues(issues, filename, TABLE["refused"][case])


@pytest.mark.parametrize("case", sorted(TABLE["accepted"]), ids=lambda c: c.removesuffix(".csv"))
def test_parser_accepts_good_csv_with_the_rows_and_their_lines(case: str) -> None:
    rows = parse_projects_csv((CSV_CASES / case).read_bytes(), case)
    expected = [
        ProjectRow(r["name"], r["servers"], r["master"], r["web"], r["line"])
        for r in TABLE["accepted"][case]
    ]
    assert list(rows) == expected


# --- cases about exact bytes --------------------------------------------------------------


def test_parser_accepts_utf8_bom_and_crlf_line_ends() -> None:
    data = b"\xef\xbb\xbf" + HEADER + b"\r\n" + ROW + b"\r\nother,2,s-2vcpu-4gb,s-1vcpu-1gb\r\n"
    rows = parse_projects_csv(data, "excel.csv")
    assert [(r.name, r.servers, r.web_size, r.line) for r in rows] == [
        ("myapp", 1, "s-1vcpu-1gb", 2),
        ("other", 2, "s-1vcpu-1gb", 3),
    ]


def test_parser_counts_lines_right_with_crlf_blank_lines_and_comments() -> None:
    data = HEADER + b"\r\n\r\n# note\r\n" + ROW + b"\r\n\r\nbad,0,s-1vcpu-1gb,s-1vcpu-1gb\r\n"
    (issue,) = issues_of(data)
    assert issue.where == "6"
    assert "column 2 (Servers)" in issue.message


def test_crlf_inside_a_quoted_field_does_not_shift_later_line_numbers() -> None:
    data = HEADER + b'\r\n"myapp\r\n",1,s-1vcpu-1gb,s-1vcpu-1gb\r\nx-,0,s-1vcpu-1gb,s-1vcpu-1gb\r\n'
    (issue,) = issues_of(data)
    assert issue.where == "4"
    assert "column 2 (Servers)" in issue.message


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-le", "utf-16-be"])
def test_parser_refuses_utf16_file_with_a_bom_and_says_to_save_as_utf8(codec: str) -> None:
    text = (HEADER + b"\r\n" + ROW + b"\r\n").decode()
    data = text.encode(codec)
    if codec != "utf-16":  # the -le/-be codecs write no BOM; Excel's "Unicode text" does
        data = ("\ufeff" + text).encode(codec)
    (issue,) = issues_of(data, "excel.csv")
    assert (issue.file, issue.where) == ("excel.csv", "1")
    assert "UTF-16" in issue.message
    assert "UTF-8" in issue.message


def test_parser_refuses_invalid_utf8_naming_the_line_of_the_bad_byte() -> None:
    data = HEADER + b"\n" + ROW + b"\ncaf\xe9,1,s-1vcpu-1gb,s-1vcpu-1gb\n"
    (issue,) = issues_of(data, "latin1.csv")
    assert (issue.file, issue.where) == ("latin1.csv", "3")
    assert "UTF-8" in issue.message


def test_parser_refuses_bom_only_file_as_missing_header() -> None:
    (issue,) = issues_of(b"\xef\xbb\xbf")
    assert issue.where == "1"
    assert "missing header" in issue.message


def test_parser_refuses_a_whitespace_only_file_as_missing_header() -> None:
    (issue,) = issues_of(b"  \r\n\t\n\n")
    assert issue.where == "1"
    assert "missing header" in issue.message


@pytest.mark.parametrize("slug", sorted(SIZES))
def test_parser_accepts_every_size_slug_of_the_table(slug: str) -> None:
    data = HEADER + f"\nmyapp,2,{slug},{slug}\n".encode()
    (row,) = parse_projects_csv(data, "projects.csv")
    assert (row.master_size, row.web_size) == (slug, slug)


@pytest.mark.parametrize("slug", ["s-1vcpu-1gbb", "s-2cpu-4gb", "S-8VCPU-16GB", "large", "c2"])
def test_unknown_size_slug_suggests_only_real_slugs(slug: str) -> None:
    (issue,) = issues_of(HEADER + f"\nmyapp,1,s-1vcpu-1gb,{slug}\n".encode())
    assert issue.where == "2"
    assert "column 4 (WebSpec)" in issue.message
    suggestions = issue.message.rsplit("did you mean ", 1)[1].rstrip("?").split(", ")
    assert suggestions
    assert all(s in SIZES for s in suggestions), suggestions


def test_unknown_size_slug_suggests_the_closest_slug_first() -> None:
    (issue,) = issues_of(HEADER + b"\nmyapp,1,s-2vcpu-4gbb,s-1vcpu-1gb\n")
    assert "did you mean s-2vcpu-4gb," in issue.message


def test_parser_reports_the_problems_of_every_row_not_only_the_first() -> None:
    rows = b"".join(f"p{i},0,s-1vcpu-1gb,s-1vcpu-1gb\n".encode() for i in range(5))
    issues = issues_of(HEADER + b"\n" + rows)
    assert [i.where for i in issues] == ["2", "3", "4", "5", "6"]


def test_a_file_with_any_problem_yields_no_rows_at_all() -> None:
    with pytest.raises(InputErrors):
        parse_projects_csv(HEADER + b"\n" + ROW + b"\nbad_name,1,s-1vcpu-1gb,s-1vcpu-1gb\n", "p")


def test_every_issue_prints_as_one_line_of_file_line_and_message() -> None:
    data = HEADER + b'\n"a\nb",1,s-1vcpu-1gb,s-1vcpu-1gb\n"x\ny",1,"s\n1",s-1vcpu-1gb\n'
    for issue in issues_of(data, "projects.csv"):
        text = str(issue)
        assert "\n" not in text
        assert text.startswith(f"projects.csv:{issue.where}: ")


def test_comment_line_with_a_quote_does_not_swallow_the_rows_after_it() -> None:
    data = HEADER + b'\n# old,"\nkept,1,s-1vcpu-1gb,s-1vcpu-1gb\n# "\n' + ROW + b"\n"
    rows = parse_projects_csv(data, "projects.csv")
    assert [(r.name, r.line) for r in rows] == [("kept", 3), ("myapp", 5)]


# --- properties -----------------------------------------------------------------------------


def assert_well_formed(issues: tuple[InputIssue, ...], filename: str) -> None:
    assert issues
    for issue in issues:
        assert issue.file == filename
        assert issue.where.isdigit() and int(issue.where) >= 1
        assert issue.message and "\n" not in str(issue)


def assert_rows_follow_the_rules(rows: tuple[ProjectRow, ...]) -> None:
    assert rows, "an empty CSV must be refused"
    names = [row.name for row in rows]
    assert len(set(names)) == len(names)
    for row in rows:
        assert NAME_RULE.match(row.name) and len(row.name) <= MAX_PROJECT_NAME
        assert 1 <= row.servers <= MAX_SERVERS
        assert row.master_size in SIZES and row.web_size in SIZES
        assert row.line >= 2
    assert [row.line for row in rows] == sorted({row.line for row in rows})


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_give_rows_or_input_errors_only(data: bytes) -> None:
    try:
        rows = parse_projects_csv(data, "fuzz.csv")
    except InputErrors as err:
        assert_well_formed(err.issues, "fuzz.csv")
    else:
        assert_rows_follow_the_rules(rows)


NAMES = ["web", "my-app", "a", "a" * 30, "a" * 31, "A", "MyApp", "1app", "my_app", "", " web "]
NAMES += ["é", "a b", "-x", "x-", "#c", '"q"']
SLUGS = [*list(SIZES)[:6], "c-2", "s-1vcpu-1gbb", "S-1VCPU-1GB", "", " s-1vcpu-1gb ", "large"]
NUMBERS = ["0", "1", "2", "20", "21", "-1", "1.5", "two", "\uff13", "007", "", " 3 ", "1e1"]
PUNCTUATION = [",", ";", '"', "#", "\r\n", "\n", "\r", " ", "\t", "\ufeff", "\x00", '""']
HEADERS = ["Project,Servers,MasterSpec,WebSpec", "project,servers,masterspec,webspec"]
HEADERS += ["Project;Servers;MasterSpec;WebSpec", "Project,Servers,MasterSpec", ""]
TOKENS = NAMES + SLUGS + NUMBERS + PUNCTUATION + HEADERS


def field(choices: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(choices), st.sampled_from(choices).map(lambda s: f'"{s}"'))


GOOD_ROW = st.tuples(
    st.from_regex(r"[a-z][a-z0-9-]{0,29}", fullmatch=True),
    st.integers(1, MAX_SERVERS).map(str),
    st.sampled_from(list(SIZES)),
    st.sampled_from(list(SIZES)),
).map(",".join)
ANY_ROW = st.tuples(field(NAMES), field(NUMBERS), field(SLUGS), field(SLUGS)).map(",".join)
ODD_LINES = st.sampled_from(["", "# comment", "  ", "\t", ",,,", "x,1", "a,1,c-2,c-4,extra"])
SOUP = st.lists(st.sampled_from(TOKENS), max_size=8).map("".join)
CSV_TEXT = st.builds(
    lambda bom, header, rows, end: bom + header + end + end.join(rows),
    st.sampled_from(["", "\ufeff"]),
    st.sampled_from([HEADERS[0], HEADERS[0], HEADERS[0], *HEADERS]),
    st.lists(st.one_of(*[GOOD_ROW] * 6, ODD_LINES, ANY_ROW, SOUP), max_size=8),
    st.sampled_from(["\n", "\r\n"]),
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(CSV_TEXT, CSV_TEXT, CSV_TEXT, st.lists(st.sampled_from(TOKENS)).map("".join)))
def test_csvish_text_gives_valid_rows_or_input_errors_only(text: str) -> None:
    try:
        rows = parse_projects_csv(text.encode(), "fuzz.csv")
    except InputErrors as err:
        assert_well_formed(err.issues, "fuzz.csv")
    else:
        assert_rows_follow_the_rules(rows)


GOOD_FIELDS = st.tuples(
    st.from_regex(r"[a-z][a-z0-9-]{0,29}", fullmatch=True),
    st.integers(1, MAX_SERVERS),
    st.sampled_from(sorted(SIZES)),
    st.sampled_from(sorted(SIZES)),
)


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(GOOD_FIELDS, min_size=1, max_size=6, unique_by=lambda r: r[0]),
    fillers=st.lists(st.sampled_from(["", "# note", "  ", ",,,", " # x, y"]), max_size=6),
    pad=st.sampled_from(["", " ", "\t", "  "]),
    end=st.sampled_from(["\n", "\r\n"]),
    bom=st.booleans(),
)
def test_valid_rows_between_blank_and_comment_lines_parse_with_their_line_numbers(
    rows: list[tuple[str, int, str, str]], fillers: list[str], pad: str, end: str, bom: bool
) -> None:
    lines = ["Project,Servers,MasterSpec,WebSpec"]
    expected = []
    for i, (name, servers, master, web) in enumerate(rows):
        if i < len(fillers):
            lines.append(fillers[i])
        fields = (name, str(servers), master, web)
        lines.append(",".join(f"{pad}{f}{pad}" for f in fields))
        expected.append(ProjectRow(name, servers, master, web, len(lines)))
    data = ("\ufeff" if bom else "") + end.join(lines) + end
    assert list(parse_projects_csv(data.encode(), "projects.csv")) == expected
