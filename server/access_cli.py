"""`custodes login` and `custodes access ...`: a person's side of just-in-time access.

`login --server HOST:PORT --token TOKEN` pins the server by the fingerprint in the token,
sends a fresh key's CSR to the enrolment port (protos/enrolment.py, shared with
`custodes agent enroll`), and keeps the person's key, certificate,
the CA and the server's address in the profile directory (default ~/.config/custodes),
every file 0600. Every `access` command then calls the Access service over mutual TLS with
that certificate; the server decides what this person may do.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Any, TypeAlias

import grpc

from policies.durations import format_duration, parse_duration
from protos import enrolment
from protos.errors import CustodesError, UsageError
from protos.wire import pb, rpc

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
TIMEOUT_S = enrolment.TIMEOUT_S
_ACTIONS = {
    "read": pb.ACTION_READ,
    "write": pb.ACTION_WRITE,
    "create": pb.ACTION_CREATE,
    "delete": pb.ACTION_DELETE,
    "rename": pb.ACTION_RENAME,
    "exec": pb.ACTION_EXEC,
    "list": pb.ACTION_LIST,
}
_ACTION_NAMES = {v: k for k, v in _ACTIONS.items()}


class LoginError(CustodesError):
    """Login failed, or there is no usable profile."""


class AccessCallError(CustodesError):
    """The server refused an access call (the message says which rule or why)."""


def default_profile() -> Path:
    """~/.config/custodes (or $XDG_CONFIG_HOME/custodes)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "custodes"


def _split(address: str) -> tuple[str, int]:
    try:
        return enrolment.split_address(address)
    except enrolment.EnrolmentError as exc:
        raise UsageError(str(exc), hint=exc.hint) from exc


def login(server: str, token_text: str, profile: Path, enrol_port: int | None = None) -> str:
    """Enrol as the person the token names; save the profile; return 'name of client'."""
    host, port = _split(server)
    try:
        key_pem, reply = enrolment.request_certificate(
            host,
            enrol_port or port + 1,
            enrolment.parse_token(token_text),
            kind="person",
            common_name="person",
            refused_hint="ask an admin for a new token: `custodes server user add`",
        )
    except enrolment.EnrolmentError as exc:
        raise LoginError(str(exc), hint=exc.hint) from exc
    info = {"server": server, "name": reply.identity, "client": reply.client}
    enrolment.save_credentials(
        profile,
        {
            "person.key": key_pem,
            "person.crt": bytes(reply.certificate_pem),
            "ca.crt": bytes(reply.ca_pem),
            "profile.json": json.dumps(info).encode() + b"\n",
        },
    )
    return f"{reply.identity} of {reply.client}"


class AccessClient:
    """The Access stub over mutual TLS with a profile's person certificate."""

    def __init__(self, profile: Path, server: str | None = None) -> None:
        try:
            info = json.loads((profile / "profile.json").read_text(encoding="utf-8"))
            key = (profile / "person.key").read_bytes()
            cert = (profile / "person.crt").read_bytes()
            ca = (profile / "ca.crt").read_bytes()
        except (OSError, ValueError) as exc:
            raise LoginError(
                f"no usable profile in {profile} ({exc})",
                hint="log in first: `custodes login --server HOST:PORT --token TOKEN`",
            ) from exc
        self.name = str(info.get("name", ""))
        self.server = server or str(info["server"])
        host, _ = _split(self.server)
        options = []
        if host not in ("127.0.0.1", "localhost"):
            options.append(("grpc.default_authority", host))
        creds = grpc.ssl_channel_credentials(ca, key, cert)
        self.channel = grpc.secure_channel(self.server, creds, options=options)
        self.stub = rpc.AccessStub(self.channel)

    def call(self, method: str, message: Any) -> Any:
        """One unary call; AccessCallError with the server's words when it refuses."""
        try:
            return getattr(self.stub, method)(message, timeout=TIMEOUT_S)
        except grpc.RpcError as exc:
            code = exc.code().name if exc.code() else "UNKNOWN"
            raise AccessCallError(
                f"{method.lower()} refused ({code}): {exc.details()}",
                hint=_HINTS.get(code, ""),
            ) from exc

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()


