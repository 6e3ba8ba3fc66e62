"""The DigitalOcean stand-in's metadata service: paths answered the way DigitalOcean does,
and the asker known by its address."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import ClientSession, TCPConnector
from aiohttp.test_utils import TestServer

from sim.digitalocean.metadata import answer, make_app

DOCUMENT: dict[str, Any] = {
    "droplet_id": 3164494,
    "hostname": "web-1",
    "user_data": "#!/bin/sh\necho hi\n",
    "vendor_data": "#cloud-config\n",
    "public_keys": ["ssh-ed25519 AAAA one", "ssh-ed25519 BBBB two"],
    "auth_key": "secret",
    "region": "nyc3",
    "interfaces": {
        "public": [
            {
                "ipv4": {
                    "ip_address": "10.214.7.2",
                    "netmask": "255.255.255.0",
                    "gateway": "10.214.7.1",
                },
                "mac": "02:00:0a:d6:07:02",
                "type": "public",
            }
        ],
        "private": [
            {
                "ipv4": {
                    "ip_address": "10.215.7.2",
                    "netmask": "255.255.255.0",
                    "gateway": "10.215.7.1",
                },
                "mac": "02:00:0a:d7:07:02",
                "type": "private",
            }
        ],
    },
    "reserved_ip": {"ipv4": {"active": True, "ip_address": "10.214.7.200"}},
    "floating_ip": {"ipv4": {"active": False}},
    "dns": {"nameservers": ["10.214.7.1"]},
    "tags": ["web", "mesh"],
    "features": {"dhcp_enabled": False},
}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("id", "3164494"),
        ("hostname", "web-1"),
        ("user-data", "#!/bin/sh\necho hi\n"),
        ("vendor-data", "#cloud-config\n"),
        ("public-keys", "ssh-ed25519 AAAA one\nssh-ed25519 BBBB two"),
        ("region", "nyc3"),
        ("tags/", "web\nmesh"),
        ("interfaces/public/0/ipv4/address", "10.214.7.2"),
        ("interfaces/public/0/ipv4/netmask", "255.255.255.0"),
        ("interfaces/public/0/ipv4/gateway", "10.214.7.1"),
        ("interfaces/private/0/ipv4/address", "10.215.7.2"),
        ("interfaces/public/0/mac", "02:00:0a:d6:07:02"),
        ("reserved_ip/ipv4/active", "true"),
        ("reserved_ip/ipv4/ip_address", "10.214.7.200"),
        ("floating_ip/ipv4/active", "false"),
        ("dns/nameservers", "10.214.7.1"),
        ("features/dhcp_enabled", "false"),
    ],
)
def test_a_value_is_served_as_text(path: str, expected: str) -> None:
    assert answer(DOCUMENT, path) == expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (
            "",
            "id\nhostname\nuser-data\nvendor-data\npublic-keys\nauth-key\nregion\ninterfaces/\n"
            "reserved_ip/\nfloating_ip/\ndns/\ntags/\nfeatures/",
        ),
        ("interfaces/", "public/\nprivate/"),
        ("interfaces/public/", "0/"),
        ("interfaces/public/0/", "ipv4/\nmac\ntype"),
        ("interfaces/public/0/ipv4/", "address\nnetmask\ngateway"),
        ("reserved_ip/ipv4/", "active\nip_address"),
        ("dns/", "nameservers"),
    ],
)
def test_a_directory_lists_its_keys_with_sub_directories_marked(path: str, expected: str) -> None:
    assert answer(DOCUMENT, path) == expected


@pytest.mark.parametrize(
    "path",
    [
        "nothing",
        "interfaces/public/1/ipv4/address",
        "interfaces/public/0/ipv4/ip_address",
        "droplet_id",
        "hostname/",
        "interfaces",
        "interfaces/public/0/ipv4/address/more",
    ],
)
def test_an_unknown_path_is_not_found(path: str) -> None:
    assert answer(DOCUMENT, path) is None


def test_absent_user_data_is_not_found_nor_listed() -> None:
    document = {**DOCUMENT, "user_data": None}

    assert answer(document, "user-data") is None
    assert "user-data" not in (answer(document, "") or "").splitlines()


async def test_the_service_answers_by_the_askers_address() -> None:
    app = make_app({"127.0.0.1": DOCUMENT}.get)

    async with TestServer(app, host="127.0.0.1") as server:
        base = f"http://127.0.0.1:{server.port}"
        async with ClientSession() as asker:
            async with asker.get(f"{base}/metadata/v1/id") as response:
                assert (response.status, await response.text()) == (200, "3164494")
            async with asker.get(f"{base}/metadata/v1/interfaces/public/0/ipv4/") as response:
                assert await response.text() == "address\nnetmask\ngateway"
            async with asker.get(f"{base}/metadata/v1.json") as response:
                assert (await response.json())["droplet_id"] == 3164494
            async with asker.get(f"{base}/metadata/v1/nothing") as response:
                assert response.status == 404
        stranger = TCPConnector(local_addr=("127.0.0.2", 0))
        async with (
            ClientSession(connector=stranger) as asker,
            asker.get(f"{base}/metadata/v1/id") as response,
        ):
            assert response.status == 404
