"""`meshctl certs`: the domains' certificates (docs/tls.md): per project-environment its
domains, issuer, expiry, last attempt and its error, and where each domain's DNS points (an
order fails when it does not lead to the entry address). `meshctl certs renew PROJECT ENV`
asks the `certificates` holder for a new one now, whatever its backoff after failures."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import time
from typing import Any
from urllib.parse import urlsplit

import click
from rich.table import Table

from meshd.cli.context import load_context, who
from meshd.cli.session import connect, read_published
from meshd.cli.tables import console
from meshd.core.certs import attention, points_elsewhere, state_of, wanted
from meshd.core.spec import ENVIRONMENTS
from protocol import subjects
from protocol.certs import Certificate, RenewRequest, cert_key, renew_key
from protocol.codec import decode, encode
from protocol.errors import MeshError, ProtocolError

RESOLVE_TIMEOUT_S = 3.0


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON: one object per certificate.")
@click.option("--dns", "dns_server", metavar="HOST[:PORT]",
              help="Ask this DNS server where the domains point (default: this machine's "
              "resolver).")  # fmt: skip
@click.option("--context", "context_name", metavar="NAME", help="Mesh to talk to.")
@click.pass_context
def certs(
    ctx: click.Context, as_json: bool, dns_server: str | None, context_name: str | None
) -> None:
    """The domains' HTTPS certificates and what needs attention.

    \b
    Every project environment with `domains` in the deployment config gets one certificate
    for all its names from the ACME directory that `acme` names (on DigitalOcean: Let's
    Encrypt by default), renewed 30 days before it ends. A domain is served over plain HTTP
    until its certificate is issued; after that plain HTTP redirects to HTTPS. docs/tls.md.
    """
    if ctx.invoked_subcommand is not None:
        return
    if dns_server is not None:
        _server_address(dns_server)
    found = asyncio.run(_certificates(context_name, dns_server))
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    if not found:
        console.print("No project environment has domains (`domains` in the deployment config).")
        return
    table = Table("certificate", "domains", "state", "issuer", "expires", "last attempt")
    for cert in found:
        expires = _day(cert["not_after"]) if cert["not_after"] else "-"
        attempt = _day(cert["last_attempt_at"]) if cert["last_attempt_at"] else "-"
        table.add_row(cert["name"], "\n".join(cert["domains"]), cert["state"],
                      cert["issuer"] or "-", expires, attempt)  # fmt: skip
    console.print(table)
    for cert in found:
        if cert["attention"]:
            console.print(f"[yellow]{cert['name']}[/]: {cert['attention']}")
        for domain, problem in cert["dns_problems"].items():
            console.print(f"[yellow]{domain}[/]: {problem} (an order fails until it does)")


@certs.command()
@click.argument("project")
@click.argument("env", type=click.Choice(ENVIRONMENTS))
@click.option("--context", "context_name", metavar="NAME", help="Mesh to talk to.")
def renew(project: str, env: str, context_name: str | None) -> None:
    """Order a new certificate for PROJECT ENV now.

    The one served now stays until the new one is issued; if the order fails, it keeps
    serving and `meshctl certs` says why.
    """
    asyncio.run(_renew(project, env, context_name))
    console.print(f"Asked for a new certificate of {project}-{env} (follow with `meshctl certs`).")


async def _renew(project: str, env: str, context_name: str | None) -> None:
    store = await connect(load_context(context_name))
    try:
        state = await read_published(store)
        names = {(w.project, w.env) for w in wanted(state)}
        if (project, env) not in names:
            listed = ", ".join(f"{p} {e}" for p, e in sorted(names)) or "none"
            raise MeshError(
                f"{project} {env} has no domains, so no certificate; with domains: {listed}"
            )
        asked = RenewRequest(asked_at=time.time(), asked_by=who())
        await store.put(subjects.CERTS_BUCKET, renew_key(project, env), encode(asked))
        await store.record("certificate_renewal_asked", who(), f"{project}-{env}", {})
    finally:
        await store.close()


async def _certificates(context_name: str | None, dns_server: str | None) -> list[dict[str, Any]]:
    context = load_context(context_name)
    store = await connect(context)
    try:
        state = await read_published(store)
        stored = {}
        for want in wanted(state):
            entry = await store.get(subjects.CERTS_BUCKET, cert_key(want.project, want.env))
            try:
                stored[want.key] = (
                    decode(entry.value, Certificate) if entry and entry.value else None
                )
            except ProtocolError:
                stored[want.key] = None
    finally:
        await store.close()
    entry_address = urlsplit(context.entry_url or "").hostname or ""
    domains = sorted({d for want in wanted(state) for d in want.domains})
    resolved = await _resolve(domains, dns_server)
    now = time.time()
    result = []
    for want in wanted(state):
        cert = stored[want.key]
        problems = points_elsewhere({d: resolved[d] for d in want.domains}, entry_address)
        result.append({
            "name": want.name,
            "project": want.project,
            "env": want.env,
            "domains": list(want.domains),
            "state": state_of(cert, now),
            "issuer": cert.issuer if cert else "",
            "covers": list(cert.covers) if cert else [],
            "not_before": cert.not_before if cert else 0.0,
            "not_after": cert.not_after if cert else 0.0,
            "issued_at": cert.issued_at if cert else 0.0,
            "renewals": cert.renewals if cert else 0,
            "last_attempt_at": cert.last_attempt_at if cert else 0.0,
            "last_error": cert.last_error if cert else "",
            "next_attempt_at": cert.next_attempt_at if cert else 0.0,
            "attention": attention(cert, now),
            "entry_address": entry_address,
            "dns_problems": problems,
        })  # fmt: skip
    return result


async def _resolve(domains: list[str], server: str | None) -> dict[str, list[str] | str]:
    """Each domain's IPv4 addresses, or why it has none."""
    ask = _ask_server(server) if server else _ask_system
    found = await asyncio.gather(*(ask(d) for d in domains))
    return dict(zip(domains, found, strict=True))


async def _ask_system(domain: str) -> list[str] | str:
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT_S):
            answers = await loop.getaddrinfo(domain, None, family=socket.AF_INET)
    except TimeoutError:
        return "does not resolve (no answer in time)"
    except socket.gaierror as err:
        return f"does not resolve ({err.strerror})"
    return sorted({str(a[4][0]) for a in answers})


def _ask_server(server: str) -> Any:
    import dns.asyncresolver  # noqa: PLC0415 - only with --dns
    import dns.exception  # noqa: PLC0415

    host, port = _server_address(server)
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [host]
    resolver.port = port
    resolver.lifetime = RESOLVE_TIMEOUT_S

    async def ask(domain: str) -> list[str] | str:
        try:
            answer = await resolver.resolve(domain, "A")
        except dns.exception.DNSException as err:
            return f"does not resolve ({type(err).__name__})"
        return sorted(str(record) for record in answer)

    return ask


def _server_address(server: str) -> tuple[str, int]:
    """`--dns`'s HOST[:PORT] as an IP address and a port (53 by default)."""
    host, _, port = server.partition(":")
    try:
        ipaddress.ip_address(host)
        number = int(port or 53)
        if not 0 < number < 65536:
            raise ValueError(number)
    except ValueError:
        raise click.BadParameter(
            f"{server!r} is not an IP address with an optional port, like '1.1.1.1' or "
            "'127.0.0.1:8053'",
            param_hint="--dns",
        ) from None
    return host, number


def _day(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(at))
