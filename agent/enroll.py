"""`custodes agent enroll`: exchange a single-use token for a client certificate.

The token (`ctk1.{fingerprint}.{secret}`) pins the server: the TLS handshake must present a
certificate whose SHA-256 fingerprint is the one in the token before the secret is sent.
The agent makes its TLS key and CSR here, registers its evidence key (the epoch-0 public
key of agent/keys.py), and saves what it gets in `state_dir/tls/` (0600).

The server serves Enrollment on its enrolment port, by default the main port + 1
(server/app.py); `--server HOST:PORT` names the main port, `--enrol-port` overrides.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from agent import keys as epoch_keys
from agent.config import AgentConfig, AgentError, load_config
from protos.files import write_atomic

_TOKEN = re.compile(r"^ctk1\.([0-9a-f]{64})\.([A-Za-z0-9_-]{32,64})$")
TIMEOUT_S = 15.0


class EnrolError(AgentError):
    """Enrolment failed: a bad token, an unexpected server, or a refusal."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """Where an enrolled agent keeps its TLS material and the server's keys."""

    state_dir: Path

    @property
    def directory(self) -> Path:
        return self.state_dir / "tls"

    @property
    def key(self) -> Path:
        return self.directory / "agent.key"

    @property
    def cert(self) -> Path:
        return self.directory / "agent.crt"

    @property
    def ca(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def server_pub(self) -> Path:
        return self.directory / "server.pub"

    @property
    def info(self) -> Path:
        return self.directory / "server.json"

    def exists(self) -> bool:
        """True when enrolment completed (the info file is written last)."""
        return self.info.is_file()

    def read(self, path: Path, limit: int = 64 * 1024) -> bytes:
        """One bounded read of a credential file."""
        try:
            with path.open("rb") as f:
                return f.read(limit)
        except OSError as exc:
            raise EnrolError(
                f"cannot read {path} ({exc.strerror})",
                hint="enrol the agent first: `custodes agent enroll --server ... --token ...`",
            ) from exc

    def server_info(self) -> dict[str, str]:
        """What enrolment recorded about the server (address, enrolment address, origin)."""
        value = json.loads(self.read(self.info))
        if not isinstance(value, dict):
            raise EnrolError(f"{self.info} is not a JSON object")
        return {str(k): str(v) for k, v in value.items()}


def parse_token(text: str) -> tuple[str, str]:
    """(server fingerprint, secret) from a token; EnrolError if it is not one."""
    m = _TOKEN.match(text.strip())
    if not m:
        raise EnrolError(
            "the enrolment token is not of the form ctk1.FINGERPRINT.SECRET",
            hint="copy the whole line `custodes server enroll-token` printed",
        )
    return m.group(1), m.group(2)


def fetch_server_cert(host: str, port: int, fingerprint: str) -> bytes:
    """The server's certificate (PEM) if its SHA-256 fingerprint matches; EnrolError if not."""
    from cryptography import x509  # noqa: PLC0415 - only when enrolling: keeps the daemon light
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 - only when enrolling: keeps the daemon light

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # we pin by fingerprint below, before trusting it
    context.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection((host, port), timeout=TIMEOUT_S) as sock,
            context.wrap_socket(sock, server_hostname=host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except OSError as exc:
        raise EnrolError(
            f"cannot reach the enrolment port {host}:{port} ({exc})",
            hint="check --server and that `custodes server run` is up",
        ) from exc
    if der is None or hashlib.sha256(der).hexdigest() != fingerprint:
        seen = hashlib.sha256(der).hexdigest()[:16] if der else "none"
        raise EnrolError(
            f"the server at {host}:{port} presented certificate {seen}…, expected the "
            f"token's {fingerprint[:16]}…; refusing to send the token",
            hint="make sure --server names the server that issued the token",
        )
    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)


def make_csr(agent_id: str) -> tuple[bytes, bytes]:
    """A fresh P-256 TLS key and a CSR with CN = agent id, both PEM."""
    from cryptography import x509  # noqa: PLC0415 - only when enrolling: keeps the daemon light
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415 - only when enrolling: keeps the daemon light
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415 - only when enrolling: keeps the daemon light
    from cryptography.x509.oid import NameOID  # noqa: PLC0415 - only when enrolling: keeps the daemon light

    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, agent_id)]))
        .sign(key, hashes.SHA256())
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return pem, csr.public_bytes(serialization.Encoding.PEM)