_HINTS = {
    "PERMISSION_DENIED": "your role or client does not allow this",
    "FAILED_PRECONDITION": "the agreement or the request's state does not allow this",
    "NOT_FOUND": "`custodes access list` shows the requests you may see",
    "UNAVAILABLE": "is the server running and --server right?",
}


def register(groups: Subparsers) -> None:
    """Add the `login` and `access` groups."""
    log_in = groups.add_parser("login", help="log in as a person with an enrolment token")
    log_in.add_argument("--server", required=True, help="HOST:PORT of the server's main port")
    log_in.add_argument("--token", required=True, help="from `custodes server user add`")
    log_in.add_argument("--enrol-port", type=int, default=None, help="default: the port + 1")
    _profile(log_in)
    log_in.set_defaults(func=_login)

    group = groups.add_parser("access", help="just-in-time access requests and grants")
    commands = group.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    req = commands.add_parser("request", help="ask for time-boxed access")
    req.add_argument("--client", required=True)
    req.add_argument("--area", required=True)
    req.add_argument("--actions", required=True, help="e.g. read or read,list")
    req.add_argument("--for", dest="duration", required=True, help="e.g. 2h, 30m")
    req.add_argument("--start", default=None, help="ISO time (default: when approved)")
    req.add_argument("--ticket", required=True)
    req.add_argument("--reason", required=True)
    req.add_argument("--break-glass", action="store_true", help="emergency: active at once")
    _client_args(req)
    req.set_defaults(func=_request)
    listing = commands.add_parser("list", help="requests you may see")
    listing.add_argument("--mine", action="store_true")
    listing.add_argument("--pending", action="store_true")
    listing.add_argument("--client", default="")
    _client_args(listing)
    listing.set_defaults(func=_list)
    approve = commands.add_parser("approve", help="approve a pending request")
    approve.add_argument("id", metavar="ID")
    _client_args(approve)
    approve.set_defaults(func=lambda a: _decide(a, "Approve"))
    for name, method, needs_why in (
        ("deny", "Deny", True),
        ("revoke", "Revoke", True),
        ("cancel", "Cancel", False),
    ):
        p = commands.add_parser(name, help=f"{name} a request")
        p.add_argument("id", metavar="ID")
        p.add_argument("--why", required=needs_why, default="")
        _client_args(p)
        p.set_defaults(func=lambda a, m=method: _decide(a, m))
    show = commands.add_parser("show", help="a request, its history and what it covered")
    show.add_argument("id", metavar="ID")
    show.add_argument("--json", action="store_true")
    _client_args(show)
    show.set_defaults(func=_show)


def _profile(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--profile", type=Path, default=None, help="profile directory (~/.config/custodes)"
    )


def _client_args(parser: argparse.ArgumentParser) -> None:
    _profile(parser)
    parser.add_argument("--server", default=None, help="HOST:PORT (default: from the profile)")


def _client(args: argparse.Namespace) -> AccessClient:
    return AccessClient(args.profile or default_profile(), args.server)


def _login(args: argparse.Namespace) -> int:
    who = login(args.server, args.token, args.profile or default_profile(), args.enrol_port)
    print(f"logged in as {who}")
    return 0


def parse_start(text: str | None) -> int:
    """Unix seconds of an ISO time (UTC unless it names a zone); 0 for none."""
    if not text:
        return 0
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise UsageError(
            f"--start {text!r} is not an ISO time", hint="e.g. 2026-03-01T09:00+11:00"
        ) from exc
    return int((when if when.tzinfo else when.replace(tzinfo=dt.UTC)).timestamp())


def _request(args: argparse.Namespace) -> int:
    try:
        duration = parse_duration(args.duration)
    except ValueError as exc:
        raise UsageError(f"--for {args.duration!r}: {exc}", hint="e.g. --for 2h") from exc
    names = [a.strip() for a in args.actions.split(",") if a.strip()]
    unknown = [a for a in names if a not in _ACTIONS]
    if unknown or not names:
        raise UsageError(
            f"--actions {args.actions!r} names {unknown or 'nothing'}; expected some of "
            + ",".join(_ACTIONS)
        )
    client = _client(args)
    try:
        reply = client.call(
            "Request",
            pb.CreateAccessRequest(
                client=args.client,
                area=args.area,
                actions=[_ACTIONS[a] for a in names],
                duration_seconds=int(duration.total_seconds()),
                start_unix=parse_start(args.start),
                ticket=args.ticket,
                reason=args.reason,
                break_glass=args.break_glass,
            ),
        )
    finally:
        client.close()
    print(reply.id)
    print(_line(reply), file=sys.stderr)
    return 0


