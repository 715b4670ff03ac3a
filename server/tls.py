"""TLS material for the two listeners, and the peer identity read from the handshake.

gRPC Python can either require and verify a client certificate or not ask for one at all;
it cannot ask without requiring. So the server listens twice (see server/app.py): the main
port requires a client certificate signed by our CA (agents, people, queries); the
enrolment port (main port + 1 by default) serves only `Enrollment` and health over
server-authenticated TLS, because a new agent has no certificate yet.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc

from protos.errors import CustodesError
from server.datadir import DataDir
from server.enrol import EnrolmentError, Identity, fingerprint, identity_of


class PeerError(CustodesError):
    """The caller did not present a usable client certificate."""


@dataclass(frozen=True, slots=True)
class Peer:
    """The authenticated caller: its identity and its certificate's fingerprint."""

    identity: Identity
    cert_fingerprint: str


def server_credentials(data: DataDir, *, require_client_cert: bool) -> grpc.ServerCredentials:
    """TLS credentials for a listener; with `require_client_cert`, mutual TLS against our CA."""
    key = data.read(data.server_key)
    cert = data.read(data.server_cert)
    ca = data.read(data.ca_cert)
    if require_client_cert:
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=True
        )
    return grpc.ssl_server_credentials([(key, cert)])


def peer_from_auth_context(auth: Mapping[str, Sequence[bytes]]) -> Peer:
    """The identity in the verified client certificate of this call.

    The TLS layer has already verified the chain to our CA; this reads the SAN URI.
    Raises `PeerError` when there is no certificate or it carries no Custodes identity.
    """
    pems = auth.get("x509_pem_cert") or []
    if len(pems) != 1:
        raise PeerError("the call carries no client certificate, expected mutual TLS")
    pem = bytes(pems[0])
    try:
        identity = identity_of(pem)
    except EnrolmentError as exc:
        raise PeerError(f"the client certificate carries no usable identity: {exc}") from exc
    return Peer(identity=identity, cert_fingerprint=fingerprint(pem))
