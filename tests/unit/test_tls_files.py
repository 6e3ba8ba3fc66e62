"""What the lb holder serves (meshd.agent.tls_files): each certificate whose key is here and
matches, as 0600 files named by their digest; the one served before while a renewed
certificate's key has not arrived (or does not match); files no set names any more removed."""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, load_pem_private_key
from cryptography.x509.oid import NameOID

from meshd.agent.acme_client import new_certificate_key
from meshd.agent.tls_files import ServedCertificates
from protocol.certs import Certificate
from tests.support.memstore import MemoryStore

NAMES = ("shop.example.com",)


def self_signed(key_pem: bytes) -> str:
    key = load_pem_private_key(key_pem, None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAMES[0])])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=90))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    return cert.public_bytes(Encoding.PEM).decode()


def record(chain: str) -> Certificate:
    return Certificate(project="shop", env="prod", domains=NAMES, covers=NAMES, chain=chain,
                       key_secret="tls_key-shop-prod", issued_at=1.0)  # fmt: skip


def test_served_while_its_key_matches_the_old_one_kept_until_the_new_key_arrives(
    tmp_path: Path,
) -> None:
    keys: dict[str, bytes] = {}
    served = ServedCertificates(MemoryStore(), tmp_path / "tls", keys.get)
    first_key = new_certificate_key()
    first = self_signed(first_key)
    served.records = {("shop", "prod"): record(first)}
    assert served.current() == {}  # its key has not reached this droplet yet

    keys["tls_key-shop-prod"] = first_key
    (files,) = served.current().values()
    assert Path(files.certificate).read_text() == first
    assert Path(files.key).read_bytes() == first_key
    assert Path(files.key).stat().st_mode & 0o777 == 0o600
    assert files.covers == NAMES

    second_key = new_certificate_key()
    served.records = {("shop", "prod"): record(self_signed(second_key))}
    assert served.current() == {("shop", "prod"): files}  # the old key still sealed here

    keys["tls_key-shop-prod"] = second_key
    (renewed,) = served.current().values()
    assert renewed.certificate != files.certificate
    assert Path(files.certificate).exists()  # the configuration before may still be restarted
    served.current()
    assert not Path(files.certificate).exists() and not Path(files.key).exists()
    assert sorted(p.name for p in (tmp_path / "tls").iterdir()) == sorted(
        [Path(renewed.certificate).name, Path(renewed.key).name]
    )
