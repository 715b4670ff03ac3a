"""Grants, revocations and agreements the server pushes over the agent stream.

Every message is verified with the server signing key saved at enrolment (protos/signed.py
says what is signed) before anything else is read from it. A grant is refused (journaled
GrantEvent KIND_REFUSED with the reason) when its server did not sign it, it is for another
client, it has already ended, or it is not a well-formed grant. Accepted grants join the
grants file's in one set (the daemon merges both for `Gate.set_grants`), so start and end
are enforced locally: a grant ends on time while the agent is offline. A revocation
removes its grant at once and is remembered, so a late copy of the grant is not applied.

The verified grants are kept in `state_dir/server-grants.json` (0600), so a restart while
the server is unreachable neither loses a live grant nor revives a revoked one.

`check_grant`, `check_revocation` and `check_bundle` are pure; `ServerGrants` holds the
set (thread-safe: the thread relaying from the shipper child writes, the main loop reads).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog

from agent.config import AgentError
from agent.events import GrantRecord
from policies.model import Action, Grant
from protos.files import write_atomic
from protos.signed import (
    SignatureRefusedError,
    verify_agreement,
    verify_grant,
    verify_revocation,
)
from protos.wire import pb

log = structlog.get_logger("agent.delivery")

MAX_REVOKED = 10_000
MAX_STATE_BYTES = 8 * 1024 * 1024
_ACTIONS = {
    pb.ACTION_READ: Action.READ,
    pb.ACTION_WRITE: Action.WRITE,
    pb.ACTION_CREATE: Action.CREATE,
    pb.ACTION_DELETE: Action.DELETE,
    pb.ACTION_RENAME: Action.RENAME,
    pb.ACTION_EXEC: Action.EXEC,
    pb.ACTION_LIST: Action.LIST,
}


class DeliveryRefusedError(AgentError):
    """A pushed grant, revocation or agreement the agent will not use (with the reason)."""

    def __init__(self, message: str, *, grant_id: str = "", technician: str = "", area: str = ""):
        super().__init__(message)
        self.grant_id = grant_id
        self.technician = technician
        self.area = area


def check_grant(server_key: bytes, client: str, signed: pb.SignedGrant, now: datetime) -> Grant:
    """The verified grant; DeliveryRefusedError naming why it is refused."""
    try:
        wire = verify_grant(server_key, signed)
    except SignatureRefusedError as exc:
        claimed = _unverified(signed)  # names what it claims to be, for the journal only
        raise DeliveryRefusedError(
            str(exc),
            grant_id=claimed.grant_id,
            technician=claimed.technician,
            area=claimed.area,
        ) from exc
    who = {"grant_id": wire.grant_id, "technician": wire.technician, "area": wire.area}
    if wire.client != client:
        raise DeliveryRefusedError(
            f"grant {wire.grant_id} is for client {wire.client!r}; this agent serves {client!r}",
            **who,
        )
    try:
        actions = frozenset(_ACTIONS[a] for a in wire.actions)
        grant = Grant(
            id=wire.grant_id,
            technician=wire.technician,
            area=wire.area,
            actions=actions,
            start=datetime.fromtimestamp(wire.start_unix, UTC),
            end=datetime.fromtimestamp(wire.end_unix, UTC),
            break_glass=wire.break_glass,
            ticket=wire.ticket,
        )
    except (KeyError, ValueError, OverflowError, OSError) as exc:
        raise DeliveryRefusedError(f"grant {wire.grant_id} is malformed ({exc})", **who) from exc
    if grant.end <= now:
        raise DeliveryRefusedError(
            f"grant {grant.id} ended at {grant.end.isoformat()}; it is {now.isoformat()}", **who
        )
    return grant


def _unverified(signed: pb.SignedGrant) -> pb.Grant:
    try:
        return pb.Grant.FromString(bytes(signed.grant)[:MAX_STATE_BYTES])
    except Exception:  # protobuf raises DecodeError and others
        return pb.Grant()


def check_revocation(server_key: bytes, client: str, rev: pb.Revocation) -> None:
    """Raise DeliveryRefusedError unless the server signed `rev` for this client."""
    try:
        verify_revocation(server_key, rev)
    except SignatureRefusedError as exc:
        raise DeliveryRefusedError(str(exc), grant_id=rev.grant_id) from exc
    if rev.client != client:
        raise DeliveryRefusedError(
            f"revocation of {rev.grant_id} is for client {rev.client!r}; this agent serves "
            f"{client!r}",
            grant_id=rev.grant_id,
        )


def check_bundle(server_key: bytes, client: str, bundle: pb.AgreementBundle) -> None:
    """Raise DeliveryRefusedError unless the server signed `bundle` for this client."""
    try:
        verify_agreement(server_key, bundle)
    except SignatureRefusedError as exc:
        raise DeliveryRefusedError(str(exc)) from exc
    if bundle.client != client:
        raise DeliveryRefusedError(
            f"agreement {bundle.version} is for client {bundle.client!r}; this agent serves "
            f"{client!r}"
        )


@dataclass(frozen=True, slots=True)
class Hooks:
    """What delivery calls in the daemon."""

    journal: Callable[[GrantRecord], None]  # journal a grant record
    grants_changed: Callable[[], None]  # merge and hand the grants to the gate now
    agreement: Callable[[bytes, str], object]  # enforce this agreement YAML (version) if good
    agreement_sha256: Callable[[], str]  # the sha256 of the agreement enforced now


class ServerGrants:
    """The grants the server pushed, minus the revoked ones; `handle` takes each message."""

    def __init__(self, server_key: bytes, client: str, state_path: Path, hooks: Hooks) -> None:
        self._key = server_key
        self._client = client
        self._path = state_path
        self._hooks = hooks
        self._lock = threading.Lock()
        self._grants: dict[str, tuple[Grant, bytes]] = {}
        self._revoked: dict[str, str] = {}
        self._load()

    def grants(self) -> tuple[Grant, ...]:
        """The server's grants held now (the daemon merges them with the grants file's)."""
        with self._lock:
            return tuple(g for g, _ in self._grants.values())

    def revocations(self) -> dict[str, str]:
        """Revoked grant id → the server's reason (for the journal's revoked records)."""
        with self._lock:
            return dict(self._revoked)

    def handle(self, message: pb.ServerMessage) -> None:
        """Verify and apply one pushed message; refusals are journaled, never raised."""
        which = message.WhichOneof("msg")
        try:
            if which == "grant":
                self._grant(message.grant)
            elif which == "revocation":
                self._revocation(message.revocation)
            elif which == "agreement":
                self._agreement(message.agreement)
        except DeliveryRefusedError as exc:
            log.warning("server_message_refused", kind=which, reason=str(exc)[:500])
            self._hooks.journal(
                GrantRecord(
                    "refused",
                    exc.grant_id or f"({which})",
                    exc.technician,
                    exc.area,
                    str(exc)[:1000],
                )
            )

    def _grant(self, signed: pb.SignedGrant) -> None:
        grant = check_grant(self._key, self._client, signed, datetime.now(UTC))
        with self._lock:
            if grant.id in self._revoked or grant.id in self._grants:
                return  # a revoked grant stays revoked; a re-sent one is already held
            self._grants[grant.id] = (grant, signed.SerializeToString())
            self._save_locked()
        log.info("grant_received", grant=grant.id, technician=grant.technician, area=grant.area)
        self._hooks.grants_changed()

    def _revocation(self, rev: pb.Revocation) -> None:
        check_revocation(self._key, self._client, rev)
        with self._lock:
            if rev.grant_id in self._revoked:
                return
            self._revoked[rev.grant_id] = rev.reason or "revoked by the server"
            while len(self._revoked) > MAX_REVOKED:
                self._revoked.pop(next(iter(self._revoked)))
            held = self._grants.pop(rev.grant_id, None)
            self._save_locked()
        log.info("grant_revocation_received", grant=rev.grant_id, held=held is not None)
        if held is not None:
            self._hooks.grants_changed()

    def _agreement(self, bundle: pb.AgreementBundle) -> None:
        check_bundle(self._key, self._client, bundle)
        yaml = bytes(bundle.yaml)
        if hashlib.sha256(yaml).hexdigest() == self._hooks.agreement_sha256():
            return  # already enforced (the server re-sends it on every connect)
        self._hooks.agreement(yaml, bundle.version)

    def prune(self, now: datetime) -> None:
        """Forget grants that ended (the grant book has journaled them as expired)."""
        with self._lock:
            ended = [gid for gid, (g, _) in self._grants.items() if g.end <= now]
            for gid in ended:
                del self._grants[gid]
            if ended:
                self._save_locked()

    # -- the state file ----------------------------------------------------------------------

    def _save_locked(self) -> None:
        state = {
            "grants": [base64.b64encode(raw).decode() for _, raw in self._grants.values()],
            "revoked": self._revoked,
        }
        self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(self._path, json.dumps(state).encode(), mode=0o600)

    def _load(self) -> None:
        try:
            with self._path.open("rb") as fh:
                data = fh.read(MAX_STATE_BYTES)
            state = json.loads(data)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("server_grants_unreadable", path=str(self._path), error=str(exc))
            return
        revoked = state.get("revoked", {}) if isinstance(state, dict) else {}
        if isinstance(revoked, dict):
            self._revoked = {str(k): str(v) for k, v in revoked.items()}
        now = datetime.now(UTC)
        for item in state.get("grants", []) if isinstance(state, dict) else []:
            with contextlib.suppress(DeliveryRefusedError, ValueError, TypeError):
                signed = pb.SignedGrant.FromString(base64.b64decode(item, validate=True))
                grant = check_grant(self._key, self._client, signed, now)  # re-verified
                if grant.id not in self._revoked:
                    self._grants[grant.id] = (grant, signed.SerializeToString())
