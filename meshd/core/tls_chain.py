"""What a certificate chain says of itself, and whether a key is its leaf's (pure, PEM in):
for the `certificates` role, which stores what it was issued, and the lb holder, which
serves a chain only with its own key (docs/tls.md)."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID


class ChainError(ValueError):
    """A chain that cannot be read."""


@dataclass(frozen=True, slots=True)
class Issued:
    """A certificate chain (PEM, leaf first) and what it says of itself."""

    chain: str
    issuer: str
    not_before: float
    not_after: float
    covers: tuple[str, ...]


def describe(chain: str) -> Issued:
    """What a PEM chain's leaf says of itself."""
    try:
        leaf = x509.load_pem_x509_certificates(chain.encode())[0]
    except ValueError as err:
        raise ChainError(str(err)) from None
    try:
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        covers = tuple(sorted(names.value.get_values_for_type(x509.DNSName)))
    except x509.ExtensionNotFound:
        covers = ()
    issuer = leaf.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    return Issued(
        chain=chain,
        issuer=str(issuer[0].value) if issuer else leaf.issuer.rfc4514_string(),
        not_before=leaf.not_valid_before_utc.timestamp(),
        not_after=leaf.not_valid_after_utc.timestamp(),
        covers=covers,
    )


def key_matches(chain: str, key: bytes) -> bool:
    """Whether `key` (PEM) is the private half of the chain's leaf."""
    try:
        leaf = x509.load_pem_x509_certificates(chain.encode())[0]
        private = serialization.load_pem_private_key(key, None)
    except (ValueError, TypeError):
        return False
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return bool(
        leaf.public_key().public_bytes(der, spki) == private.public_key().public_bytes(der, spki)
    )
