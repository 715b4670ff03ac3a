"""The enrolling side of enrolment, shared by `custodes agent enroll` and `custodes login`.

A token `ctk1.{fingerprint}.{secret}` pins the server: the TLS handshake on the enrolment
port must present a certificate whose SHA-256 fingerprint is the token's before the secret
is sent. The caller then sends a fresh key's CSR to the Enrollment RPC and keeps what comes
back with `save_credentials` (every file 0600).

Everything here raises `EnrolmentError`; each command turns it into its own component's
error. grpc and cryptography are imported only when enrolling, so the agent daemon, which
imports this module through agent/enroll.py, stays light.
"""

from __future__ import annotations

import hashlib
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from protos.errors import CustodesError
from protos.files import write_atomic

if TYPE_CHECKING:
    from protos.wire import pb

TOKEN_PREFIX = "ctk1"  # noqa: S105 - a format tag, not a secret
TIMEOUT_S = 15.0
_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")
_SECRET = re.compile(r"^[A-Za-z0-9_-]{32,64}$")


class EnrolmentError(CustodesError):
    """Enrolling failed: a bad token or address, an unexpected server, or a refusal."""


@dataclass(frozen=True, slots=True)
class Token:
    """A parsed enrolment token: the pinned server fingerprint and the secret."""

    fingerprint: str
    secret: str

    @property
    def text(self) -> str:
        return f"{TOKEN_PREFIX}.{self.fingerprint}.{self.secret}"


def parse_token(text: str) -> Token:
    """Parse `ctk1.{fingerprint}.{secret}`; raise `EnrolmentError` naming what is wrong."""
    parts = text.strip().split(".")
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX:
        raise EnrolmentError(
            "the enrolment token is not of the form ctk1.FINGERPRINT.SECRET",
            hint="copy the whole line `custodes server enroll-token` printed",
        )
    if not _FINGERPRINT.match(parts[1]):
        raise EnrolmentError("the token's server fingerprint is not 64 lowercase hex digits")
    if not _SECRET.match(parts[2]):
        raise EnrolmentError("the token's secret is malformed, expected 32-64 base64url chars")
    return Token(parts[1], parts[2])


def split_address(address: str) -> tuple[str, int]:
    """HOST:PORT into its parts; `EnrolmentError` when it is not one."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise EnrolmentError(f"server address {address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def pinned_cert(host: str, port: int, fingerprint: str) -> bytes:
    """The server's certificate (PEM) if its SHA-256 fingerprint matches; EnrolmentError if not."""
    import ssl  # noqa: PLC0415 - only when enrolling: the daemon imports this module

    from cryptography import x509  # noqa: PLC0415 - only when enrolling: keeps the daemon light
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 - only when enrolling: keeps the daemon light

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # pinned by fingerprint below, before any secret
    context.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection((host, port), timeout=TIMEOUT_S) as sock,
            context.wrap_socket(sock, server_hostname=host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except OSError as exc:
        raise EnrolmentError(
            f"cannot reach the enrolment port {host}:{port} ({exc})",
            hint="check --server (the main port; enrolment is on port + 1 unless "
            "--enrol-port) and that `custodes server run` is up",
        ) from exc
    if der is None or hashlib.sha256(der).hexdigest() != fingerprint:
        seen = hashlib.sha256(der).hexdigest()[:16] if der else "none"
        raise EnrolmentError(
            f"the server at {host}:{port} presented certificate {seen}…, expected the "
            f"token's {fingerprint[:16]}…; refusing to send the token",
            hint="make sure --server names the server that issued the token",
        )
    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)


def make_csr(common_name: str) -> tuple[bytes, bytes]:
    """A fresh P-256 TLS key and a CSR with that CN, both PEM."""
    from cryptography import x509  # noqa: PLC0415 - only when enrolling: keeps the daemon light
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415 - only when enrolling: keeps the daemon light
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415 - only when enrolling: keeps the daemon light
    from cryptography.x509.oid import NameOID  # noqa: PLC0415 - only when enrolling: keeps the daemon light

    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return pem, csr.public_bytes(serialization.Encoding.PEM)


def request_certificate(
    host: str,
    port: int,
    token: Token,
    *,
    kind: str,
    common_name: str,
    evidence_public_key: bytes = b"",
    refused_hint: str,
) -> tuple[bytes, pb.EnrollResponse]:
    """Pin the server by `token`, then send a fresh key's CSR to Enroll on `host:port`.

    Returns (the new TLS key PEM, the server's response). Raises `EnrolmentError` when the
    server is unreachable, is not the token's, or refuses (then with `refused_hint`).
    """
    import grpc  # noqa: PLC0415 - only when enrolling: keeps the daemon light

    from protos.wire import pb, rpc  # noqa: PLC0415 - only when enrolling: keeps the daemon light

    server_pem = pinned_cert(host, port, token.fingerprint)
    key_pem, csr_pem = make_csr(common_name)
    credentials = grpc.ssl_channel_credentials(root_certificates=server_pem)
    # The pinned certificate names 127.0.0.1/localhost and the configured names; the
    # override keeps verification by that exact certificate when --server uses another.
    options = [("grpc.ssl_target_name_override", _name_in(server_pem, host))]
    request = pb.EnrollRequest(
        token=token.text,
        csr_pem=csr_pem,
        evidence_public_key=evidence_public_key,
        hostname=socket.gethostname(),
        kind=kind,
    )
    with grpc.secure_channel(f"{host}:{port}", credentials, options=options) as channel:
        try:
            response: pb.EnrollResponse = rpc.EnrollmentStub(channel).Enroll(
                request, timeout=TIMEOUT_S
            )
        except grpc.RpcError as exc:
            raise EnrolmentError(
                f"the server refused enrolment: {exc.details()}", hint=refused_hint
            ) from exc
    return key_pem, response


def save_credentials(directory: Path, files: dict[str, bytes]) -> None:
    """Write each named file into `directory` (made 0700) atomically with mode 0600.

    The files are written in order, so the caller puts the one that marks completion last.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name, data in files.items():
        write_atomic(directory / name, data, mode=0o600)


def _name_in(cert_pem: bytes, host: str) -> str:
    """A name the pinned certificate covers: `host` itself when it does."""
    from cryptography import x509  # noqa: PLC0415 - only when enrolling: keeps the daemon light

    cert = x509.load_pem_x509_certificate(cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = [str(n) for n in san.get_values_for_type(x509.DNSName)]
    ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    if host in names or host in ips:
        return host
    return names[0] if names else "localhost"
