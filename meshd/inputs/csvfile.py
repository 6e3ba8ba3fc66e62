"""Reading `projects.csv` (`Project,Servers,MasterSpec,WebSpec`) into validated rows.

Every problem of a file is collected and reported at once, each naming file, line and
column; a file with any problem yields no rows at all, so nothing partial is ever published.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass

from meshd.core.errors import InputErrors, InputIssue
from meshd.core.sizes import SIZES, suggest_sizes

HEADER: tuple[str, ...] = ("Project", "Servers", "MasterSpec", "WebSpec")
MAX_PROJECT_NAME = 30
MAX_SERVERS = 20
PROJECT_NAME = re.compile(r"[a-z][a-z0-9-]*\Z")
INTEGER = re.compile(r"[0-9]+\Z")
EXAMPLE_ROW = "myapp,1,s-1vcpu-1gb,s-1vcpu-1gb"


@dataclass(frozen=True, slots=True)
class ProjectRow:
    name: str
    servers: int
    master_size: str
    web_size: str
    line: int


def parse_projects_csv(data: bytes, filename: str) -> tuple[ProjectRow, ...]:
    """Rows of a projects CSV; raises `InputErrors` listing every problem found."""
    text = _decode(data, filename)
    issues: list[InputIssue] = []
    rows: list[ProjectRow] = []
    first_line: dict[str, int] = {}
    header_line = 0
    for line, fields in _records(text, filename):
        if not header_line:
            header_line = line
            header_issues = _check_header(fields, filename, line)
            if header_issues:
                raise InputErrors(header_issues)
            continue
        row_issues, row = _parse_row(fields, filename, line)
        issues += row_issues
        if row is None:
            continue
        if row.name in first_line:
            issues.append(
                _issue(
                    filename,
                    line,
                    1,
                    f"project {row.name!r} is already defined on line "
                    f"{first_line[row.name]}; project names must be unique",
                )
            )
            continue
        first_line[row.name] = line
        rows.append(row)
    if not header_line:
        issues.append(
            InputIssue(filename, "1", f"missing header: the first line must be {','.join(HEADER)}")
        )
    elif not rows and not issues:
        issues.append(
            InputIssue(
                filename,
                str(header_line),
                "no projects: publishing an empty list would destroy every droplet; "
                f"add at least one row like {EXAMPLE_ROW!r}",
            )
        )
    if issues:
        raise InputErrors(issues)
    return tuple(rows)


def _decode(data: bytes, filename: str) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")):
        raise InputErrors(
            [InputIssue(filename, "1", 'file is UTF-16 or UTF-32; save it as UTF-8 ("CSV UTF-8")')]
        )
    if b"\x00" in data:
        line = data[: data.index(b"\x00")].count(b"\n") + 1
        raise InputErrors(
            [
                InputIssue(
                    filename,
                    str(line),
                    "contains NUL bytes (UTF-16 without a byte-order mark?); save it as UTF-8",
                )
            ]
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise InputErrors(
            [InputIssue(filename, str(line), "not valid UTF-8 text; save the file as UTF-8")]
        ) from None


def _records(text: str, filename: str) -> list[tuple[int, list[str]]]:
    """Non-blank, non-comment records with the line each starts on.

    Physical lines are grouped into records first (a record ends where its quotes balance), so
    that a `#` line is a comment up to its own line end whatever quotes it contains.
    """
    records: list[tuple[int, list[str]]] = []
    pending: list[str] = []
    start = 0
    for number, line in enumerate(io.StringIO(text, newline=""), start=1):
        if not pending:
            if line.lstrip().startswith("#"):
                continue
            start = number
        pending.append(line)
        if sum(part.count('"') for part in pending) % 2:
            continue
        fields = _parse_record("".join(pending), filename, start)
        pending = []
        if any(f.strip() for f in fields):
            records.append((start, fields))
    if pending:
        raise InputErrors(
            [InputIssue(filename, str(start), "a quoted field starts here and never ends")]
        )
    return records


def _parse_record(record: str, filename: str, line: int) -> list[str]:
    try:
        rows = list(csv.reader(io.StringIO(record, newline=""), strict=True))
    except csv.Error as err:
        raise InputErrors(
            [InputIssue(filename, str(line), f"not a valid CSV line: {err}")]
        ) from None
    return rows[0] if rows else []


def _check_header(fields: list[str], filename: str, line: int) -> list[InputIssue]:
    names = [f.strip() for f in fields]
    if [n.lower() for n in names] == [h.lower() for h in HEADER]:
        return []
    if len(names) == 1 and any(sep in names[0] for sep in ";\t|"):
        sep = next(s for s in ";\t|" if s in names[0])
        return [
            InputIssue(
                filename,
                str(line),
                f"fields are separated by {sep!r}; use commas: {','.join(HEADER)}",
            )
        ]
    known = {h.lower() for h in HEADER}
    missing = [h for h in HEADER if h.lower() not in {n.lower() for n in names}]
    unknown = [n for n in names if n.lower() not in known]
    detail = []
    if missing:
        detail.append("missing " + ", ".join(missing))
    if unknown:
        detail.append("unknown " + ", ".join(repr(u) for u in unknown))
    if not detail:
        detail.append("columns in the wrong order")
    return [
        InputIssue(
            filename,
            str(line),
            f"wrong header ({'; '.join(detail)}); the first line must be {','.join(HEADER)}",
        )
    ]


def _parse_row(
    fields: list[str], filename: str, line: int
) -> tuple[list[InputIssue], ProjectRow | None]:
    if len(fields) != len(HEADER):
        return [
            InputIssue(
                filename,
                str(line),
                f"expected {len(HEADER)} fields ({','.join(HEADER)}), found {len(fields)}",
            )
        ], None
    name, servers_text, master, web = (f.strip() for f in fields)
    issues = [
        issue
        for issue in (
            _check_name(name, filename, line),
            _check_servers(servers_text, filename, line),
            _check_size(master, filename, line, 3),
            _check_size(web, filename, line, 4),
        )
        if issue is not None
    ]
    if issues:
        return issues, None
    return [], ProjectRow(name, int(servers_text), master, web, line)


def _issue(filename: str, line: int, column: int, message: str) -> InputIssue:
    return InputIssue(filename, str(line), f"column {column} ({HEADER[column - 1]}): {message}")


def _check_name(name: str, filename: str, line: int) -> InputIssue | None:
    rule = (
        f"a lowercase name of letters, digits and '-', starting with a letter, at most "
        f"{MAX_PROJECT_NAME} characters"
    )
    if not name:
        return _issue(filename, line, 1, f"empty; expected {rule}")
    if len(name) > MAX_PROJECT_NAME:
        return _issue(
            filename, line, 1, f"{name[:40]!r} is {len(name)} characters; expected {rule}"
        )
    if not PROJECT_NAME.match(name):
        suggestion = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
        hint = f" (like {suggestion!r})" if PROJECT_NAME.match(suggestion) else ""
        return _issue(
            filename, line, 1, f"{name!r} is not a valid project name; expected {rule}{hint}"
        )
    return None


def _check_servers(text: str, filename: str, line: int) -> InputIssue | None:
    expected = f"expected a whole number from 1 to {MAX_SERVERS}"
    if not text:
        return _issue(filename, line, 2, f"empty; {expected}")
    if not INTEGER.match(text):
        return _issue(filename, line, 2, f"{text!r} is not a server count; {expected}")
    # Length first: int() refuses strings of thousands of digits.
    digits = text.lstrip("0") or "0"
    if len(digits) > 3 or not 1 <= int(digits) <= MAX_SERVERS:
        return _issue(filename, line, 2, f"{text[:10]!r} is out of range; {expected}")
    return None


def _check_size(slug: str, filename: str, line: int, column: int) -> InputIssue | None:
    if slug in SIZES:
        return None
    if not slug:
        return _issue(
            filename, line, column, "empty; expected a DigitalOcean size slug like s-1vcpu-1gb"
        )
    hint = ", ".join(suggest_sizes(slug))
    return _issue(
        filename, line, column, f"{slug!r} is not a DigitalOcean size slug; did you mean {hint}?"
    )
