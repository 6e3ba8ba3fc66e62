"""The droplets' network: two bridges on the machine, a network namespace per droplet.

`dopub<B>` holds `10.214.<B>.1/24` and `dopriv<B>` `10.215.<B>.1/24` (the machine's end: the
API and the metadata service). A droplet's namespace `do-<B>-<id>` has `eth0` on the public
bridge (its public address, the default route via `.1`) and `eth1` on the private one; the
machine's ends of the cables are `d<B>p<id>` and `d<B>q<id>` (interface names have at most 15
characters: a checksum of the id stands in for ids too long). A reserved IP is an address on
the holder's `lo` that the machine routes to the holder's public address (`/32`), the way
DigitalOcean moves one. Firewall rules run inside the droplet's namespace (`firewall`).

Docker loads br_netfilter and drops forwarded traffic by default: each bridge gets a FORWARD
ACCEPT rule of its own, removed with the bridge.

Every function runs commands and raises `MachineError` with what failed; worker threads only.
"""

from __future__ import annotations

import random
import subprocess
import zlib
from dataclasses import dataclass

from sim.digitalocean import firewall
from sim.digitalocean.machines import FirewallPolicy, MachineError, MachineSpec, Networks

PUBLIC_PREFIX = "10.214"
PRIVATE_PREFIX = "10.215"
MAX_NAME = 15


def run(*command: str, check: bool = True, stdin: str | None = None) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, input=stdin, check=False)
    except OSError as err:
        raise MachineError(f"{command[0]}: {err.strerror or err}") from err
    if check and done.returncode != 0:
        reason = (done.stderr or done.stdout).strip() or f"exit {done.returncode}"
        raise MachineError(f"{' '.join(command)}: {reason}")
    return done.stdout


def pick_networks(attempts: int = 50) -> Networks:
    """Blocks `10.214.<B>` and `10.215.<B>` that no interface of this machine uses yet."""
    used = run("ip", "-o", "-4", "addr", "show")
    links = run("ip", "-o", "link", "show")
    for _ in range(attempts):
        number = random.randint(1, 250)
        networks = Networks(f"{PUBLIC_PREFIX}.{number}", f"{PRIVATE_PREFIX}.{number}")
        layout = Layout(networks)
        if (
            f" {networks.public}." not in used
            and f" {networks.private}." not in used
            and f" {layout.public_bridge}:" not in links
            and f" {layout.private_bridge}:" not in links
        ):
            return networks
    raise MachineError(f"no free {PUBLIC_PREFIX}.B block in {attempts} random tries")


@dataclass(frozen=True, slots=True)
class Layout:
    """Names of the bridges, namespaces and cables for one set of networks."""

    networks: Networks

    @property
    def number(self) -> str:
        return self.networks.public.rsplit(".", 1)[1]

    @property
    def public_bridge(self) -> str:
        return f"dopub{self.number}"

    @property
    def private_bridge(self) -> str:
        return f"dopriv{self.networks.private.rsplit('.', 1)[1]}"

    def namespace(self, droplet_id: int) -> str:
        return f"do-{self.number}-{droplet_id}"

    def cable(self, droplet_id: int, side: str) -> str:
        """The machine's end of a droplet's cable; `side` p (public) or q (private)."""
        name = f"d{self.number}{side}{droplet_id}"
        if len(name) > MAX_NAME:
            name = f"d{self.number}{side}{zlib.crc32(str(droplet_id).encode()):08x}"
        return name

    def enter(self, droplet_id: int) -> list[str]:
        """The argv prefix that runs a command in the droplet's network namespace."""
        return ["nsenter", f"--net=/run/netns/{self.namespace(droplet_id)}"]

    def bridges(self) -> list[tuple[str, str]]:
        return [
            (self.public_bridge, self.networks.gateway),
            (self.private_bridge, self.networks.private_gateway),
        ]


def namespaces() -> set[str]:
    return {line.split()[0] for line in run("ip", "netns", "list").splitlines() if line.strip()}


def ensure_bridges(layout: Layout) -> None:
    """Both bridges with the machine's addresses, and their FORWARD rules; idempotent."""
    for bridge, address in layout.bridges():
        if not run("ip", "link", "show", bridge, check=False):
            run("ip", "link", "add", bridge, "type", "bridge")
            run("ip", "addr", "add", f"{address}/24", "dev", bridge)
            run("ip", "link", "set", bridge, "up")
        rule = _forward(bridge)
        if not _has_rule(rule):
            run("iptables", "-w", "-I", *rule)


