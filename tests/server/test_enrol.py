"""Enrolment: the CA and tokens (pure), and the Enrollment RPC against a real server."""

from __future__ import annotations

import datetime as dt
import json
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from agent.config import load_config
from agent.enroll import EnrolError, enroll, make_csr
from server import enrol
from tests.server.test_ingest_harness import ServerProc, cli, running_server, write_config

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProc]:
    with running_server(tmp_path / "data") as s:
        yield s


# --- pure: CA, certificates, tokens ---------------------------------------------------------


def test_client_certificate_carries_the_identity() -> None:
    ca = enrol.create_ca("t", NOW)
    _, csr = make_csr("host-01")
    cert = enrol.sign_csr(ca, csr, enrol.Identity("agent", "clinic-a", "host-01"), NOW)
    identity = enrol.identity_of(cert)
    assert identity.uri == "custodes://agent/clinic-a/host-01"
    parsed = x509.load_pem_x509_certificate(cert)
    assert parsed.issuer == x509.load_pem_x509_certificate(ca.cert_pem).subject


def test_server_certificate_names_loopback_and_configured_names() -> None:
    ca = enrol.create_ca("t", NOW)
    server = enrol.issue_server_cert(ca, ["custodes.msp.example", "10.1.2.3"], NOW)
    san = (
        x509.load_pem_x509_certificate(server.cert_pem)
        .extensions.get_extension_for_class(x509.SubjectAlternativeName)
        .value
    )
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "custodes.msp.example"}
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "10.1.2.3"}


@pytest.mark.parametrize(
    "csr",
    [b"", b"not a csr", b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END", b"x" * 9000],
)
def test_bad_csr_is_refused(csr: bytes) -> None:
    ca = enrol.create_ca("t", NOW)
    with pytest.raises(enrol.EnrolmentError):
        enrol.sign_csr(ca, csr, enrol.Identity("agent", "c", "a"), NOW)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "ctk1",
        "ctk2." + "a" * 64 + "." + "b" * 43,
        "ctk1." + "A" * 64 + "." + "b" * 43,
        "ctk1." + "a" * 63 + "." + "b" * 43,
        "ctk1." + "a" * 64 + ".short",
        "ctk1." + "a" * 64 + "." + "b" * 43 + ".extra",
    ],
)
def test_malformed_token_is_refused(text: str) -> None:
    with pytest.raises(enrol.EnrolmentError):
        enrol.parse_token(text)


def test_token_round_trips_and_is_stored_only_as_a_hash() -> None:
    token = enrol.new_token("ab" * 32)
    again = enrol.parse_token(token.text)
    assert again == token
    assert token.secret.encode() not in token.secret_hash
    assert len(token.secret_hash) == 32


@pytest.mark.parametrize("name", ["", "-x", "a/b", "a b", "x" * 64, "é"])
def test_unsafe_identity_names_are_refused(name: str) -> None:
    with pytest.raises(enrol.EnrolmentError):
        enrol.Identity("agent", "clinic", name)


# --- real server ----------------------------------------------------------------------------


def test_init_writes_private_keys_0600(server: ServerProc) -> None:
    for key in ("ca/ca.key", "tls/server.key", "signing/server.key"):
        assert stat.S_IMODE((server.data / key).stat().st_mode) == 0o600, key


def test_enrolment_saves_credentials_0600(server: ServerProc, tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path / "a", "host-01", "clinic-a"))
    creds = enroll(cfg, server.address, server.token("clinic-a"), server.enrol_port)
    for path in (creds.key, creds.cert, creds.ca, creds.server_pub, creds.info):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert enrol.identity_of(creds.cert.read_bytes()).uri == "custodes://agent/clinic-a/host-01"
    info = json.loads(creds.info.read_text())
    assert info["server"] == server.address


def test_reused_token_is_refused(server: ServerProc, tmp_path: Path) -> None:
    token = server.token("clinic-a")
    enroll(
        load_config(write_config(tmp_path / "a", "host-01", "clinic-a")),
        server.address,
        token,
        server.enrol_port,
    )
    cfg = load_config(write_config(tmp_path / "b", "host-02", "clinic-a"))
    with pytest.raises(EnrolError, match="unknown, already used or expired"):
        enroll(cfg, server.address, token, server.enrol_port)
    assert not (cfg.state_dir / "tls" / "agent.crt").exists()


def test_expired_token_is_refused(server: ServerProc, tmp_path: Path) -> None:
    token = server.token("clinic-a", "--ttl", "1s")
    time.sleep(2.1)
    cfg = load_config(write_config(tmp_path / "a", "host-01", "clinic-a"))
    with pytest.raises(EnrolError, match="unknown, already used or expired"):
        enroll(cfg, server.address, token, server.enrol_port)


def test_token_for_another_server_is_refused_before_it_is_sent(
    server: ServerProc, tmp_path: Path
) -> None:
    token = server.token("clinic-a")
    forged = "ctk1." + "0" * 64 + "." + token.split(".")[2]
    cfg = load_config(write_config(tmp_path / "a", "host-01", "clinic-a"))
    with pytest.raises(EnrolError, match="refusing to send the token"):
        enroll(cfg, server.address, forged, server.enrol_port)
    # The real token was never spent.
    enroll(cfg, server.address, token, server.enrol_port)


def test_token_for_another_client_is_refused_by_the_agent(
    server: ServerProc, tmp_path: Path
) -> None:
    cfg = load_config(write_config(tmp_path / "a", "host-01", "clinic-a"))
    with pytest.raises(EnrolError, match="expected 'host-01' of client 'clinic-a'"):
        enroll(cfg, server.address, server.token("clinic-b"), server.enrol_port)


def test_an_agent_id_cannot_be_enrolled_twice(server: ServerProc, tmp_path: Path) -> None:
    enroll(
        load_config(write_config(tmp_path / "a", "host-01", "clinic-a")),
        server.address,
        server.token("clinic-a"),
        server.enrol_port,
    )
    cfg = load_config(write_config(tmp_path / "b", "host-01", "clinic-a"))
    with pytest.raises(EnrolError, match="already enrolled"):
        enroll(cfg, server.address, server.token("clinic-a"), server.enrol_port)


def test_enroll_token_refuses_a_bad_ttl(server: ServerProc) -> None:
    done = cli(
        "server",
        "enroll-token",
        "--data",
        str(server.data),
        "--client",
        "c",
        "--ttl",
        "soon",
        check=False,
    )
    assert done.returncode == 1
    assert "--ttl 'soon'" in done.stderr
    assert "Traceback" not in done.stderr
