"""The server's certificate authority and enrolment tokens (pure: no sockets, no database).

Keys are ECDSA P-256 (what every TLS stack and gRPC accept). The CA signs the server's TLS
certificate (127.0.0.1, localhost and configured names) and each enrolled agent's or
person's client certificate; the identity is the subject CN and a SAN URI
`custodes://agent/{client}/{agent_id}` or `custodes://person/{client}/{name}`.

A token is `ctk1.{fingerprint}.{secret}`: the SHA-256 fingerprint of the server certificate
(so the agent pins the server before it sends anything) and a random secret the server keeps
only as a SHA-256 hash, single use, with an expiry.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from protos import enrolment
from protos.errors import CustodesError

URI_SCHEME = "custodes"
KINDS = ("agent", "person")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")
MAX_CSR_BYTES = 8192


class EnrolmentError(CustodesError):
    """Enrolment input is bad: a malformed token, CSR or identity."""


class TokenRefusedError(EnrolmentError):
    """A token is unknown, already used, or expired."""


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a client certificate speaks for."""

    kind: str  # "agent" or "person"
    client: str
    name: str  # agent id or person name

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise EnrolmentError(f"identity kind {self.kind!r} is unknown, expected one of {KINDS}")
        check_name("client", self.client)
        check_name(self.kind, self.name)

    @property
    def uri(self) -> str:
        return f"{URI_SCHEME}://{self.kind}/{self.client}/{self.name}"

    @classmethod
    def from_uri(cls, uri: str) -> Identity:
        """Parse `custodes://KIND/CLIENT/NAME`; raise `EnrolmentError` for anything else."""
        prefix = f"{URI_SCHEME}://"
        parts = uri[len(prefix) :].split("/") if uri.startswith(prefix) else []
        if len(parts) != 3:
            raise EnrolmentError(
                f"certificate identity {uri!r} is not of the form custodes://KIND/CLIENT/NAME"
            )
        return cls(kind=parts[0], client=parts[1], name=parts[2])


def check_name(what: str, value: str) -> str:
    """Return `value` if it is a safe identifier (letters, digits, `.`, `_`, `-`; ≤ 63)."""
    if not _NAME.match(value):
        raise EnrolmentError(
            f"{what} name {value!r} is not allowed, expected 1-63 letters, digits, '.', '_' "
            "or '-', starting with a letter or digit"
        )
    return value


@dataclass(frozen=True, slots=True)
class KeyAndCert:
    """A private key and its certificate, both PEM."""

    key_pem: bytes
    cert_pem: bytes


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise EnrolmentError("the CA key is not an ECDSA key, expected ECDSA P-256")
    return key


def create_ca(name: str, now: dt.datetime, years: int = 10) -> KeyAndCert:
    """A new self-signed CA for one server installation."""
    key = _new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Custodes CA {name}")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365 * years))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyAndCert(_key_pem(key), cert.public_bytes(serialization.Encoding.PEM))


def _leaf(
    ca: KeyAndCert,
    *,
    public_key: ec.EllipticCurvePublicKey,
    common_name: str,
    sans: Sequence[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    now: dt.datetime,
    days: int,
) -> bytes:
    ca_key = _load_key(ca.key_pem)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def issue_server_cert(
    ca: KeyAndCert, names: Sequence[str], now: dt.datetime, days: int = 825
) -> KeyAndCert:
    """A TLS server certificate for 127.0.0.1, localhost and `names` (DNS names or IPs)."""
    sans: list[x509.GeneralName] = []
    for name in ["127.0.0.1", "localhost", *names]:
        try:
            general: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(name))
        except ValueError:
            general = x509.DNSName(name)
        if general not in sans:
            sans.append(general)
    key = _new_key()
    cert = _leaf(
        ca,
        public_key=key.public_key(),
        common_name="custodes-server",
        sans=sans,
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        now=now,
        days=days,
    )
    return KeyAndCert(_key_pem(key), cert)


def sign_csr(
    ca: KeyAndCert, csr_pem: bytes, identity: Identity, now: dt.datetime, days: int = 397
) -> bytes:
    """Sign a client CSR for `identity`; the CSR contributes only its (P-256) public key.

    Raises `EnrolmentError` when the CSR is not PEM, its self-signature fails, or its key is
    not ECDSA P-256.
    """
    if len(csr_pem) > MAX_CSR_BYTES:
        raise EnrolmentError(f"the CSR is {len(csr_pem)} bytes, expected at most {MAX_CSR_BYTES}")
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise EnrolmentError(f"the CSR is not a PEM certificate request ({exc})") from exc
    if not csr.is_signature_valid:
        raise EnrolmentError("the CSR's self-signature does not verify, expected a signed CSR")
    public = csr.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name != "secp256r1":
        raise EnrolmentError("the CSR's key is not ECDSA P-256, expected a P-256 key")
    return _leaf(
        ca,
        public_key=public,
        common_name=identity.name,
        sans=[x509.UniformResourceIdentifier(identity.uri)],
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        now=now,
        days=days,
    )


def fingerprint(cert_pem: bytes) -> str:
    """The SHA-256 fingerprint of a PEM certificate's DER bytes, lowercase hex."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return cert.fingerprint(hashes.SHA256()).hex()


def identity_of(cert_pem: bytes) -> Identity:
    """The identity a client certificate carries in its SAN URI (the CN must agree)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound as exc:
        raise EnrolmentError("the certificate has no subject alternative name") from exc
    uris = list(san.get_values_for_type(x509.UniformResourceIdentifier))
    if len(uris) != 1:
        raise EnrolmentError(f"the certificate has {len(uris)} identity URIs, expected exactly 1")
    identity = Identity.from_uri(uris[0])
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1 or cns[0].value != identity.name:
        raise EnrolmentError(f"the certificate CN does not match its identity URI {identity.uri!r}")
    return identity


# --- tokens --------------------------------------------------------------------------------


class Token(enrolment.Token):
    """A parsed enrolment token (protos/enrolment.py) and what the server stores for it."""

    __slots__ = ()

    @property
    def secret_hash(self) -> bytes:
        return hash_secret(self.secret)


def new_token(server_fingerprint: str) -> Token:
    """A fresh random token pinning `server_fingerprint`."""
    if not _FINGERPRINT.match(server_fingerprint):
        raise EnrolmentError("server fingerprint is not 64 lowercase hex digits")
    return Token(server_fingerprint, secrets.token_urlsafe(32))


def parse_token(text: str) -> Token:
    """Parse `ctk1.{fingerprint}.{secret}`; raise `EnrolmentError` naming what is wrong."""
    try:
        token = enrolment.parse_token(text)
    except enrolment.EnrolmentError as exc:
        raise EnrolmentError(str(exc), hint=exc.hint) from exc
    return Token(token.fingerprint, token.secret)


def hash_secret(secret: str) -> bytes:
    """What the server stores for a token: a domain-separated SHA-256 of the secret."""
    return hashlib.sha256(b"custodes/token/v1\0" + secret.encode()).digest()


def same_fingerprint(a: str, b: str) -> bool:
    """Constant-time comparison of two fingerprints."""
    return hmac.compare_digest(a.encode(), b.encode())
