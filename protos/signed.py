"""What the server signs for its agents: grants, revocations and agreement bundles.

One place for the domain-separated messages, so the server (which signs) and the agent
(which verifies) can never disagree about the bytes. Every signature is Ed25519 by the
server's signing key (the one that signs its log checkpoints):

* grant:       "custodes/grant/v1\\0" || serialised Grant (the exact bytes in SignedGrant)
* revocation:  "custodes/revocation/v1\\0" || grant_id || "\\0" || client || "\\0" ||
               revoked_unix as 8 bytes big-endian (two's complement)
* agreement:   "custodes/agreement/v1\\0" || client || "\\0" || version || "\\0" ||
               SHA-256(yaml)

The agreement message also binds the client and version the bundle claims, so a bundle
cannot be relabelled.
"""

from __future__ import annotations

import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protos.errors import CustodesError
from protos.evidence.keys import fingerprint, public_key_bytes
from protos.wire import pb

GRANT_DOMAIN = b"custodes/grant/v1\x00"
REVOCATION_DOMAIN = b"custodes/revocation/v1\x00"
AGREEMENT_DOMAIN = b"custodes/agreement/v1\x00"
MAX_GRANT_BYTES = 16 * 1024


class SignatureRefusedError(CustodesError):
    """A signed grant, revocation or bundle does not verify with the server's key."""


def revocation_message(grant_id: str, client: str, revoked_unix: int) -> bytes:
    """The bytes a revocation's signature covers."""
    return (
        REVOCATION_DOMAIN
        + grant_id.encode()
        + b"\x00"
        + client.encode()
        + b"\x00"
        + revoked_unix.to_bytes(8, "big", signed=True)
    )


def agreement_message(client: str, version: str, yaml: bytes) -> bytes:
    """The bytes an agreement bundle's signature covers."""
    return (
        AGREEMENT_DOMAIN
        + client.encode()
        + b"\x00"
        + version.encode()
        + b"\x00"
        + hashlib.sha256(yaml).digest()
    )


def sign_grant(key: Ed25519PrivateKey, grant: pb.Grant) -> pb.SignedGrant:
    """Serialise `grant` once and sign exactly those bytes."""
    data = grant.SerializeToString()
    return pb.SignedGrant(
        grant=data,
        signature=key.sign(GRANT_DOMAIN + data),
        key_id=fingerprint(public_key_bytes(key)),
    )


def sign_revocation(
    key: Ed25519PrivateKey, grant_id: str, client: str, revoked_unix: int, reason: str
) -> pb.Revocation:
    """A signed revocation of `grant_id` for `client`."""
    return pb.Revocation(
        grant_id=grant_id,
        client=client,
        revoked_unix=revoked_unix,
        reason=reason,
        signature=key.sign(revocation_message(grant_id, client, revoked_unix)),
    )


def sign_agreement(
    key: Ed25519PrivateKey, client: str, version: str, yaml: bytes
) -> pb.AgreementBundle:
    """A signed agreement bundle."""
    return pb.AgreementBundle(
        client=client,
        version=version,
        yaml=yaml,
        signature=key.sign(agreement_message(client, version, yaml)),
    )


def _verify(public: bytes, signature: bytes, message: bytes, what: str) -> None:
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError):
        raise SignatureRefusedError(
            f"the {what} signature does not verify with the server key "
            f"{fingerprint(public)[:16]}…; expected one signed by this agent's server"
        ) from None


def verify_grant(public: bytes, signed: pb.SignedGrant) -> pb.Grant:
    """The Grant inside `signed` once its signature verifies; SignatureRefusedError if not."""
    data = bytes(signed.grant)
    if not data or len(data) > MAX_GRANT_BYTES:
        raise SignatureRefusedError(
            f"the grant is {len(data)} bytes; expected 1 to {MAX_GRANT_BYTES}"
        )
    _verify(public, bytes(signed.signature), GRANT_DOMAIN + data, "grant")
    try:
        return pb.Grant.FromString(data)
    except Exception as exc:  # protobuf raises DecodeError and others
        raise SignatureRefusedError(f"the signed grant is not a serialised Grant ({exc})") from exc


def verify_revocation(public: bytes, rev: pb.Revocation) -> None:
    """Raise SignatureRefusedError unless the server signed `rev`."""
    message = revocation_message(rev.grant_id, rev.client, rev.revoked_unix)
    _verify(public, bytes(rev.signature), message, "revocation")


def verify_agreement(public: bytes, bundle: pb.AgreementBundle) -> None:
    """Raise SignatureRefusedError unless the server signed `bundle`."""
    message = agreement_message(bundle.client, bundle.version, bytes(bundle.yaml))
    _verify(public, bytes(bundle.signature), message, "agreement bundle")