def split_address(address: str) -> tuple[str, int]:
    """HOST:PORT into its parts; EnrolError when it is not one."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise EnrolError(f"server address {address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def enroll(cfg: AgentConfig, server: str, token: str, enrol_port: int | None = None) -> Credentials:
    """Enrol this agent with `server` using `token`; save the credentials; return them."""
    import grpc  # noqa: PLC0415 - only when enrolling: keeps the daemon light

    from protos.wire import pb, rpc  # noqa: PLC0415 - only when enrolling: keeps the daemon light

    fingerprint, _ = parse_token(token)
    host, port = split_address(server)
    eport = enrol_port or port + 1
    creds = Credentials(cfg.state_dir)
    if creds.exists():
        raise EnrolError(
            f"this agent is already enrolled ({creds.info} exists)",
            hint="remove the state directory's tls/ only if the server revoked this agent",
        )
    server_pem = fetch_server_cert(host, eport, fingerprint)
    key = epoch_keys.load_or_create(cfg.key_dir, cfg.origin)
    first = (cfg.key_dir / "epoch-0.vkey").read_text(encoding="ascii").strip()
    evidence_key = _vkey_public(first) if key.epoch else key.public
    key_pem, csr_pem = make_csr(cfg.agent_id)
    credentials = grpc.ssl_channel_credentials(root_certificates=server_pem)
    # The pinned certificate names 127.0.0.1/localhost and the configured names; the
    # override keeps verification by that exact certificate when --server uses another.
    options = [("grpc.ssl_target_name_override", _name_in(server_pem, host))]
    with grpc.secure_channel(f"{host}:{eport}", credentials, options=options) as channel:
        try:
            response: pb.EnrollResponse = rpc.EnrollmentStub(channel).Enroll(
                pb.EnrollRequest(
                    token=token.strip(),
                    csr_pem=csr_pem,
                    evidence_public_key=evidence_key,
                    hostname=socket.gethostname(),
                    kind="agent",
                ),
                timeout=TIMEOUT_S,
            )
        except grpc.RpcError as exc:
            raise EnrolError(
                f"the server refused enrolment: {exc.details()}",
                hint="ask for a new token with `custodes server enroll-token --client ...`",
            ) from exc
    if response.client != cfg.client or response.identity != cfg.agent_id:
        raise EnrolError(
            f"the server enrolled {response.identity!r} of client {response.client!r}, "
            f"expected {cfg.agent_id!r} of client {cfg.client!r} (agent.toml)",
            hint="ask for a token for the client named in agent.toml",
        )
    creds.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(creds.key, key_pem, mode=0o600)
    write_atomic(creds.cert, bytes(response.certificate_pem), mode=0o600)
    write_atomic(creds.ca, bytes(response.ca_pem), mode=0o600)
    write_atomic(creds.server_pub, bytes(response.server_signing_public_key), mode=0o600)
    info = {
        "server": server,
        "enrol": f"{host}:{eport}",
        "server_origin": response.server_log_origin,
        "fingerprint": fingerprint,
    }
    write_atomic(creds.info, json.dumps(info, indent=2).encode() + b"\n", mode=0o600)
    return creds


def _vkey_public(vkey: str) -> bytes:
    from protos.evidence.note import NoteVerifier  # noqa: PLC0415 - only after a rotation

    return NoteVerifier.from_vkey(vkey).public


def _name_in(cert_pem: bytes, host: str) -> str:
    from cryptography import x509  # noqa: PLC0415 - only when enrolling: keeps the daemon light

    cert = x509.load_pem_x509_certificate(cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = [str(n) for n in san.get_values_for_type(x509.DNSName)]
    ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    if host in names or host in ips:
        return host
    return names[0] if names else "localhost"


def register_enroll(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `enroll` to the `agent` group's sub-commands (called by agent/cli.py)."""
    p = commands.add_parser("enroll", help="get a client certificate from the server")
    p.add_argument("--server", required=True, help="HOST:PORT of the server's main port")
    p.add_argument("--token", required=True, help="from `custodes server enroll-token`")
    p.add_argument("--config", required=True, type=Path, help="agent.toml")
    p.add_argument("--enrol-port", type=int, default=None, help="default: the port + 1")
    p.set_defaults(func=_enroll_command)


def _enroll_command(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    creds = enroll(cfg, args.server, args.token, args.enrol_port)
    print(f"enrolled agent {cfg.agent_id!r} of client {cfg.client!r}")
    print(f"credentials in {creds.directory}")
    return 0
