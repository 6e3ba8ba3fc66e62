"""The mesh's certificate authority for NATS TLS (docs/digitalocean.md, "TLS on NATS"): pure
functions from values to PEM bytes, no files.

One CA per mesh (ECDSA P-256, 10 years) signs one leaf per droplet (2 years) that serves
nats-server's client port and its routes: its names are the droplet's private address,
127.0.0.1 and `nats.<mesh>.meshd`, the name every client verifies (`tls_hostname`), so a
client reaching a server through an SSH tunnel on a local port still checks it.

A leaf is the same bytes for the same CA, droplet, address and UTC day: its key is derived
from the CA's key (HMAC) and ECDSA signs deterministically (RFC 6979), so a bootstrap run again
the same day writes nothing new and restarts nothing. Whoever holds the CA's key could issue
any leaf anyway (every droplet holds it, to bootstrap the droplets it creates).
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import ipaddress
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshd.core.trust import server_name

CA_DAYS = 3650
LEAF_DAYS = 730
SKEW = datetime.timedelta(hours=1)  # a leaf is valid from before its day: clocks differ
_CURVE = ec.SECP256R1()
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z ]+)-----.*?-----END \1-----\n?", re.S)
_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551  # of P-256


class CertificateError(ValueError):
    """PEM that is not a mesh CA (its certificate and its ECDSA key)."""


@dataclass(frozen=True, slots=True)
class MeshCA:
    """The CA's certificate and private key, PEM. The key is a secret: files 0600 only."""

    cert_pem: bytes
    key_pem: bytes

    def to_pem(self) -> bytes:
        """Key and certificate in one PEM file (the operator's copy)."""
        return self.key_pem + self.cert_pem

    @classmethod
    def from_pem(cls, data: bytes) -> MeshCA:
        blocks = [m for m in _PEM_BLOCK.finditer(data)]
        found = {m.group(1): m.group(0) for m in blocks}
        if len(blocks) != 2 or set(found) != {b"CERTIFICATE", b"PRIVATE KEY"}:
            raise CertificateError("a mesh CA file holds one PRIVATE KEY and one CERTIFICATE")
        return cls(found[b"CERTIFICATE"], found[b"PRIVATE KEY"])


def make_ca(mesh: str, now: datetime.datetime) -> MeshCA:
    """A new CA for `mesh`, valid for CA_DAYS from `now` (an aware datetime)."""
    key = ec.generate_private_key(_CURVE)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"meshd {mesh} CA")])
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - SKEW)
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return MeshCA(_cert_pem(cert), _key_pem(key))


def issue_leaf(
    ca: MeshCA, mesh: str, droplet: str, address: str, now: datetime.datetime
) -> tuple[bytes, bytes]:
    """The certificate and key (PEM) of `droplet` at private `address`, for nats-server's
    client port and routes; the same bytes all of `now`'s UTC day."""
    ca_cert, ca_key = load_ca(ca)
    day = now.astimezone(datetime.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    seed = _derive(ca_key, f"key\0{droplet}\0{address}")
    key = ec.derive_private_key(seed % (_ORDER - 1) + 1, _CURVE)
    serial = _derive(ca_key, f"serial\0{droplet}\0{address}\0{day.date()}") >> 97  # 159 bits
    names: list[x509.GeneralName] = [
        x509.DNSName(server_name(mesh)),
        x509.IPAddress(ipaddress.ip_address(address)),
    ]
    if address != "127.0.0.1":
        names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    public = key.public_key()
    ca_public = ca_key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, droplet)]))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(max(serial, 1))
        .not_valid_before(day - SKEW)
        .not_valid_after(day - SKEW + datetime.timedelta(days=LEAF_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(cert_sign=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )  # routes: each server is the other's client
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public), critical=False
        )
        .sign(ca_key, hashes.SHA256(), ecdsa_deterministic=True)
    )
    return _cert_pem(cert), _key_pem(key)


def expires(cert_pem: bytes) -> datetime.datetime:
    """When the certificate `cert_pem` ends (UTC)."""
    try:
        return x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc
    except ValueError as err:
        raise CertificateError(f"read a certificate: {err}") from None


def load_ca(ca: MeshCA) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(ca.cert_pem)
        key = serialization.load_pem_private_key(ca.key_pem, password=None)
    except ValueError as err:
        raise CertificateError(f"read the mesh CA: {err}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError("the mesh CA's key is not an ECDSA key")
    return cert, key


def _derive(key: ec.EllipticCurvePrivateKey, purpose: str) -> int:
    secret = key.private_numbers().private_value.to_bytes(32, "big")
    return int.from_bytes(hmac.digest(secret, purpose.encode(), hashlib.sha256), "big")


def _usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
