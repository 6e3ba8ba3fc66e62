"""Local droplets in network namespaces (root only), for partition and packet-loss drills.

Loopback droplets cannot be cut off: their nats-server routes leave from 127.0.0.1, so no rule
tells one droplet's traffic from another's (nats-server's routes leave from 127.0.0.1). Here each
droplet gets a namespace of its own, `meshd-<B>-<id>`, joined to a bridge `mdb<B>` of the
machine by a veth pair (`mdv<B>x<id>` on the machine's side, `eth0` inside), with the address
`10.213.<B>.<N>/24`; the machine itself is `10.213.<B>.1`, so `meshctl` and tests reach every
droplet. Traffic stays in namespaces this module made.

- The machine's own namespace is named `meshd-<B>-host` (`ip netns attach`), so that agents,
  which run inside their droplets' namespaces, can still change the bridge and routes.
- Droplets are launched with `nsenter --net=...` (not `ip netns exec`, which would give them a
  private mount namespace: namespaces that an agent creates while rebuilding a droplet would
  then be invisible to everyone else).
- The entry address is `10.213.<B>.254`: the holder gets it on its `lo`, and the machine routes
  it to the holder (`/32`), as DigitalOcean moves a reserved IP.
- A partition sets the machine's end of the droplet's veth down, or drops its traffic to and
  from given peers with iptables inside its namespace; packet loss is an iptables rule with
  `-m statistic` there too (the kernel here has no `netem`).

Every function runs commands and raises `NetnsError` with what failed; they are called from
worker threads.
"""

from __future__ import annotations

import os
import random
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from protocol.errors import MeshError

PREFIX = "10.213"
GATEWAY_HOST = 1
RESERVED_HOST = 254
CHAIN = "MESHD-DRILL"


class NetnsError(MeshError):
    """A namespace command failed: `command` is what ran, `reason` what it said."""

    def __init__(self, command: Sequence[str], reason: str) -> None:
        self.command = list(command)
        self.reason = reason
        super().__init__(f"{' '.join(command)}: {reason}")


@dataclass(frozen=True, slots=True)
class Layout:
    """Names and addresses of one account's namespaces, from its block `10.213.<B>`."""

    block: str

    @property
    def number(self) -> str:
        return self.block.rsplit(".", 1)[1]

    @property
    def bridge(self) -> str:
        return f"mdb{self.number}"

    @property
    def host(self) -> str:
        return f"meshd-{self.number}-host"

    @property
    def gateway(self) -> str:
        return f"{self.block}.{GATEWAY_HOST}"

    @property
    def reserved(self) -> str:
        return f"{self.block}.{RESERVED_HOST}"

    def namespace(self, droplet_id: str) -> str:
        return f"meshd-{self.number}-{droplet_id}"

    def veth(self, droplet_id: str) -> str:
        return f"mdv{self.number}x{droplet_id}"  # at most 15 characters for ids below 10**7

    def enter(self, droplet_id: str) -> list[str]:
        """The argv prefix that runs a command inside the droplet's namespace."""
        return ["nsenter", f"--net=/run/netns/{self.namespace(droplet_id)}"]


def run(*command: str, check: bool = True) -> str:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise NetnsError(command, (done.stderr or done.stdout).strip() or f"exit {done.returncode}")
    return done.stdout


def pick_block(attempts: int = 50) -> str:
    """A random `10.213.<B>` that no interface of this machine uses yet."""
    used = run("ip", "-o", "-4", "addr", "show")
    for _ in range(attempts):
        block = f"{PREFIX}.{random.randint(1, 250)}"
        if f" {block}." not in used:
            return block
    raise NetnsError(["pick a block"], f"{attempts} random {PREFIX}.B blocks were in use")


def namespaces() -> set[str]:
    return {line.split()[0] for line in run("ip", "netns", "list").splitlines() if line.strip()}


def ensure_bridge(layout: Layout) -> None:
    """The bridge and the machine's name for its own namespace; idempotent. Must first run on
    the machine itself (`meshctl up`)."""
    if layout.host not in namespaces():  # only `meshctl up` gets here, on the machine itself
        run("ip", "netns", "attach", layout.host, str(os.getpid()))
    host = ("ip", "-n", layout.host)
    if run(*host, "link", "show", layout.bridge, check=False):
        return
    run(*host, "link", "add", layout.bridge, "type", "bridge")
    run(*host, "addr", "add", f"{layout.gateway}/24", "dev", layout.bridge)
    run(*host, "link", "set", layout.bridge, "up")
    # Docker loads br_netfilter and drops forwarded traffic by default: let the bridge's pass.
    rule = ("FORWARD", "-i", layout.bridge, "-o", layout.bridge, "-j", "ACCEPT")
    run("ip", "netns", "exec", layout.host, "iptables", "-I", *rule)


