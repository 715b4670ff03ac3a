"""Stored records → observations: parse the verified event bytes once, at the edge."""

from __future__ import annotations

from google.protobuf.message import DecodeError

from protos.wire import pb
from server.detect.model import Observation
from server.store.base import StoredRecord

_GRANT_KINDS = {
    pb.GrantEvent.KIND_APPLIED: "applied",
    pb.GrantEvent.KIND_EXPIRED: "expired",
    pb.GrantEvent.KIND_REVOKED: "revoked",
    pb.GrantEvent.KIND_REFUSED: "refused",
}
_UNSET_LOGINUID = (-1, 4_294_967_295)


def observation(rec: StoredRecord) -> Observation:
    """The observation of one stored record; the indexed columns when the bytes do not parse."""
    if rec.kind not in ("access", "grant", "agreement", "started", "loss", "gate"):
        return _columns(rec)
    try:
        event = pb.Event.FromString(rec.event)
    except DecodeError:
        return _columns(rec)  # stored verbatim after verification; the columns still hold
    kind = rec.kind
    if kind == "access":
        a = event.access
        s, o = a.subject, a.object
        return Observation(
            agent_id=rec.agent_id,
            seq=rec.seq,
            client=rec.client,
            unix_nanos=rec.unix_nanos,
            kind=kind,
            technician=rec.technician,
            principal=s.principal or None,
            account=rec.account,
            uid=s.uid,
            login_account=s.login_user or None,
            loginuid=None if s.loginuid in _UNSET_LOGINUID else s.loginuid,
            area=rec.area,
            action=rec.action,
            verdict=rec.verdict,
            rule=rec.rule,
            path=rec.path,
            kinds=tuple(o.kinds),
            individuals_estimate=o.individuals_estimate,
            grant_id=a.grant_id or None,
        )
    if kind == "grant":
        g = event.grant
        return Observation(
            agent_id=rec.agent_id,
            seq=rec.seq,
            client=rec.client,
            unix_nanos=rec.unix_nanos,
            kind=kind,
            technician=g.technician or None,
            area=g.area or None,
            grant_id=g.grant_id or None,
            grant_kind=_GRANT_KINDS.get(g.kind),
        )
    if kind == "agreement":
        return Observation(
            agent_id=rec.agent_id,
            seq=rec.seq,
            client=rec.client,
            unix_nanos=rec.unix_nanos,
            kind=kind,
            agreement_version=event.agreement.version or None,
            agreement_accepted=event.agreement.accepted,
            detail=event.agreement.error or None,
        )
    if kind == "started":
        return Observation(
            agent_id=rec.agent_id,
            seq=rec.seq,
            client=rec.client,
            unix_nanos=rec.unix_nanos,
            kind=kind,
            agreement_version=event.started.agreement_version or None,
        )
    detail = (
        f"{event.loss.lost} event(s) lost: {event.loss.cause}"
        if kind == "loss"
        else f"{event.gate.kind}: {event.gate.detail}"
    )
    return Observation(
        agent_id=rec.agent_id,
        seq=rec.seq,
        client=rec.client,
        unix_nanos=rec.unix_nanos,
        kind=kind,
        detail=detail[:500],
    )


def _columns(rec: StoredRecord) -> Observation:
    """The observation from the indexed columns alone."""
    return Observation(
        agent_id=rec.agent_id,
        seq=rec.seq,
        client=rec.client,
        unix_nanos=rec.unix_nanos,
        kind=rec.kind,
        technician=rec.technician,
        account=rec.account,
        area=rec.area,
        action=rec.action,
        verdict=rec.verdict,
        rule=rec.rule,
        path=rec.path,
    )
