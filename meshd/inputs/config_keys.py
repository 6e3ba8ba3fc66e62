"""Every key of `deployment_config.json`, once: its level, type, default, the version it came
in and what it means. The validator (`deploy_config`) takes the keys each level allows from
here, and the table in docs/inputs.md is this table (a test compares them; print it with
`python -m meshd.inputs.config_keys`). A later feature adds its keys here."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Level(StrEnum):
    TOP = "top"
    PROJECT = "project"  # under `projects.<name>`
    SERVICE = "service"  # under `projects.<name>.services.<service>`
    VAULT = "vault"  # under `vault`
    REGISTRY = "registry"  # under `projects.<name>.registry`
    BACKUPS = "backups"  # under `projects.<name>.backups`
    LOGS = "logs"  # under `logs`
    OPENSEARCH = "opensearch"  # under `logs.opensearch`
    ACME = "acme"  # under `acme`


@dataclass(frozen=True, slots=True)
class Key:
    name: str
    level: Level
    type: str
    default: str
    since: str
    meaning: str


KEYS: tuple[Key, ...] = (
    Key("deployment_platform", Level.TOP, "string", "`docker`", "0.1",
        "`docker`, `podman` or `process`; accepted for the seed's sake: the runtime chosen by "
        "`meshctl up` decides how services run, so one config serves both"),
    Key("projects", Level.TOP, "object", "`{}`", "0.1",
        "per project of the CSV (a name the CSV lacks is refused)"),
    Key("vault", Level.TOP, "object", "none", "0.1",
        "read secrets from a Vault or OpenBao KV v2 mount too (docs/secrets.md, Vault / "
        "OpenBao); the mesh mirrors them and rolls the services when one changes"),
    Key("address", Level.VAULT, "string", "required", "0.1",
        "the server's `http://` or `https://` URL (`https://vault.example.com:8200`)"),
    Key("mount", Level.VAULT, "string", "`secret`", "0.1", "the KV v2 mount's path"),
    Key("auth", Level.VAULT, "string", "`token`", "0.1",
        "`token` (mesh secret `vault_token`) or `approle` (mesh secrets `vault_role_id` and "
        "`vault_secret_id`)"),
    Key("prefix", Level.VAULT, "string", "`meshd`", "0.1",
        "the secrets are at `<prefix>/mesh`, `<prefix>/<project>` and "
        "`<prefix>/<project>/<env>` in the mount"),
    Key("logs", Level.TOP, "object", "none", "0.1",
        "where the mesh forwards its logs besides `meshctl logs` (docs/logs.md)"),
    Key("opensearch", Level.LOGS, "object", "none", "0.1",
        "an OpenSearch cluster; every line once, through the `_bulk` API"),
    Key("url", Level.OPENSEARCH, "string", "required", "0.1",
        "the cluster's `http://` or `https://` URL (`https://search.example.com:9200`)"),
    Key("index", Level.OPENSEARCH, "string", "`meshd-logs`", "0.1",
        "the index lines go to (lowercase letters, digits, `-`, `_`, `.`)"),
    Key("user", Level.OPENSEARCH, "string", "none", "0.1",
        "basic authentication's user; its password is the mesh secret `opensearch_password`"),
    Key("acme", Level.TOP, "object", "Let's Encrypt on DigitalOcean", "0.1",
        "where the domains' certificates come from (docs/tls.md)"),
    Key("directory", Level.ACME, "string", "Let's Encrypt's on DigitalOcean; none on a local "
        "mesh", "0.1",
        "the ACME directory's `https://` URL (`https://acme-v02.api.letsencrypt.org/directory`)"),
    Key("email", Level.ACME, "string", "none", "0.1",
        "the ACME account's contact, to which the CA may write"),
    Key("directory_ca", Level.ACME, "string", "the system's CAs", "0.1",
        "a PEM file, relative to the config, with the CA of a private directory's own HTTPS "
        "certificate (pebble, step-ca); Let's Encrypt needs none"),
    Key("git_repo", Level.PROJECT, "string", "none", "0.1",
        "where deploys build from (a URL, `host:path`, or a path on this disk, relative to the "
        "config); a service with a `build_context` not on disk needs it (docs/deploys.md)"),
    Key("versioning", Level.PROJECT, "object", "none", "0.1",
        "UAT version tags: `auto_tag_uat` (true), `tag_format` "
        "(`v{version}-uat-{timestamp}`), `major` and `minor` to pin a version line; "
        "`prod_uses_uat_tags` may only be true"),
    Key("health_timeout", Level.PROJECT, "integer", "60", "0.1",
        "seconds a release has to be healthy everywhere; a release that is not fails and the "
        "old one keeps serving"),
    Key("release_command", Level.PROJECT, "string", "none", "0.1",
        "run once before each release rolls out (migrations), split like a shell would, with "
        "the release's artifact and `release_service`'s environment and secrets; a non-zero "
        "exit fails the release and the old one keeps serving (docs/deploys.md)"),
    Key("release_service", Level.PROJECT, "string", "`backend`", "0.1",
        "the service built from the repository whose artifact, environment and secrets the "
        "`release_command` runs with, on a droplet that runs it"),
    Key("release_command_timeout", Level.PROJECT, "integer", "300", "0.1",
        "seconds the `release_command` may run; it is killed then and the release fails"),
    Key("deploy", Level.PROJECT, "object", '`{"uat": "main", "test": "*"}`', "0.1",
        "`<env>: <branch pattern>`: a push to a matching branch deploys to that environment "
        "(`fnmatch` patterns: `*`, `?`, `[...]`; a branch named exactly wins over a pattern, "
        "then the pattern with more literal characters); `uat` and `test` only, since prod is "
        "deployed only by promotion; a given object replaces the default"),
    Key("registry", Level.PROJECT, "object", "none", "0.1",
        "the private registry the project's `image`s come from; pulled with the project "
        "secret `registry_password` (docs/secrets.md, Private registries)"),
    Key("server", Level.REGISTRY, "string", "required", "0.1",
        "its `host[:port]` as the images name it (`registry.example.com`, `127.0.0.1:5000`; "
        "`docker.io` for Docker Hub); only images from it get the login"),
    Key("username", Level.REGISTRY, "string", "required", "0.1", "the user to log in as"),
    Key("backups", Level.PROJECT, "object", "the seed's: every 6 h, kept 14 days", "0.1",
        "how often the project's datastores (services of type `database` or `redis`) are "
        "backed up and how long their backups are kept (docs/backups.md); either key may be "
        "left out; a change restarts nothing"),
    Key("every_hours", Level.BACKUPS, "integer", "6", "0.1",
        "hours between backups of each datastore, 1 to 168; one older than twice that is "
        "overdue (a critical alert)"),
    Key("keep_days", Level.BACKUPS, "integer", "14", "0.1",
        "days a backup is kept, 1 to 365; a datastore's newest is kept whatever its age"),
    Key("domains", Level.PROJECT, "object of lists", "none", "0.1",
        "`<env>: [host names]` routed to that environment by nginx; each name used once"),
    Key("services", Level.PROJECT, "object", "the four defaults", "0.1",
        "the project's services, merged with the defaults (backend, frontend, database, redis)"),
    Key("type", Level.SERVICE, "string", "from the name", "0.1",
        "`web` (only `backend`, `frontend`), `database`, `redis`, or `worker` (all other names)"),
    Key("image", Level.SERVICE, "string", "none", "0.1",
        "the image to run (pulled if the engine lacks it); not with `build_context`"),
    Key("build_context", Level.SERVICE, "string", "none", "0.1",
        "build the image here instead: a path relative to the config; found on disk, the "
        "service runs `<project>-<service>:<content digest>` and a changed file rolls it"),
    Key("dockerfile_path", Level.SERVICE, "string", "`<build_context>/Dockerfile`", "0.1",
        "the Dockerfile, relative to the config; needs a `build_context`"),
    Key("command", Level.SERVICE, "string", "the image's", "0.1",
        "the command in the container (split like a shell would)"),
    Key("process_command", Level.SERVICE, "string", "`command`", "0.1",
        "what the `process` runtime runs instead of the image, in the build context (a deploy's: "
        "its unpacked build) when the service has one; `${CONFIG_DIR}` is the config's "
        "directory"),
    Key("data_path", Level.SERVICE, "string", "none", "0.1",
        "absolute path in the container where the service's named volume is mounted (the "
        "built-in database and redis templates have their own)"),
    Key("memory_mb", Level.SERVICE, "integer", "64 (backend), 32 (frontend, redis, workers), "
        "96 (database)", "0.1", "reservation used for placement, 16 to 65536"),
    Key("health_path", Level.SERVICE, "string", "`/health` on web services", "0.1",
        "HTTP path probed on web services; not for workers"),
    Key("secrets", Level.SERVICE, "list of strings", "`[db_password]` / `[redis_password]` for "
        "the built-in datastores", "0.1",
        "names (`db_password`) mounted as files at `/run/secrets/<name>`"),
    Key("build_secrets", Level.SERVICE, "list of strings", "none", "0.1",
        "secret names the image's build reads (`RUN --mount=type=secret,id=<name>`), given to "
        "`docker build --secret` and never to the running container; needs a `build_context` "
        "(docs/secrets.md)"),
    Key("enabled", Level.SERVICE, "boolean", "`true`", "0.1", "`false` drops a (default) service"),
    Key("env_template", Level.SERVICE, "string", "none", "0.1",
        "a `KEY=VALUE` file relative to the config (the seed's `templates/backend.env`), read "
        "by `meshctl publish` into the service's environment under `meshctl config`'s values "
        "(docs/configuration.md)"),
)  # fmt: skip


def names_at(level: Level) -> tuple[str, ...]:
    """The keys an object of `level` may have, in the table's order."""
    return tuple(key.name for key in KEYS if key.level is level)


def markdown_table() -> str:
    rows = [
        "| key | level | type | default | since | meaning |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    rows += [
        f"| `{k.name}` | {k.level} | {k.type} | {k.default} | {k.since} | {k.meaning} |"
        for k in KEYS
    ]
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
