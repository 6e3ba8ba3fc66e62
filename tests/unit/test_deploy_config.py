"""The deployment config: bad configs are refused with their JSON path, good ones merge the
default services, and a config naming a project the CSV lacks is refused.

The bad configs are a table in `tests/cases/deploy_config_cases.json`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.core.errors import InputErrors, InputIssue
from meshd.core.spec import (
    DEFAULT_SERVICES,
    ENVIRONMENTS,
    BackupSchedule,
    DesiredState,
    ServiceKind,
)
from meshd.inputs import load_desired_state
from meshd.inputs.csvfile import ProjectRow
from meshd.inputs.deploy_config import (
    MEMORY_RANGE,
    PLATFORMS,
    SECRET_NAME,
    SERVICE_KEYS,
    DeployConfig,
    parse_deploy_config,
)
from meshd.inputs.merge import build_desired_state
from plugins.runtimes import builtin_datastore

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_CONFIG = ROOT / "examples" / "seed" / "deployment_config.json"
EXAMPLE_CSV = ROOT / "examples" / "projects.csv"
TABLE: dict[str, Any] = json.loads(
    (Path(__file__).parents[1] / "cases" / "deploy_config_cases.json").read_text(encoding="utf-8")
)
FILENAME = "deployment_config.json"
DEFAULT_NAMES = list(DEFAULT_SERVICES)


def parse(config: Any) -> DeployConfig:
    return parse_deploy_config(json.dumps(config).encode(), FILENAME)


def issues_of(data: bytes) -> tuple[InputIssue, ...]:
    with pytest.raises(InputErrors) as caught:
        parse_deploy_config(data, FILENAME)
    return caught.value.issues


def row(name: str, servers: int = 1) -> ProjectRow:
    return ProjectRow(name, servers, "s-1vcpu-1gb", "s-1vcpu-1gb", 2)


# --- refused configs ----------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(TABLE["refused"]))
def test_config_refuses_bad_input_naming_file_json_path_and_problem(case: str) -> None:
    spec = TABLE["refused"][case]
    text = spec["text"] if "text" in spec else json.dumps(spec["config"], indent=2)
    issues = issues_of(text.encode())
    found = [(issue.where, issue.message) for issue in issues]
    assert len(issues) == len(spec["issues"]), found
    for issue, want in zip(issues, spec["issues"], strict=True):
        assert issue.file == FILENAME
        assert issue.where == want["at"], found
        for fragment in want["says"]:
            assert fragment in issue.message, (fragment, issue.message)


def test_config_refuses_invalid_utf8() -> None:
    (issue,) = issues_of(b'{"projects": {"caf\xe9": {}}}')
    assert issue.where == "1:1"
    assert "UTF-8" in issue.message


def test_config_reports_a_duplicate_key_inside_a_nested_object() -> None:
    issues = issues_of(b'{"projects": {"web": {"services": {"worker": {}, "worker": {}}}}}')
    assert [i.message for i in issues if "'worker'" in i.message and "twice" in i.message]


def test_every_config_issue_prints_as_one_line() -> None:
    config = {"projects": {"web\nsite": {"services": {"a\nb": {}, "w": {"secrets": ["x\ny"]}}}}}
    for issue in issues_of(json.dumps(config).encode()):
        assert "\n" not in str(issue)


# --- accepted configs ---------------------------------------------------------------------


def test_demo_deployment_config_runs_every_service_on_either_runtime() -> None:
    demo = ROOT / "examples" / "deployment_config.json"
    config = parse_deploy_config(demo.read_bytes(), str(demo))
    assert config.platform == "docker"
    services = [s for p in config.projects.values() for s in p.services]
    # The datastores are the built-in PostgreSQL and Redis on either runtime (a Docker mesh
    # runs them apart, as the host's own: `up --datastores`); the rest is built from app/.
    assert all(s.build_context == "app" for s in services if not s.kind.is_datastore)
    assert all(s.uses_template for s in services if s.kind.is_datastore)
    # The process runtime runs each in its build context (examples/app, or a deploy's
    # build), but for the datastores: the host's own PostgreSQL and Redis.
    for service in services:
        runs = SimpleNamespace(
            service_kind=service.kind.value,
            image=service.image,
            build_context=service.build_context,
            command=service.command,
            process_command=service.process_command,
        )
        builtin = builtin_datastore("process", runs)
        if service.kind.is_datastore:
            assert builtin == service.kind
        else:
            assert service.process_command and service.process_command.startswith(
                "python3 hello.py"
            )
    # Their repositories are on this disk (make demo makes them), never outside.
    assert {p.git_repo for p in config.projects.values()} == {
        "../.demo/hostomatic.git", "../.demo/digitalpixo.git", None}  # fmt: skip
    # Only the secrets the mesh generates: nothing to set up before the demo runs.
    assert {name for s in services for name in s.secrets} == {"db_password", "redis_password"}


def test_seed_deployment_config_parses() -> None:
    config = parse_deploy_config(EXAMPLE_CONFIG.read_bytes(), str(EXAMPLE_CONFIG))
    assert config.platform == "docker"
    assert list(config.projects) == ["hostomatic", "digitalpixo"]
    hostomatic = config.projects["hostomatic"]
    names = [s.name for s in hostomatic.services]
    assert names == [*DEFAULT_NAMES, "worker_email", "worker_reports", "scheduler"]
    backend = next(s for s in hostomatic.services if s.name == "backend")
    assert (backend.kind, backend.memory_mb, backend.health_path) == (
        ServiceKind.WEB,
        256,
        "/health",
    )
    assert backend.secrets[0] == "db_password"
    email = next(s for s in hostomatic.services if s.name == "worker_email")
    assert (email.kind, email.health_path, email.command) == (
        ServiceKind.WORKER,
        None,
        "python email_processor.py",
    )
    assert hostomatic.domains == {
        "prod": ("hostomatic.com", "www.hostomatic.com"),
        "uat": ("uat.hostomatic.com",),
    }
    assert [s.name for s in config.projects["digitalpixo"].services] == DEFAULT_NAMES


def test_example_config_and_csv_load_into_one_desired_state() -> None:
    state = load_desired_state(EXAMPLE_CSV, EXAMPLE_CONFIG)
    assert [p.name for p in state.projects] == ["digitalpixo", "hostomatic", "newstartup"]
    assert [s.name for s in state.project("newstartup").services] == DEFAULT_NAMES


def test_an_empty_config_has_the_docker_platform_and_no_projects() -> None:
    assert parse({}) == DeployConfig()


def test_config_accepts_a_utf8_bom() -> None:
    config = parse_deploy_config(b'\xef\xbb\xbf{"deployment_platform": "process"}', FILENAME)
    assert config.platform == "process"


def test_services_of_a_project_listing_only_workers_keep_the_four_defaults() -> None:
    config = parse({"projects": {"web": {"services": {"mailer": {"command": "python m.py"}}}}})
    services = config.projects["web"].services
    assert [s.name for s in services] == [*DEFAULT_NAMES, "mailer"]
    for service in services[:4]:
        kind, memory = DEFAULT_SERVICES[service.name]
        assert (service.kind, service.memory_mb) == (kind, memory)
    assert (services[4].kind, services[4].memory_mb, services[4].health_path) == (
        ServiceKind.WORKER,
        32,
        None,
    )


def test_a_listed_default_service_overrides_only_what_it_sets() -> None:
    config = parse({"projects": {"web": {"services": {"frontend": {"memory_mb": 128}}}}})
    frontend = config.projects["web"].services[1]
    assert (frontend.name, frontend.kind, frontend.memory_mb) == ("frontend", ServiceKind.WEB, 128)
    assert frontend.health_path == "/health"


def test_enabled_false_removes_a_default_service() -> None:
    config = parse({"projects": {"web": {"services": {"redis": {"enabled": False}}}}})
    assert [s.name for s in config.projects["web"].services] == ["backend", "frontend", "database"]


def test_enabled_false_on_a_worker_leaves_it_out() -> None:
    config = parse({"projects": {"web": {"services": {"cron": {"enabled": False}}}}})
    assert [s.name for s in config.projects["web"].services] == DEFAULT_NAMES


def test_declaring_the_type_a_service_has_anyway_is_accepted() -> None:
    services = {"backend": {"type": "web"}, "redis": {"type": "redis"}, "job": {"type": "worker"}}
    config = parse({"projects": {"web": {"services": services}}})
    kinds = {s.name: s.kind for s in config.projects["web"].services}
    assert kinds["backend"] is ServiceKind.WEB
    assert kinds["redis"] is ServiceKind.REDIS
    assert kinds["job"] is ServiceKind.WORKER


@pytest.mark.parametrize("memory", [MEMORY_RANGE[0], MEMORY_RANGE[1]])
def test_memory_mb_at_either_end_of_the_range_is_accepted(memory: int) -> None:
    config = parse({"projects": {"web": {"services": {"backend": {"memory_mb": memory}}}}})
    assert config.projects["web"].services[0].memory_mb == memory


@pytest.mark.parametrize("path", ["./", "backend/", "a..b/Dockerfile", "..hidden/x"])
def test_paths_with_dots_that_stay_inside_the_repository_are_accepted(path: str) -> None:
    config = parse({"projects": {"web": {"services": {"backend": {"build_context": path}}}}})
    assert config.projects["web"].services[0].build_context == path


def test_datastores_run_from_their_templates_read_the_template_secret() -> None:
    config = parse({"projects": {"web": {"services": {"redis": {"memory_mb": 64}}}}})
    secrets = {s.name: s.secrets for s in config.projects["web"].services}
    assert secrets == {
        "backend": (),
        "frontend": (),
        "database": ("db_password",),
        "redis": ("redis_password",),
    }


@pytest.mark.parametrize(
    "database",
    [
        {"image": "mariadb:11", "data_path": "/var/lib/mysql"},
        {"process_command": "python3 db.py"},
        {"secrets": ["pg_password"]},
    ],
)
def test_a_datastore_of_its_own_or_with_its_own_secrets_gets_no_template_secret(
    database: dict[str, Any],
) -> None:
    config = parse({"projects": {"web": {"services": {"database": database}}}})
    (service,) = [s for s in config.projects["web"].services if s.name == "database"]
    assert service.secrets == tuple(database.get("secrets", ()))
    assert service.process_command == database.get("process_command")
    assert service.data_path == database.get("data_path")


def write_build(tmp_path: Path, context: str = "app", content: str = "v1") -> Path:
    (tmp_path / context).mkdir(parents=True, exist_ok=True)
    (tmp_path / context / "Dockerfile").write_text("FROM scratch\nCOPY page /page\n")
    (tmp_path / context / "page").write_text(content)
    (tmp_path / "projects.csv").write_text(
        "Project,Servers,MasterSpec,WebSpec\nweb,1,s-1vcpu-1gb,s-1vcpu-1gb\n"
    )
    config = {"projects": {"web": {"services": {"backend": {"build_context": context}}}}}
    (tmp_path / FILENAME).write_text(json.dumps(config))
    return tmp_path


def built_backend(directory: Path) -> Any:
    state = load_desired_state(directory / "projects.csv", directory / FILENAME)
    return state.project("web").services[0]


def test_a_build_context_beside_the_config_gives_an_image_tag_of_its_content(
    tmp_path: Path,
) -> None:
    backend = built_backend(write_build(tmp_path))
    assert re.fullmatch(r"web-backend:[0-9a-f]{12}", backend.image)
    assert backend.build_context == str((tmp_path / "app").resolve())
    assert backend.dockerfile_path == str((tmp_path / "app" / "Dockerfile").resolve())
    assert built_backend(tmp_path).image == backend.image  # same content, same tag
    (tmp_path / "app" / "page").write_text("v2")
    assert built_backend(tmp_path).image != backend.image


def test_a_missing_build_context_is_refused_without_a_git_repo(tmp_path: Path) -> None:
    write_build(tmp_path)
    config = {"projects": {"web": {"services": {"backend": {"build_context": "nope"}}}}}
    (tmp_path / FILENAME).write_text(json.dumps(config))
    with pytest.raises(InputErrors) as caught:
        built_backend(tmp_path)
    (issue,) = caught.value.issues
    assert issue.where == "$.projects.web.services.backend.build_context"
    assert "no Dockerfile at" in issue.message and "git_repo" in issue.message


def test_a_missing_build_context_is_left_to_the_deploy_from_git(tmp_path: Path) -> None:
    write_build(tmp_path)
    backend_config = {"build_context": "backend/", "dockerfile_path": "backend/Dockerfile"}
    config = {
        "projects": {
            "web": {
                "git_repo": "https://example.com/web.git",
                "services": {"backend": backend_config},
            }
        }
    }
    (tmp_path / FILENAME).write_text(json.dumps(config))
    backend = built_backend(tmp_path)
    assert (backend.image, backend.build_context) == (None, "backend/")


# --- the config against the CSV -----------------------------------------------------------


def test_build_desired_state_refuses_a_config_project_missing_from_the_csv() -> None:
    config = parse({"projects": {"hostomatc": {}, "web": {}}})
    with pytest.raises(InputErrors) as caught:
        build_desired_state([row("hostomatic"), row("web")], config, FILENAME)
    (issue,) = caught.value.issues
    assert (issue.file, issue.where) == (FILENAME, "$.projects.hostomatc")
    assert "not in the projects CSV" in issue.message
    assert "did you mean 'hostomatic'?" in issue.message


def test_build_desired_state_gives_csv_projects_without_config_the_defaults() -> None:
    config = parse({"projects": {"web": {"services": {"redis": {"enabled": False}}}}})
    state = build_desired_state([row("web", 2), row("api")], config)
    assert [s.name for s in state.project("web").services] == ["backend", "frontend", "database"]
    assert [s.name for s in state.project("api").services] == DEFAULT_NAMES
    assert state.project("web").servers == 2


def test_load_desired_state_refuses_a_config_project_missing_from_the_csv(tmp_path: Path) -> None:
    csv_path = tmp_path / "projects.csv"
    csv_path.write_text("Project,Servers,MasterSpec,WebSpec\nweb,1,s-1vcpu-1gb,s-1vcpu-1gb\n")
    config_path = tmp_path / FILENAME
    config_path.write_text(json.dumps({"projects": {"web": {}, "shop": {}}}))
    with pytest.raises(InputErrors) as caught:
        load_desired_state(csv_path, config_path)
    (issue,) = caught.value.issues
    assert (issue.file, issue.where) == (str(config_path), "$.projects.shop")
    assert "add it to the CSV or remove it" in issue.message


def test_load_desired_state_reports_the_problems_of_both_files_at_once(tmp_path: Path) -> None:
    csv_path = tmp_path / "projects.csv"
    csv_path.write_text("Project,Servers,MasterSpec,WebSpec\nweb,0,s-1vcpu-1gb,s-1vcpu-1gb\n")
    config_path = tmp_path / FILENAME
    config_path.write_text(json.dumps({"deployment_platform": "kubernetes"}))
    with pytest.raises(InputErrors) as caught:
        load_desired_state(csv_path, config_path)
    assert [(i.file, i.where) for i in caught.value.issues] == [
        (str(csv_path), "2"),
        (str(config_path), "$.deployment_platform"),
    ]


def test_load_desired_state_refuses_a_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(InputErrors) as caught:
        load_desired_state(EXAMPLE_CSV, tmp_path / "missing.json")
    (issue,) = caught.value.issues
    assert issue.file == str(tmp_path / "missing.json")
    assert "cannot read" in issue.message


# --- bugs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        {"projects": 5},
        {"projects": None},
        {"projects": True},
        {"projects": {"web": {"versioning": 1}}},
        {"projects": {"web": {"versioning": None}}},
    ],
    ids=["projects-number", "projects-null", "projects-bool", "versioning-number", "version-null"],
)
def test_config_refuses_a_scalar_where_an_object_belongs(config: Any) -> None:
    (issue,) = issues_of(json.dumps(config).encode())
    assert "expected an object" in issue.message


def test_config_refuses_an_integer_too_long_to_convert() -> None:
    (issue,) = issues_of(b'{"deployment_platform": ' + b"1" * 5000 + b"}")
    assert issue.file == FILENAME


def test_config_refuses_an_absolute_build_context() -> None:
    (issue,) = issues_of(
        json.dumps(
            {"projects": {"web": {"services": {"backend": {"build_context": "/etc"}}}}}
        ).encode()
    )
    assert issue.where == "$.projects.web.services.backend.build_context"


def test_a_config_project_missing_from_the_csv_is_reported_on_one_line() -> None:
    config = parse({"projects": {"web\nsite": {}}})
    with pytest.raises(InputErrors) as caught:
        build_desired_state([row("web")], config, FILENAME)
    (issue,) = caught.value.issues
    assert "\n" not in str(issue)


# --- properties -----------------------------------------------------------------------------


def assert_follows_the_rules(config: DeployConfig) -> None:
    assert config.platform in PLATFORMS
    for project in config.projects.values():
        names = [s.name for s in project.services]
        assert len(set(names)) == len(names)
        for service in project.services:
            assert MEMORY_RANGE[0] <= service.memory_mb <= MEMORY_RANGE[1]
            expected = DEFAULT_SERVICES.get(service.name, (ServiceKind.WORKER, 0))[0]
            assert service.kind is expected
            if service.kind is ServiceKind.WORKER:
                assert service.health_path is None
            assert all(SECRET_NAME.match(s) for s in service.secrets)
            assert len(set(service.secrets)) == len(service.secrets)
            for path in (service.build_context, service.dockerfile_path):
                assert path is None or ".." not in path.split("/")
            assert service.dockerfile_path is None or service.build_context is not None
            assert service.data_path is None or service.data_path.startswith("/")
        if project.backups is not None:
            every, keep = project.backups.every_hours, project.backups.keep_days
            assert every is not None or keep is not None
            assert every is None or 1 <= every <= 168
            assert keep is None or 1 <= keep <= 365
        for env, domains in project.domains.items():
            assert env in ENVIRONMENTS
            assert all(re.fullmatch(r"[a-z0-9.-]+", d) for d in domains)


def assert_well_formed(issues: tuple[InputIssue, ...]) -> None:
    assert issues
    for issue in issues:
        assert issue.file == FILENAME
        assert issue.where.startswith("$") or re.fullmatch(r"\d+:\d+", issue.where)
        assert issue.message and "\n" not in str(issue)


def check(data: bytes) -> None:
    try:
        config = parse_deploy_config(data, FILENAME)
    except InputErrors as err:
        assert_well_formed(err.issues)
    else:
        assert_follows_the_rules(config)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_give_a_config_or_input_errors_only(data: bytes) -> None:
    check(data)


SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats()
    | st.sampled_from(["", " ", "/health", "health", "x y", "../up", "db_password", "A"])
    | st.text(max_size=8)
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)
SERVICE_NAMES = st.sampled_from([*DEFAULT_NAMES, "worker", "cron-1", "Bad Name", "", "x" * 31])
SERVICE = st.dictionaries(
    st.sampled_from([*SERVICE_KEYS, "memroy_mb"]),
    st.one_of(
        JSON,
        st.sampled_from(["web", "worker", "database", "redis", "/h", "img:1", "a/../b"]),
        st.integers(0, 70000),
        st.lists(st.sampled_from(["db_password", "db_password", "Key", "k2"]), max_size=4),
    ),
    max_size=5,
)
DOMAIN_LISTS = st.lists(
    st.sampled_from(["a.example.com", "b.example.com", "Bad.COM", "localhost", "x"]) | SCALARS,
    max_size=3,
)
PROJECT = st.fixed_dictionaries(
    {},
    optional={
        "git_repo": JSON,
        "versioning": st.dictionaries(st.text(max_size=5), JSON) | JSON,
        "services": st.dictionaries(SERVICE_NAMES, SERVICE | JSON, max_size=4) | JSON,
        "domains": st.dictionaries(st.sampled_from([*ENVIRONMENTS, "dev"]), DOMAIN_LISTS | JSON),
        "backups": st.dictionaries(
            st.sampled_from(["every_hours", "keep_days", "every_hour"]),
            st.integers(-1, 400) | JSON,
        )
        | JSON,
        "git": JSON,
    },
)
DOCUMENT = st.fixed_dictionaries(
    {},
    optional={
        "deployment_platform": st.sampled_from([*PLATFORMS, "kubernetes"]) | JSON,
        "projects": st.dictionaries(st.sampled_from(["web", "api", "w\nx"]), PROJECT | JSON) | JSON,
        "extra": JSON,
    },
)


@settings(max_examples=300, deadline=None)
@given(DOCUMENT)
def test_config_shaped_documents_give_a_valid_config_or_input_errors_only(document: Any) -> None:
    check(json.dumps(document).encode())


def test_the_documented_keys_are_the_keys_the_validator_takes() -> None:
    from meshd.inputs.config_keys import markdown_table

    docs = (ROOT / "docs" / "inputs.md").read_text()
    assert markdown_table() in docs, "run `python -m meshd.inputs.config_keys` into docs/inputs.md"


def test_release_settings_are_checked_and_kept() -> None:
    found = issues_of(b'{"projects": {"web": {"health_timeout": 2, "versioning": {"major": 1}}}}')
    assert {(i.where, i.message.split(";")[0]) for i in found} == {
        (
            "$.projects.web.health_timeout",
            "expected a whole number of seconds from 5 to 3600, got 2",
        ),
        ("$.projects.web.versioning.minor", "major and minor are set together, like 1 and 4"),
    }
    good = {"health_timeout": 30, "versioning": {"major": 2, "minor": 1}}
    project = parse({"projects": {"web": good}}).projects["web"]
    assert (project.health_timeout_s, project.versioning) == (30, {"major": 2, "minor": 1})


def test_a_backup_schedule_is_kept_and_carried_into_the_project_spec() -> None:
    config = parse(
        {
            "projects": {
                "web": {"backups": {"every_hours": 1, "keep_days": 30}},
                "api": {"backups": {"keep_days": 365}},
                "cron": {"backups": {"every_hours": 168}},
                "old": {"backups": {}},
            }
        }
    )
    state = build_desired_state([row(n) for n in ("web", "api", "cron", "old", "new")], config)
    assert {p.name: p.backups for p in state.projects} == {
        "web": BackupSchedule(every_hours=1, keep_days=30),
        "api": BackupSchedule(keep_days=365),
        "cron": BackupSchedule(every_hours=168),
        "old": None,  # sets nothing: the seed's, as without the key
        "new": None,
    }
    assert DesiredState.from_data(state.to_data()) == state
    web = state.project("web").backups
    assert web is not None and (web.every_s, web.keep_s) == (3600.0, 30 * 86400.0)


def test_a_relative_git_repo_is_a_repository_beside_the_config(tmp_path: Path) -> None:
    csv = tmp_path / "projects.csv"
    csv.write_text("Project,Servers,MasterSpec,WebSpec\na,1,s-1vcpu-1gb,s-1vcpu-1gb\n"
                   "b,1,s-1vcpu-1gb,s-1vcpu-1gb\nc,1,s-1vcpu-1gb,s-1vcpu-1gb\n")  # fmt: skip
    repos = {"a": "../repos/a.git", "b": "git@example.com:me/b.git", "c": "https://x.org/c.git"}
    config = tmp_path / "conf" / "deployment_config.json"
    config.parent.mkdir()
    config.write_text(json.dumps({"projects": {p: {"git_repo": r} for p, r in repos.items()}}))
    state = load_desired_state(csv, config)
    found = {p.name: p.git_repo for p in state.projects}
    assert found == {**repos, "a": str(tmp_path / "repos" / "a.git")}


def test_acme_names_no_directory_by_default_and_publishes_a_private_directory_s_ca(
    tmp_path: Path,
) -> None:
    assert parse({}).acme == {
        "directory": "",  # the mesh's default: Let's Encrypt on DigitalOcean
        "email": "",
        "directory_ca": "",
    }
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    (tmp_path / "ca.pem").write_text(pem)
    config = {"acme": {"directory": "https://127.0.0.1:14000/dir", "email": "ops@example.com",
                       "directory_ca": "ca.pem"}}  # fmt: skip
    found = parse_deploy_config(json.dumps(config).encode(), str(tmp_path / FILENAME)).acme
    assert found == {"directory": "https://127.0.0.1:14000/dir", "email": "ops@example.com",
                     "directory_ca": pem}  # fmt: skip
    (tmp_path / "not.pem").write_text("hello")
    config["acme"]["directory_ca"] = "not.pem"
    with pytest.raises(InputErrors, match="not a PEM certificate"):
        parse_deploy_config(json.dumps(config).encode(), str(tmp_path / FILENAME))
