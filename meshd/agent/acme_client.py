"""Ordering a certificate from an ACME directory with certbot's `acme` library (RFC 8555),
for the `certificates` role (docs/tls.md). The library is synchronous (requests): every call
here blocks and runs in a thread (`asyncio.to_thread`); what happens between the calls
(publishing the HTTP-01 answers in the mesh) is the role's. Every failure is an `AcmeError`
whose reason is the CA's own words where it gave some.
"""

from __future__ import annotations

import datetime
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import requests
from acme import challenges, client, crypto_util, errors, messages
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from josepy.jwk import JWKRSA

from meshd.core.tls_chain import ChainError, Issued, describe
from protocol.errors import MeshError

USER_AGENT = "meshd (+https://github.com/meshd)"
NETWORK_TIMEOUT_S = 30
ORDER_TIMEOUT_S = 120.0  # validation and issuance of one order


class AcmeError(MeshError):
    """An order did not end with a certificate; `reason` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True, slots=True)
class Challenge:
    """An HTTP-01 challenge of one domain: the CA fetches `validation` (the key authorization)
    at `http://<domain>/.well-known/acme-challenge/<token>`."""

    domain: str
    token: str
    validation: str
    body: messages.ChallengeBody
    response: challenges.ChallengeResponse


@dataclass(frozen=True, slots=True)
class Order:
    resource: messages.OrderResource
    challenges: tuple[Challenge, ...]


def new_account_key() -> bytes:
    """An account key (RSA 2048, RS256: what every ACME CA accepts), PEM."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return _pem(key)


def new_certificate_key() -> bytes:
    """A certificate's key (ECDSA P-256), PEM."""
    return _pem(ec.generate_private_key(ec.SECP256R1()))


def _pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class AcmeSession:
    """One account on one directory. `directory_ca` (PEM) is the CA of the directory's own
    HTTPS certificate where it is private; empty: the system's CAs."""

    def __init__(self, directory: str, account_key: bytes, email: str, directory_ca: str) -> None:
        self.directory = directory
        self.email = email
        self._key = JWKRSA(key=serialization.load_pem_private_key(account_key, None))
        self._ca_file: Any = None
        verify: bool | str = True
        if directory_ca:
            self._ca_file = tempfile.NamedTemporaryFile("w", suffix=".pem")  # noqa: SIM115
            self._ca_file.write(directory_ca)
            self._ca_file.flush()
            verify = self._ca_file.name
        # requests takes a CA file where acme's signature says bool
        self._net = client.ClientNetwork(
            self._key,
            verify_ssl=verify,  # type: ignore[arg-type]
            user_agent=USER_AGENT,
            timeout=NETWORK_TIMEOUT_S,
        )
        self._client: client.ClientV2 | None = None

    def close(self) -> None:
        self._net.session.close()
        if self._ca_file is not None:
            self._ca_file.close()

    def register(self) -> None:
        """Open the account: created on the first order, found again by its key after."""
        with _translated("account"):
            directory = client.ClientV2.get_directory(self.directory, self._net)
            self._client = client.ClientV2(directory, self._net)
            registration = messages.NewRegistration.from_data(
                email=self.email or None, terms_of_service_agreed=True
            )
            try:
                self._client.new_account(registration)
            except errors.ConflictError as existing:  # this key's account: use it
                self._net.account = messages.RegistrationResource(
                    body=messages.Registration(), uri=str(existing.location)
                )

    def order(self, domains: tuple[str, ...], key: bytes) -> Order:
        """A new order for `domains` with the certificate key `key` and its HTTP-01
        challenges (none for a domain the CA already trusts this account with)."""
        acme = self._acme()
        with _translated("order"):
            resource = acme.new_order(crypto_util.make_csr(key, list(domains)))
            found = []
            for authorization in resource.authorizations:
                if authorization.body.status == messages.STATUS_VALID:
                    continue
                domain = str(authorization.body.identifier.value)
                http = [
                    c
                    for c in authorization.body.challenges
                    if isinstance(c.chall, challenges.HTTP01)
                ]
                if not http:
                    raise AcmeError(f"{domain}: the CA offers no http-01 challenge")
                body = http[0]
                response, validation = body.response_and_validation(self._key)
                found.append(
                    Challenge(domain, body.chall.encode("token"), validation, body, response)
                )
        return Order(resource, tuple(found))

    def answer(self, challenge: Challenge) -> None:
        """Tell the CA that the answer to `challenge` is published."""
        with _translated(f"challenge of {challenge.domain}"):
            self._acme().answer_challenge(challenge.body, challenge.response)

    def finalize(self, order: Order) -> Issued:
        """Wait for the CA to validate every domain, then for the certificate."""
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=ORDER_TIMEOUT_S)
        with _translated("issuance"):
            done = self._acme().poll_and_finalize(order.resource, deadline)
        if not done.fullchain_pem:
            raise AcmeError("the CA finished the order without a certificate")
        try:
            return describe(done.fullchain_pem)
        except ChainError as err:
            raise AcmeError(f"the CA sent a certificate that cannot be read: {err}") from None

    def _acme(self) -> client.ClientV2:
        if self._client is None:
            self.register()
        assert self._client is not None
        return self._client


@contextmanager
def _translated(what: str) -> Iterator[None]:
    try:
        yield
    except AcmeError:
        raise
    except messages.Error as err:  # the CA's problem document
        detail = err.detail or err.description or err.typ
        raise AcmeError(f"{what}: the CA refused: {detail} ({err.typ})") from None
    except errors.ValidationError as err:
        raise AcmeError(f"{what}: {_validation_failures(err)}") from None
    except errors.TimeoutError:
        raise AcmeError(f"{what}: the CA did not finish within {ORDER_TIMEOUT_S:.0f} s") from None
    except requests.exceptions.SSLError as err:
        raise AcmeError(f"{what}: the directory's certificate is not trusted: {err}") from None
    except requests.exceptions.RequestException as err:
        raise AcmeError(f"{what}: the directory did not answer: {_short(err)}") from None
    except errors.Error as err:
        raise AcmeError(f"{what}: {err}") from None
    except Exception as err:  # noqa: BLE001 - an answer the library could not take: a failure
        # like any other, so that the role backs off instead of ordering again at once
        raise AcmeError(f"{what}: unexpected {type(err).__name__}: {_short(err)}") from None


def _validation_failures(err: errors.ValidationError) -> str:
    said = []
    for authorization in err.failed_authzrs:
        for challenge in authorization.body.challenges:
            if challenge.error is not None:
                problem = challenge.error
                text = problem.detail or problem.description or problem.typ
                said.append(f"{authorization.body.identifier.value}: {text}")
    return "validation failed: " + "; ".join(said)


def _short(err: Exception) -> str:
    text = str(err)
    return text if len(text) <= 200 else text[:197] + "..."
