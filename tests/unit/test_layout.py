"""The layout is the architecture, and these rules keep it so (imports inside functions count
too): `protocol/` is a leaf; plugins see only `protocol/`, their shared helpers, plugin
interfaces and their own implementation; the core does no I/O; the agent's machinery knows no
leader; no role imports another; meshctl never runs a role. The packages imported are this
repository's, not PyPI's namesakes."""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLUGIN_HELPERS = {"plugins", "plugins.fs", "plugins.procfs", "plugins.templating", "plugins.urls"}
PLUGIN_KINDS = {"providers", "runtimes", "lb", "notifiers", "secrets", "backups", "logsinks"}
# Plugins' faces beyond their interface: the docker engine's admin (drills, `down`) and compose;
# a cloud provider's access (SSH keys, firewall).
DECLARED = {
    "plugins.runtimes.docker.admin",
    "plugins.runtimes.docker.compose",
    "plugins.providers.cloud",  # what only a cloud provider does (SSH keys, firewall)
}
IO_MODULES = {"asyncio", "nats", "aiohttp", "socket", "subprocess", "docker", "msgpack"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> Iterator[str]:
    """Every module `path` imports, at any depth, with relative imports resolved."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            for alias in node.names:  # `from pkg import module` imports the module
                yield f"{base}.{alias.name}"


def modules(*packages: str) -> list[tuple[str, Path]]:
    found = []
    for package in packages:
        found += [(module_name(p), p) for p in sorted((ROOT / package).rglob("*.py"))]
    return found


def under(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def ours(imported: str) -> bool:
    return under(imported, "meshd", "plugins", "protocol", "bootstrap")


def existing(imported: str) -> bool:
    """`from pkg import name` also yields `pkg.name`, which may be an attribute: keep module
    paths that exist in the repository."""
    path = ROOT / imported.replace(".", "/")
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def offenders(packages: tuple[str, ...], allowed: object) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for name, path in modules(*packages):
        bad = sorted(
            {i for i in imports(path) if (not ours(i) or existing(i)) and not allowed(name, i)}  # type: ignore[operator]
        )
        if bad:
            found[name] = bad
    return found


def plugin_import_allowed(module: str, imported: str) -> bool:
    if not ours(imported):
        return True
    if under(imported, "meshd", "bootstrap"):
        return False
    if under(imported, "protocol") or imported in PLUGIN_HELPERS:
        return True
    parts = imported.split(".")
    if len(parts) == 2 and parts[1] in PLUGIN_KINDS:
        return True  # an interface
    own = ".".join(module.split(".")[:3])  # plugins.<kind>.<implementation>
    return under(imported, own)


def core_import_allowed(module: str, imported: str) -> bool:
    if imported.split(".", maxsplit=1)[0] in IO_MODULES:
        return False
    if not ours(imported):
        return True
    if under(imported, "meshd.core", "protocol") or imported == "plugins.templating":
        return True
    parts = imported.split(".")
    return parts[0] == "plugins" and len(parts) == 2 and parts[1] in PLUGIN_KINDS


def agent_import_allowed(module: str, imported: str) -> bool:
    if module in ("meshd.agent.app", "meshd.agent.__main__"):
        return True  # the composition root and the entry point
    if under(imported, "meshd.roles", "meshd.watchers", "meshd.inputs", "meshd.cli"):
        return False
    return not under(imported, "meshd.local")


def leader_import_allowed(module: str, imported: str) -> bool:
    if under(imported, "meshd.cli", "meshd.inputs", "meshd.local", "meshd.agent.app"):
        return False
    mine = ".".join(module.split(".")[:3])  # meshd.roles.<role> / meshd.watchers.<watcher>
    for layer in ("meshd.roles", "meshd.watchers"):
        if under(imported, layer) and imported != layer and not under(imported, mine):
            return False  # no leader imports another
    return True


def cli_import_allowed(module: str, imported: str) -> bool:
    if under(imported, "meshd.roles", "meshd.watchers", "meshd.agent.app"):
        return False
    parts = imported.split(".")
    if parts[0] == "plugins" and len(parts) > 2 and imported not in PLUGIN_HELPERS:
        return under(imported, *DECLARED)  # implementations only through load_* or these
    return True


RULES = {
    "plugins": (("plugins",), plugin_import_allowed),
    "core": (("meshd/core",), core_import_allowed),
    "inputs": (("meshd/inputs",), lambda m, i: not under(i, "meshd.agent", "meshd.roles",
                                                         "meshd.watchers", "meshd.cli")),
    "agent": (("meshd/agent",), agent_import_allowed),
    "roles and watchers": (("meshd/roles", "meshd/watchers"), leader_import_allowed),
    "cli": (("meshd/cli",), cli_import_allowed),
    "local": (("meshd/local",), lambda m, i: not under(i, "meshd.roles", "meshd.watchers",
                                                        "meshd.cli", "meshd.inputs")),
}  # fmt: skip


@pytest.mark.parametrize("layer", sorted(RULES))
def test_each_layer_imports_only_what_it_may(layer: str) -> None:
    packages, allowed = RULES[layer]
    assert modules(*packages), f"{layer} has no modules"
    assert offenders(packages, allowed) == {}


def test_protocol_imports_nothing_of_ours_above_it() -> None:
    assert offenders(("protocol",), lambda m, i: not under(i, "meshd", "plugins")) == {}


def test_no_source_file_is_over_400_lines() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for package in ("meshd", "plugins", "protocol")
        for p in (ROOT / package).rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 400
    }
    assert long == {}


def test_docstrings_point_only_at_documents_in_the_repository() -> None:
    pointing = [
        str(p.relative_to(ROOT))
        for package in ("meshd", "plugins", "protocol", "tests", "bench")
        for p in (ROOT / package).rglob("*.py")
        if p != Path(__file__) and any(n in p.read_text() for n in ("DESIGN.md", "NOTES.md"))
    ]
    assert pointing == []


@pytest.mark.parametrize("name", ["meshd", "protocol", "plugins", "bootstrap"])
def test_imports_resolve_inside_the_repository(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__file__ is not None
    assert Path(module.__file__).resolve().is_relative_to(ROOT)


@pytest.mark.parametrize(
    ("rule", "module", "imported"),
    [
        (plugin_import_allowed, "plugins.providers.local.drills", "plugins.runtimes.docker.admin"),
        (plugin_import_allowed, "plugins.lb.nginx", "meshd.agent.store"),
        (core_import_allowed, "meshd.core.plan", "asyncio"),
        (core_import_allowed, "meshd.core.status", "meshd.agent.meshview"),
        (agent_import_allowed, "meshd.agent.membership", "meshd.roles.scheduler"),
        (leader_import_allowed, "meshd.roles.provisioner", "meshd.roles.scheduler"),
        (leader_import_allowed, "meshd.watchers.quorum", "meshd.watchers.detector.ballot"),
        (cli_import_allowed, "meshd.cli.chaos", "plugins.providers.local"),
        (cli_import_allowed, "meshd.cli.publish", "meshd.roles.scheduler"),
    ],
)
def test_the_rules_refuse_what_the_layers_must_not_do(
    rule: object, module: str, imported: str
) -> None:
    assert not rule(module, imported)  # type: ignore[operator]