def remove_bridge(layout: Layout) -> None:
    """Undo `ensure_bridge` (the last droplet is gone); missing parts are fine."""
    if layout.host not in namespaces():
        return
    rule = ("FORWARD", "-i", layout.bridge, "-o", layout.bridge, "-j", "ACCEPT")
    run("ip", "netns", "exec", layout.host, "iptables", "-D", *rule, check=False)
    run("ip", "-n", layout.host, "route", "del", f"{layout.reserved}/32", check=False)
    run("ip", "-n", layout.host, "link", "del", layout.bridge, check=False)
    run("ip", "netns", "del", layout.host, check=False)


def attach(layout: Layout, droplet_id: str, address: str) -> None:
    """A fresh namespace for the droplet, cabled to the bridge, with its address."""
    ensure_bridge(layout)
    detach(layout, droplet_id)
    namespace = layout.namespace(droplet_id)
    inside = ("ip", "-n", namespace)
    run("ip", "netns", "add", namespace)
    run(
        *("ip", "-n", layout.host, "link", "add", layout.veth(droplet_id)),
        *("type", "veth", "peer", "name", "eth0", "netns", namespace),
    )
    run("ip", "-n", layout.host, "link", "set", layout.veth(droplet_id), "master", layout.bridge)
    run("ip", "-n", layout.host, "link", "set", layout.veth(droplet_id), "up")
    run(*inside, "addr", "add", f"{address}/24", "dev", "eth0")
    run(*inside, "link", "set", "eth0", "up")
    run(*inside, "link", "set", "lo", "up")


def detach(layout: Layout, droplet_id: str) -> None:
    """Remove the droplet's namespace and cable, if there are any."""
    namespace = layout.namespace(droplet_id)
    if namespace in namespaces():
        run("ip", "netns", "del", namespace)
    if layout.host in namespaces():
        run("ip", "-n", layout.host, "link", "del", layout.veth(droplet_id), check=False)


def assign_reserved(layout: Layout, droplet_id: str, address: str, previous: str | None) -> None:
    """Move the entry address to the droplet: on its `lo`, routed there by the machine."""
    if previous is not None and previous != droplet_id:
        old = layout.namespace(previous)
        if old in namespaces():
            run("ip", "-n", old, "addr", "del", f"{layout.reserved}/32", "dev", "lo", check=False)
    namespace = layout.namespace(droplet_id)
    run("ip", "-n", namespace, "addr", "replace", f"{layout.reserved}/32", "dev", "lo")
    run(
        *("ip", "-n", layout.host, "route", "replace", f"{layout.reserved}/32"),
        *("via", address, "dev", layout.bridge),
    )


def partition(layout: Layout, droplet_id: str, peers: Sequence[str] = ()) -> None:
    """Cut the droplet off: from everyone (its cable goes down), or from `peers` (addresses)
    only, both ways, with iptables in its namespace."""
    if not peers:
        run("ip", "-n", layout.host, "link", "set", layout.veth(droplet_id), "down")
        return
    for peer in peers:
        _drill_rule(layout, droplet_id, "INPUT", "-s", peer, "-j", "DROP")
        _drill_rule(layout, droplet_id, "OUTPUT", "-d", peer, "-j", "DROP")


def lose(layout: Layout, droplet_id: str, probability: float) -> None:
    """Drop that share of the packets the droplet receives."""
    _drill_rule(
        layout,
        droplet_id,
        *("INPUT", "-m", "statistic", "--mode", "random"),
        *("--probability", f"{probability:.3f}", "-j", "DROP"),
    )


def heal(layout: Layout, droplet_id: str) -> None:
    """Undo every drill on the droplet: its cable up, its drill rules gone."""
    run("ip", "-n", layout.host, "link", "set", layout.veth(droplet_id), "up")
    iptables = ("ip", "netns", "exec", layout.namespace(droplet_id), "iptables")
    for chain in ("INPUT", "OUTPUT"):
        run(*iptables, "-D", chain, "-j", CHAIN, check=False)
    run(*iptables, "-F", CHAIN, check=False)
    run(*iptables, "-X", CHAIN, check=False)


def _drill_rule(layout: Layout, droplet_id: str, chain: str, *rule: str) -> None:
    """Add a rule to the droplet's drill chain, which INPUT and OUTPUT jump to."""
    iptables = ("ip", "netns", "exec", layout.namespace(droplet_id), "iptables")
    if run(*iptables, "-n", "-L", CHAIN, check=False) == "":
        run(*iptables, "-N", CHAIN)
        for hook in ("INPUT", "OUTPUT"):
            run(*iptables, "-I", hook, "-j", CHAIN)
    match = list(rule)
    if chain == "INPUT":
        run(*iptables, "-A", CHAIN, "-i", "eth0", *match)
    else:
        run(*iptables, "-A", CHAIN, "-o", "eth0", *match)
