"""The DigitalOcean stand-in's firewall: a policy as iptables rules in a droplet's namespace."""

from __future__ import annotations

import pytest

from sim.digitalocean.firewall import IN_CHAIN, OUT_CHAIN, restore_input, rules
from sim.digitalocean.machines import FirewallPolicy, FirewallRule

METADATA = [("10.214.7.1", 8169), ("10.215.7.1", 8169)]
BASE_IN = [
    ["-A", IN_CHAIN, "-i", "lo", "-j", "ACCEPT"],
    ["-A", IN_CHAIN, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
]
BASE_OUT = [
    ["-A", OUT_CHAIN, "-o", "lo", "-j", "ACCEPT"],
    ["-A", OUT_CHAIN, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
]


def inbound_rules(*rule: FirewallRule) -> list[list[str]]:
    """The rules a policy of these inbound rules adds, without the fixed ones."""
    produced = rules(FirewallPolicy(inbound=rule))
    return [line for line in produced if line[1] == IN_CHAIN][len(BASE_IN) : -1]


def test_an_empty_policy_denies_everything_but_loopback_replies_and_metadata() -> None:
    produced = rules(FirewallPolicy(), METADATA)

    assert produced == [
        *BASE_IN,
        ["-A", IN_CHAIN, "-j", "DROP"],
        *BASE_OUT,
        ["-A", OUT_CHAIN, "-d", "10.214.7.1/32", "-p", "tcp", "--dport", "8169", "-j", "ACCEPT"],
        ["-A", OUT_CHAIN, "-d", "10.215.7.1/32", "-p", "tcp", "--dport", "8169", "-j", "ACCEPT"],
        ["-A", OUT_CHAIN, "-j", "DROP"],
    ]


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (
            FirewallRule("tcp", "22", ("10.214.7.1",)),
            [["-s", "10.214.7.1/32", "-p", "tcp", "--dport", "22"]],
        ),
        (
            FirewallRule("udp", "8000-9000", ("10.0.0.0/8",)),
            [["-s", "10.0.0.0/8", "-p", "udp", "--dport", "8000:9000"]],
        ),
        (FirewallRule("tcp", "all", ("0.0.0.0/0",)), [["-p", "tcp"]]),
        (FirewallRule("tcp", "0", ("0.0.0.0/0", "::/0")), [["-p", "tcp"]]),
        (FirewallRule("udp", "", ("10.1.2.3/24",)), [["-s", "10.1.2.0/24", "-p", "udp"]]),
        (
            FirewallRule("icmp", "", ("10.1.2.3", "10.1.2.4")),
            [
                ["-s", "10.1.2.3/32", "-p", "icmp"],
                ["-s", "10.1.2.4/32", "-p", "icmp"],
            ],
        ),
        (
            FirewallRule("TCP", "443", ("10.1.2.3", "10.1.2.3")),
            [
                ["-s", "10.1.2.3/32", "-p", "tcp", "--dport", "443"],
            ],
        ),
        (FirewallRule("tcp", "22", ()), []),
    ],
    ids=["port", "range", "all", "zero-and-ipv6", "cidr", "icmp", "duplicate", "no-address"],
)
def test_an_inbound_rule_accepts_its_protocol_ports_and_sources(
    rule: FirewallRule, expected: list[list[str]]
) -> None:
    assert inbound_rules(rule) == [["-A", IN_CHAIN, *m, "-j", "ACCEPT"] for m in expected]


def test_outbound_rules_match_destinations() -> None:
    policy = FirewallPolicy(outbound=(FirewallRule("tcp", "4222", ("10.215.7.0/24",)),))

    produced = rules(policy)

    assert produced[-2:] == [
        ["-A", OUT_CHAIN, "-d", "10.215.7.0/24", "-p", "tcp", "--dport", "4222", "-j", "ACCEPT"],
        ["-A", OUT_CHAIN, "-j", "DROP"],
    ]
    assert ["-A", IN_CHAIN, "-j", "DROP"] in produced


@pytest.mark.parametrize(
    "rule",
    [
        FirewallRule("sctp", "22", ("0.0.0.0/0",)),
        FirewallRule("tcp", "ssh", ("0.0.0.0/0",)),
        FirewallRule("tcp", "9000-8000", ("0.0.0.0/0",)),
        FirewallRule("tcp", "70000", ("0.0.0.0/0",)),
        FirewallRule("tcp", "22", ("10.1.2",)),
    ],
    ids=["protocol", "port-name", "backwards-range", "port-too-high", "address"],
)
def test_a_malformed_rule_is_refused(rule: FirewallRule) -> None:
    with pytest.raises(ValueError, match="firewall rule"):
        rules(FirewallPolicy(inbound=(rule,)))


def test_the_restore_text_empties_and_refills_both_chains_at_once() -> None:
    policy = FirewallPolicy(inbound=(FirewallRule("tcp", "22", ("0.0.0.0/0",)),))

    text = restore_input(policy, METADATA)

    lines = text.splitlines()
    assert lines[:3] == ["*filter", f":{IN_CHAIN} - [0:0]", f":{OUT_CHAIN} - [0:0]"]
    assert f"-A {IN_CHAIN} -p tcp --dport 22 -j ACCEPT" in lines
    assert lines[-1] == "COMMIT"
    assert text.endswith("\n")


def test_applying_the_same_policy_twice_gives_the_same_text() -> None:
    policy = FirewallPolicy(
        inbound=(FirewallRule("tcp", "22", ("10.214.7.1",)),),
        outbound=(FirewallRule("udp", "53", ("0.0.0.0/0",)),),
    )

    assert restore_input(policy, METADATA) == restore_input(policy, METADATA)
