"""A droplet's firewall policy as iptables rules in the droplet's own network namespace.

DigitalOcean's cloud firewalls deny everything a rule does not allow, both ways, and are
stateful: replies to allowed traffic pass. Here the rules live in two chains of their own,
`DO-FIREWALL-IN` (jumped to from INPUT) and `DO-FIREWALL-OUT` (from OUTPUT), written with
`iptables-restore --noflush`, which empties and refills exactly the chains it names in one
step: applying a policy again rewrites it, and there is no moment without rules. Removing the
policy deletes the jumps and the chains. The metadata service stays reachable whatever the
policy says, as on DigitalOcean, where it is link-local and outside the firewall.

Pure: these functions build argument lists and text; `namespaces` runs them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from sim.digitalocean.machines import FirewallPolicy, FirewallRule

IN_CHAIN = "DO-FIREWALL-IN"
OUT_CHAIN = "DO-FIREWALL-OUT"
JUMPS = (("INPUT", IN_CHAIN), ("OUTPUT", OUT_CHAIN))
ANY_PORT = frozenset({"", "0", "all"})
PROTOCOLS = frozenset({"tcp", "udp", "icmp"})

Endpoint = tuple[str, int]  # an address and a TCP port that stay reachable (metadata)


def rules(policy: FirewallPolicy, always: Sequence[Endpoint] = ()) -> list[list[str]]:
    """The `-A CHAIN ...` argument lists enforcing `policy`, in order; `always` are TCP
    endpoints the droplet may reach whatever the policy (the metadata service)."""
    inbound = [["-A", IN_CHAIN, *match] for match in _base("-i")]
    for rule in policy.inbound:
        inbound += [["-A", IN_CHAIN, *match, "-j", "ACCEPT"] for match in _matches(rule, "-s")]
    inbound.append(["-A", IN_CHAIN, "-j", "DROP"])
    outbound = [["-A", OUT_CHAIN, *match] for match in _base("-o")]
    for address, port in always:
        outbound.append(
            ["-A", OUT_CHAIN, "-d", _network(address), "-p", "tcp", "--dport", str(port)]
            + ["-j", "ACCEPT"]
        )
    for rule in policy.outbound:
        outbound += [["-A", OUT_CHAIN, *match, "-j", "ACCEPT"] for match in _matches(rule, "-d")]
    outbound.append(["-A", OUT_CHAIN, "-j", "DROP"])
    return inbound + outbound


def restore_input(policy: FirewallPolicy, always: Sequence[Endpoint] = ()) -> str:
    """The text for `iptables-restore --noflush`: both chains declared (so emptied) and
    refilled, atomically."""
    lines = ["*filter", f":{IN_CHAIN} - [0:0]", f":{OUT_CHAIN} - [0:0]"]
    lines += [" ".join(rule) for rule in rules(policy, always)]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def jump(hook: str, chain: str) -> list[str]:
    """The rule (without -I/-C/-D) that sends a hook's traffic through our chain."""
    return [hook, "-j", chain]


def _base(direction: str) -> list[list[str]]:
    """What every policy allows: loopback, and replies to connections it allowed."""
    return [
        [direction, "lo", "-j", "ACCEPT"],
        ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
    ]


def _matches(rule: FirewallRule, side: str) -> list[list[str]]:
    """One match per address of the rule (none for no address: the rule matches nothing);
    `side` is -s (inbound sources) or -d (outbound destinations)."""
    protocol = rule.protocol.lower()
    if protocol not in PROTOCOLS:
        raise ValueError(f"firewall rule protocol {rule.protocol!r}: not tcp, udp or icmp")
    ports = _ports(protocol, rule.ports)
    found: list[list[str]] = []
    for address in rule.addresses:
        network = _network(address)
        if not network:
            continue  # IPv6: the droplets here have no IPv6
        where = [] if network == "0.0.0.0/0" else [side, network]
        match = [*where, "-p", protocol, *ports]
        if match not in found:
            found.append(match)
    return found


def _ports(protocol: str, ports: str) -> list[str]:
    text = ports.strip().lower()
    if protocol == "icmp" or text in ANY_PORT:
        return []
    low, _, high = text.partition("-")
    if not low.isdigit() or (high and not high.isdigit()):
        raise ValueError(f"firewall rule ports {ports!r}: not a port, a range or 'all'")
    if high and int(high) < int(low):
        raise ValueError(f"firewall rule ports {ports!r}: the range ends before it starts")
    if not all(0 < int(port) < 65536 for port in (low, high or low)):
        raise ValueError(f"firewall rule ports {ports!r}: outside 1-65535")
    return ["--dport", f"{int(low)}:{int(high)}" if high else str(int(low))]


def _network(address: str) -> str:
    """`address` as iptables writes it back: `10.0.0.5/32`, `10.0.0.0/8`; '' for IPv6."""
    try:
        network = ipaddress.ip_network(address.strip(), strict=False)
    except ValueError as err:
        raise ValueError(f"firewall rule address {address!r}: {err}") from err
    return str(network) if network.version == 4 else ""
