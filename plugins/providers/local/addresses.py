"""Addresses of local droplets: a random block 127.A.B whose first addresses nothing uses
(network namespaces: 10.213.B, `netns`), droplets from `.2` on, and the mesh's reserved entry
address, which the `lb` holder's load balancer binds (on loopback any process could; the
account keeps the fenced bookkeeping) or which is routed to the holder's namespace."""

from __future__ import annotations

import random
import socket

from plugins.providers import Fence, ProviderError, StaleFence
from plugins.providers.local import netns
from plugins.providers.local.account import Account, AccountStore, DropletState

PROBE_HOSTS = (2, 3, 4)
PROBE_PORTS = (4222, 8080)
BLOCK_ATTEMPTS = 50
RESERVED_HOST = 1  # the mesh's entry address on loopback


def port_open(host: str, port: int) -> bool:
    """True if something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def pick_block(use_netns: bool = False) -> str:
    """A random 127.A.B block whose first droplet addresses have no NATS or web port open
    (with network namespaces: a free 10.213.B)."""
    if use_netns:
        try:
            return netns.pick_block()
        except netns.NetnsError as err:
            raise ProviderError("pick an address block", str(err)) from err
    for _ in range(BLOCK_ATTEMPTS):
        block = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}"
        hosts = (f"{block}.{host}" for host in PROBE_HOSTS)
        if not any(port_open(host, port) for host in hosts for port in PROBE_PORTS):
            return block
    raise ProviderError("pick an address block", f"{BLOCK_ATTEMPTS} random blocks were in use")


def reserve(account: Account, use_netns: bool) -> str:
    """`<block>.1` (`.254` in namespaces): droplets get addresses from `.2` on."""
    if account.reserved is None:
        host = netns.RESERVED_HOST if use_netns else RESERVED_HOST
        account.reserved = {"address": f"{account.block}.{host}"}
    return str(account.reserved["address"])


def assign(
    store: AccountStore,
    account: Account,
    state: DropletState,
    address: str,
    fence: Fence | None,
    use_netns: bool,
) -> None:
    """Point the reserved address at `state`'s droplet. The fence is checked against the
    address's own, not the droplet's: other roles (the provisioner) fence actions on the same
    droplet."""
    action = f"assign reserved address {address} to droplet {state.id}"
    reserved = account.reserved or {}
    if reserved.get("address") != address:
        raise ProviderError(action, "not this account's reserved address")
    seen = reserved.get("fence")
    if fence is not None and seen is not None and fence.revision < seen:
        store.append_action("assign_reserved_address", state, fence, "refused: stale")
        raise StaleFence(action, fence, seen)
    revision = fence.revision if fence is not None else seen
    if use_netns:
        layout = netns.Layout(account.block)
        try:
            netns.assign_reserved(layout, state.id, state.address, reserved.get("droplet"))
        except netns.NetnsError as err:
            raise ProviderError(action, str(err)) from err
    account.reserved = {**reserved, "droplet": state.id, "fence": revision}