def remove_bridges(layout: Layout) -> None:
    """Undo `ensure_bridges`; missing parts are fine."""
    for bridge, _ in layout.bridges():
        while _has_rule(_forward(bridge)):
            run("iptables", "-w", "-D", *_forward(bridge))
        run("ip", "link", "del", bridge, check=False)


def _forward(bridge: str) -> tuple[str, ...]:
    return ("FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT")


def _has_rule(rule: tuple[str, ...] | list[str], enter: list[str] | None = None) -> bool:
    """True if iptables has this rule (in the namespace `enter` leads to, if given)."""
    command = [*(enter or []), "iptables", "-w", "-C", *rule]
    return subprocess.run(command, capture_output=True, check=False).returncode == 0


def ensure_namespace(layout: Layout, spec: MachineSpec) -> None:
    """The droplet's namespace, cabled to both bridges with its addresses; kept if it exists
    (it lives from create to destroy, across power cycles)."""
    namespace = layout.namespace(spec.id)
    if namespace in namespaces():
        return
    run("ip", "netns", "add", namespace)
    try:
        inside = ("ip", "-n", namespace)
        for side, device, bridge, address in (
            ("p", "eth0", layout.public_bridge, spec.public_ip),
            ("q", "eth1", layout.private_bridge, spec.private_ip),
        ):
            cable = layout.cable(spec.id, side)
            run(
                "ip",
                "link",
                "add",
                cable,
                "type",
                "veth",
                "peer",
                "name",
                device,
                "netns",
                namespace,
            )
            run("ip", "link", "set", cable, "master", bridge, "up")
            run(*inside, "addr", "add", f"{address}/24", "dev", device)
            run(*inside, "link", "set", device, "up")
        run(*inside, "link", "set", "lo", "up")
        run(*inside, "route", "add", "default", "via", layout.networks.gateway, "dev", "eth0")
    except MachineError:
        remove_namespace(layout, spec.id)
        raise


def remove_namespace(layout: Layout, droplet_id: int) -> None:
    """The namespace and its cables gone (the machine's ends go with their peers)."""
    if layout.namespace(droplet_id) in namespaces():
        run("ip", "netns", "del", layout.namespace(droplet_id))
    for side in ("p", "q"):
        run("ip", "link", "del", layout.cable(droplet_id, side), check=False)


def route_reserved(layout: Layout, ip: str, holder: MachineSpec | None) -> None:
    """`ip` on the holder's `lo` and routed to it by the machine; None: routed nowhere."""
    if holder is None:
        run("ip", "route", "del", f"{ip}/32", check=False)
        return
    run("ip", "-n", layout.namespace(holder.id), "addr", "replace", f"{ip}/32", "dev", "lo")
    run(
        *("ip", "route", "replace", f"{ip}/32"),
        *("via", holder.public_ip, "dev", layout.public_bridge),
    )


def release_reserved(layout: Layout, ip: str, droplet_id: int) -> None:
    """`ip` no longer on that droplet's `lo` (if its namespace is still there)."""
    namespace = layout.namespace(droplet_id)
    if namespace in namespaces():
        run("ip", "-n", namespace, "addr", "del", f"{ip}/32", "dev", "lo", check=False)


def apply_firewall(
    layout: Layout, droplet_id: int, policy: FirewallPolicy, always: list[firewall.Endpoint]
) -> None:
    """Enforce `policy` in the droplet's namespace: chains rewritten at once, then hooked."""
    try:
        text = firewall.restore_input(policy, always)
    except ValueError as err:
        raise MachineError(f"firewall of droplet {droplet_id}: {err}") from err
    enter = layout.enter(droplet_id)
    run(*enter, "iptables-restore", "-w", "--noflush", stdin=text)
    for hook, chain in firewall.JUMPS:
        rule = firewall.jump(hook, chain)
        if not _has_rule(rule, enter):
            run(*enter, "iptables", "-w", "-I", *rule)


def clear_firewall(layout: Layout, droplet_id: int) -> None:
    """No policy: the jumps and chains gone, everything allowed."""
    if layout.namespace(droplet_id) not in namespaces():
        return
    enter = layout.enter(droplet_id)
    for hook, chain in firewall.JUMPS:
        rule = firewall.jump(hook, chain)
        while _has_rule(rule, enter):
            run(*enter, "iptables", "-w", "-D", *rule)
    for _, chain in firewall.JUMPS:
        run(*enter, "iptables", "-w", "-F", chain, check=False)
        run(*enter, "iptables", "-w", "-X", chain, check=False)
