"""`custodes agent enroll`: exchange a single-use token for a client certificate.

The token (`ctk1.{fingerprint}.{secret}`) pins the server before its secret is sent
(protos/enrolment.py, shared with `custodes login`). The agent sends a fresh TLS key's CSR,
registers its evidence key (the epoch-0 public key of agent/keys.py), and saves what it
gets in `state_dir/tls/` (0600).

The server serves Enrollment on its enrolment port, by default the main port + 1
(server/app.py); `--server HOST:PORT` names the main port, `--enrol-port` overrides.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from agent import keys as epoch_keys
from agent.config import AgentConfig, AgentError, load_config
from protos import enrolment
from protos.enrolment import make_csr

__all__ = ["Credentials", "EnrolError", "enroll", "make_csr", "register_enroll", "split_address"]


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


def split_address(address: str) -> tuple[str, int]:
    """HOST:PORT into its parts; EnrolError when it is not one."""
    try:
        return enrolment.split_address(address)
    except enrolment.EnrolmentError as exc:
        raise EnrolError(str(exc), hint=exc.hint) from exc


def enroll(cfg: AgentConfig, server: str, token: str, enrol_port: int | None = None) -> Credentials:
    """Enrol this agent with `server` using `token`; save the credentials; return them."""
    creds = Credentials(cfg.state_dir)
    if creds.exists():
        raise EnrolError(
            f"this agent is already enrolled ({creds.info} exists)",
            hint="remove the state directory's tls/ only if the server revoked this agent",
        )
    try:
        parsed = enrolment.parse_token(token)
        host, port = enrolment.split_address(server)
        eport = enrol_port or port + 1
        key = epoch_keys.load_or_create(cfg.key_dir, cfg.origin)
        first = (cfg.key_dir / "epoch-0.vkey").read_text(encoding="ascii").strip()
        key_pem, response = enrolment.request_certificate(
            host,
            eport,
            parsed,
            kind="agent",
            common_name=cfg.agent_id,
            evidence_public_key=_vkey_public(first) if key.epoch else key.public,
            refused_hint="ask for a new token with `custodes server enroll-token --client ...`",
        )
    except enrolment.EnrolmentError as exc:
        raise EnrolError(str(exc), hint=exc.hint) from exc
    if response.client != cfg.client or response.identity != cfg.agent_id:
        raise EnrolError(
            f"the server enrolled {response.identity!r} of client {response.client!r}, "
            f"expected {cfg.agent_id!r} of client {cfg.client!r} (agent.toml)",
            hint="ask for a token for the client named in agent.toml",
        )
    info = {
        "server": server,
        "enrol": f"{host}:{eport}",
        "server_origin": response.server_log_origin,
        "fingerprint": parsed.fingerprint,
    }
    enrolment.save_credentials(
        creds.directory,
        {
            creds.key.name: key_pem,
            creds.cert.name: bytes(response.certificate_pem),
            creds.ca.name: bytes(response.ca_pem),
            creds.server_pub.name: bytes(response.server_signing_public_key),
            # Last: its presence is what marks the agent enrolled.
            creds.info.name: json.dumps(info, indent=2).encode() + b"\n",
        },
    )
    return creds


def _vkey_public(vkey: str) -> bytes:
    from protos.evidence.note import NoteVerifier  # noqa: PLC0415 - only after a rotation

    return NoteVerifier.from_vkey(vkey).public


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