def _decide(args: argparse.Namespace, method: str) -> int:
    client = _client(args)
    try:
        reply = client.call(
            method, pb.AccessDecisionRequest(id=args.id, why=getattr(args, "why", ""))
        )
    finally:
        client.close()
    print(_line(reply))
    return 0


def _list(args: argparse.Namespace) -> int:
    client = _client(args)
    try:
        reply = client.call(
            "List", pb.ListAccessRequests(mine=args.mine, pending=args.pending, client=args.client)
        )
    finally:
        client.close()
    for r in reply.requests:
        print(_line(r))
    return 0


def _when(unix: int) -> str:
    if not unix:
        return "on approval"
    return dt.datetime.fromtimestamp(unix, dt.UTC).isoformat(timespec="seconds")


def _line(r: pb.AccessRequest) -> str:
    actions = ",".join(_ACTION_NAMES.get(a, "?") for a in r.actions)
    span = format_duration(dt.timedelta(seconds=r.duration_seconds))
    glass = " BREAK-GLASS" if r.break_glass else ""
    return (
        f"{r.id}\t{r.state}{glass}\t{r.client}\t{r.technician}\t{r.area}\t{actions}\t"
        f"{span} from {_when(r.start_unix)}\tticket {r.ticket}"
    )


def _show(args: argparse.Namespace) -> int:
    client = _client(args)
    try:
        detail: pb.AccessDetail = client.call("Show", pb.AccessRequestId(id=args.id))
    finally:
        client.close()
    r = detail.request
    covered = [pb.Event.FromString(e.event) for e in detail.covered]
    if args.json:
        print(json.dumps(_json(r, detail, covered), indent=2))
        return 0
    print(_line(r))
    print(f"reason: {r.reason}")
    if r.end_unix:
        print(f"window: {_when(r.start_unix)} to {_when(r.end_unix)}")
    for c in r.history:
        print(f"  {_when(c.unix)}  {c.state:<10} by {c.by}" + (f": {c.why}" if c.why else ""))
    by_host: dict[str, list[pb.Event]] = {}
    for ev in covered:
        by_host.setdefault(ev.agent_id, []).append(ev)
    for host, events in sorted(by_host.items()):
        print(f"on {host}:")
        for ev in events:
            print("  " + _event_line(ev))
    if not covered:
        print("no access under this grant is stored yet")
    return 0


def _event_line(ev: pb.Event) -> str:
    when = dt.datetime.fromtimestamp(ev.unix_nanos / 1e9, dt.UTC).isoformat(timespec="seconds")
    if ev.WhichOneof("body") == "grant":
        kind = pb.GrantEvent.Kind.Name(ev.grant.kind).removeprefix("KIND_").lower()
        return f"{when}  #{ev.seq}  grant {kind}: {ev.grant.reason}"
    a = ev.access
    verdict = pb.Verdict.Name(a.verdict).removeprefix("VERDICT_").lower()
    action = _ACTION_NAMES.get(a.action, "?")
    return f"{when}  #{ev.seq}  {verdict} {action} {a.object.path} ({a.subject.os_user})"


def _json(r: pb.AccessRequest, detail: pb.AccessDetail, covered: list[pb.Event]) -> dict[str, Any]:
    return {
        "id": r.id,
        "state": r.state,
        "client": r.client,
        "technician": r.technician,
        "area": r.area,
        "actions": [_ACTION_NAMES.get(a, "?") for a in r.actions],
        "start_unix": r.start_unix,
        "end_unix": r.end_unix,
        "break_glass": r.break_glass,
        "ticket": r.ticket,
        "reason": r.reason,
        "history": [
            {"state": c.state, "by": c.by, "unix": c.unix, "why": c.why} for c in r.history
        ],
        "approvals": [{"by": a.approver, "as": a.role, "unix": a.unix} for a in r.approvals],
        "covered": [
            {
                "agent_id": e.agent_id,
                "seq": e.seq,
                "kind": ev.WhichOneof("body"),
                "line": _event_line(ev),
            }
            for e, ev in zip(detail.covered, covered, strict=True)
        ],
    }
