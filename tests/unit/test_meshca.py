"""The mesh CA: a leaf verifies against its CA only, names what clients check, lasts as long as
it says, and is the same bytes all day long."""

from __future__ import annotations

import datetime
import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, ServerVerifier, Store, VerificationError

from meshd.core.meshca import (
    CA_DAYS,
    LEAF_DAYS,
    CertificateError,
    MeshCA,
    issue_leaf,
    make_ca,
)
from meshd.core.trust import server_name

NOW = datetime.datetime(2026, 12, 2, 11, 30, tzinfo=datetime.UTC)


@pytest.fixture(scope="module")
def ca() -> MeshCA:
    return make_ca("seed-do", NOW)


def leaf(ca: MeshCA, address: str = "10.110.0.2", now: datetime.datetime = NOW) -> x509.Certificate:
    cert_pem, _ = issue_leaf(ca, "seed-do", "master", address, now)
    return x509.load_pem_x509_certificate(cert_pem)


def verifier(ca: MeshCA, name: x509.GeneralName) -> ServerVerifier:
    store = Store([x509.load_pem_x509_certificate(ca.cert_pem)])
    return PolicyBuilder().store(store).time(NOW).build_server_verifier(name)  # type: ignore[arg-type]


def test_a_leaf_verifies_against_its_ca_by_name_and_addresses(ca: MeshCA) -> None:
    cert = leaf(ca)
    for name in (
        x509.DNSName("nats.seed-do.meshd"),
        x509.IPAddress(ipaddress.ip_address("10.110.0.2")),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ):
        verifier(ca, name).verify(cert, [])
    with pytest.raises(VerificationError):
        verifier(ca, x509.DNSName("nats.other.meshd")).verify(cert, [])


def test_a_leaf_does_not_verify_against_another_ca(ca: MeshCA) -> None:
    with pytest.raises(VerificationError):
        verifier(make_ca("seed-do", NOW), x509.DNSName("nats.seed-do.meshd")).verify(leaf(ca), [])


def test_a_leaf_names_the_private_address_loopback_and_the_mesh_server_name(ca: MeshCA) -> None:
    names = leaf(ca).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["nats.seed-do.meshd"]
    assert names.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.110.0.2"),
        ipaddress.ip_address("127.0.0.1"),
    ]


def test_a_leaf_serves_and_routes_and_signs_nothing(ca: MeshCA) -> None:
    cert = leaf(ca)
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usage) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    constraints = ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca is True and constraints.path_length == 0


def test_the_ca_lasts_ten_years_and_a_leaf_two_from_its_day(ca: MeshCA) -> None:
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    assert ca_cert.not_valid_before_utc <= NOW
    assert ca_cert.not_valid_after_utc - NOW == datetime.timedelta(days=CA_DAYS)
    cert = leaf(ca)
    assert cert.not_valid_before_utc <= NOW.replace(hour=0, minute=0)
    lasts = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lasts == datetime.timedelta(days=LEAF_DAYS)
    assert CA_DAYS == 3650 and LEAF_DAYS == 730
    assert cert.not_valid_after_utc < ca_cert.not_valid_after_utc


def test_a_leaf_is_the_same_bytes_all_day_and_new_the_next(ca: MeshCA) -> None:
    first = issue_leaf(ca, "seed-do", "master", "10.110.0.2", NOW)
    later = issue_leaf(ca, "seed-do", "master", "10.110.0.2", NOW.replace(hour=23))
    tomorrow = issue_leaf(ca, "seed-do", "master", "10.110.0.2", NOW + datetime.timedelta(days=1))
    assert first == later
    assert tomorrow[0] != first[0]
    assert tomorrow[1] == first[1]  # the key stays the droplet's


def test_droplets_get_keys_of_their_own(ca: MeshCA) -> None:
    _, master = issue_leaf(ca, "seed-do", "master", "10.110.0.2", NOW)
    _, web = issue_leaf(ca, "seed-do", "web1", "10.110.0.3", NOW)
    assert master != web


def test_the_ca_key_is_p256_and_the_pem_file_reads_back(ca: MeshCA) -> None:
    again = MeshCA.from_pem(ca.to_pem())
    assert again == ca
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(ca.key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"


def test_a_file_without_both_halves_is_refused(ca: MeshCA) -> None:
    with pytest.raises(CertificateError):
        MeshCA.from_pem(ca.cert_pem)
    with pytest.raises(CertificateError):
        MeshCA.from_pem(ca.to_pem() + ca.cert_pem)


@pytest.mark.parametrize(
    ("mesh", "name"),
    [
        ("seed-do", "nats.seed-do.meshd"),
        ("My Mesh_1", "nats.my-mesh-1.meshd"),
        ("__", "nats.mesh.meshd"),
    ],
)
def test_the_server_name_is_a_dns_name_made_from_the_mesh(mesh: str, name: str) -> None:
    assert server_name(mesh) == name
