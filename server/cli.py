"""`custodes server ...`, `custodes events`, `custodes evidence ...`.

Every command here acts on a data directory (`--data DIR`, default /var/lib/custodes);
the database is SQLite in that directory unless `server init --database URL` recorded
another, or `--database URL` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from policies.durations import parse_duration
from protos.errors import CustodesError, UsageError
from protos.evidence.keys import generate_key, public_key_bytes, save_private_key
from server import enrol, people
from server.app import Limits, ServerOptions, serve
from server.datadir import DEFAULT_DATA, DataDir, DataDirError, write_private
from server.query import agent_line, describe, event_json, export_client
from server.store import Store, open_store
from server.verify_export import verify_file

if TYPE_CHECKING:
    from server.console.app import ConsoleOptions

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def register(groups: Subparsers) -> None:
    """Add the groups that act on a server's data directory."""
    server = groups.add_parser("server", help="initialise and run the MSP's central service")
    commands = server.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    init = commands.add_parser("init", help="create the CA, server certificate and signing key")
    _data_arg(init)
    init.add_argument(
        "--name",
        action="append",
        default=[],
        help="a DNS name or IP address agents use to reach this server (repeatable); "
        "127.0.0.1 and localhost are always included",
    )
    init.add_argument("--database", help="database URL to record (default: SQLite in DIR)")
    init.set_defaults(func=_init)

    run = commands.add_parser("run", help="serve gRPC over TLS until SIGTERM")
    _data_arg(run)
    run.add_argument("--listen", default="127.0.0.1:7443", help="mutual-TLS address")
    run.add_argument(
        "--enrol-listen", default=None, help="enrolment address (default: the --listen port + 1)"
    )
    _database_arg(run)
    run.add_argument("--console", default=None, metavar="HOST:PORT", help="serve the web console")
    run.add_argument("--console-cert", type=Path, help="console certificate (default: server)")
    run.add_argument("--console-key", type=Path, help="the console certificate's key")
    run.add_argument(
        "--console-insecure-http",
        action="store_true",
        help="serve the console over plain HTTP (loopback addresses only)",
    )
    defaults = Limits()
    run.add_argument(
        "--max-message-bytes",
        type=int,
        default=defaults.max_message_bytes,
        help=f"largest gRPC message accepted (default {defaults.max_message_bytes})",
    )
    run.add_argument(
        "--max-batch-events",
        type=int,
        default=defaults.max_batch_events,
        help=f"most events in one batch; agents are told (default {defaults.max_batch_events})",
    )
    run.add_argument(
        "--agent-events-per-second",
        type=float,
        default=defaults.events_per_second,
        help="per-agent ingest rate, with a burst of twice as many "
        f"(default {defaults.events_per_second:.0f})",
    )
    run.add_argument(
        "--detect-seconds",
        type=float,
        default=30.0,
        help="how often the possible-breach checks run (silent agents, integrity, reminders; "
        "events are checked as they arrive) (default 30)",
    )
    run.set_defaults(func=_run)

    token = commands.add_parser("enroll-token", help="print a single-use enrolment token")
    _data_arg(token)
    token.add_argument("--client", required=True, help="the client the new agent serves")
    token.add_argument("--ttl", default="1h", help="how long the token is valid (e.g. 15m, 1h)")
    token.add_argument("--kind", default="agent", choices=["agent", "person"])
    token.add_argument("--name", default="", help="bind the token to one agent id or person")
    _database_arg(token)
    token.set_defaults(func=_enroll_token)

    agent = commands.add_parser("agent", help="manage enrolled agents")
    agent_commands = agent.add_subparsers(dest="agent_command", metavar="COMMAND")
    agent_commands.required = True
    revoke = agent_commands.add_parser("revoke", help="lock an agent out")
    revoke.add_argument("agent_id", metavar="AGENT")
    _data_arg(revoke)
    _database_arg(revoke)
    revoke.set_defaults(func=_revoke)
    listing = agent_commands.add_parser("list", help="list enrolled agents")
    _data_arg(listing)
    _database_arg(listing)
    listing.add_argument("--client")
    listing.set_defaults(func=_list_agents)
    people.register(commands, _open)  # `server user ...`, `server agreement ...`

    events = groups.add_parser("events", help="list stored evidence events")
    _data_arg(events)
    _database_arg(events)
    events.add_argument("--client")
    events.add_argument("--technician")
    events.add_argument("--area")
    events.add_argument("--decision", choices=["allow", "deny", "observed"])
    events.add_argument("--agent")
    events.add_argument("--since", help="ISO date/time (UTC unless it names a zone) or 24h, 7d")
    events.add_argument("--limit", type=int, default=100)
    events.add_argument("--json", action="store_true", help="one JSON object per line")
    events.set_defaults(func=_events)

    evidence = groups.add_parser("evidence", help="export and verify evidence offline")
    ev_commands = evidence.add_subparsers(dest="command", metavar="COMMAND")
    ev_commands.required = True
    export = ev_commands.add_parser("export", help="write a self-verifying evidence file")
    _data_arg(export)
    _database_arg(export)
    export.add_argument("--client", required=True)
    export.add_argument("--from", dest="from_", help="ISO date/time (inclusive)")
    export.add_argument("--to", help="ISO date/time (exclusive)")
    export.add_argument("--out", required=True, type=Path)
    export.set_defaults(func=_export)
    verify = ev_commands.add_parser("verify", help="verify an export offline")
    verify.add_argument("file", type=Path, metavar="FILE")
    verify.add_argument(
        "--agent-checkpoint",
        type=Path,
        action="append",
        default=[],
        help="an agent's own latest checkpoint note (repeatable): the export must cover it",
    )
    verify.set_defaults(func=_verify)


def _data_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help=f"data directory (default {DEFAULT_DATA})"
    )


def _database_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database", default=None, help="database URL (default: from DIR)")


def database_url(data: DataDir, override: str | None) -> str:
    """The database to use: `--database`, else what `server init` recorded, else SQLite."""
    if override:
        return override
    recorded = data.load_settings().get("database")
    return recorded if isinstance(recorded, str) and recorded else data.default_database_url()


def _open(args: argparse.Namespace) -> Store:
    data = DataDir(args.data)
    data.require_initialised()
    return open_store(database_url(data, args.database))


# --- server -------------------------------------------------------------------------------


def _init(args: argparse.Namespace) -> int:
    data = DataDir(args.data)
    if data.is_initialised():
        raise DataDirError(
            f"{data.root} is already initialised (it holds {data.settings.name})",
            hint="use another --data directory; re-initialising would orphan every agent",
        )
    for name in args.name:
        if not name or any(c.isspace() for c in name):
            raise UsageError(f"--name {name!r} is not a DNS name or IP address")
    data.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    now = dt.datetime.now(dt.UTC)
    ca = enrol.create_ca(str(data.root.resolve().name or "server"), now)
    server = enrol.issue_server_cert(ca, args.name, now)
    write_private(data.ca_key, ca.key_pem)
    write_private(data.ca_cert, ca.cert_pem, mode=0o644)
    write_private(data.server_key, server.key_pem)
    write_private(data.server_cert, server.cert_pem, mode=0o644)
    key = generate_key()
    data.signing_key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    save_private_key(data.signing_key, key)
    write_private(data.signing_pub, public_key_bytes(key), mode=0o644)
    settings = {
        "version": 1,
        "names": ["127.0.0.1", "localhost", *args.name],
        "database": args.database or "",
        "created": now.isoformat(),
    }
    if args.database is None:
        open_store(data.default_database_url()).close()
        data.sqlite.chmod(0o600)  # the evidence is personal information
    write_private(data.settings, json.dumps(settings, indent=2).encode() + b"\n", mode=0o644)
    print(f"initialised {data.root}")
    print(f"server certificate fingerprint (SHA-256): {enrol.fingerprint(server.cert_pem)}")
    return 0


def _run(args: argparse.Namespace) -> int:
    data = DataDir(args.data)
    data.require_initialised()
    options = ServerOptions(
        data=data,
        listen=args.listen,
        enrol_listen=args.enrol_listen,
        database_url=database_url(data, args.database),
        console=_console_options(args),
        limits=_limits(args),
        detect_seconds=_detect_seconds(args.detect_seconds),
    )
    _check_address(options.listen)
    asyncio.run(serve(options))
    return 0


_LIMIT_BOUNDS = {
    "max_message_bytes": (64 * 1024, 256 * 1024 * 1024),
    "max_batch_events": (1, 100_000),
    "agent_events_per_second": (1.0, 10_000_000.0),
}


def _limits(args: argparse.Namespace) -> Limits:
    """The `server run` limit options, each checked against sane bounds."""
    for name, (low, high) in _LIMIT_BOUNDS.items():
        value = getattr(args, name)
        if not low <= value <= high:
            flag = "--" + name.replace("_", "-")
            raise UsageError(
                f"{flag} {value:g} is out of range; expected {low:g}..{high:g}",
                hint=f"`custodes server run --help` lists the defaults for {flag}",
            )
    rate = float(args.agent_events_per_second)
    return replace(
        Limits(),
        max_message_bytes=args.max_message_bytes,
        max_batch_events=args.max_batch_events,
        events_per_second=rate,
        burst_events=max(int(rate * 2), args.max_batch_events),
    )


def _detect_seconds(value: float) -> float:
    if not 0.05 <= value <= 3600:
        raise UsageError(
            f"--detect-seconds {value:g} is out of range; expected 0.05..3600",
            hint="the default, 30 seconds, suits a production server",
        )
    return value


def _console_options(args: argparse.Namespace) -> ConsoleOptions | None:
    if args.console is None:
        if args.console_cert or args.console_key or args.console_insecure_http:
            raise UsageError("--console-cert/--console-key/--console-insecure-http need --console")
        return None
    from server.console.app import ConsoleOptions  # noqa: PLC0415 - aiohttp only when used

    options = ConsoleOptions(
        args.console, args.console_cert, args.console_key, args.console_insecure_http
    )
    options.check()
    return options


def _check_address(address: str) -> None:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise UsageError(
            f"--listen {address!r} is not HOST:PORT", hint="for example --listen 127.0.0.1:7443"
        )


def _enroll_token(args: argparse.Namespace) -> int:
    data = DataDir(args.data)
    data.require_initialised()
    enrol.check_name("client", args.client)
    if args.name:
        enrol.check_name(args.kind, args.name)
    try:
        ttl = parse_duration(args.ttl)
    except ValueError as exc:
        raise UsageError(f"--ttl {args.ttl!r}: {exc}", hint="for example --ttl 1h") from exc
    token = enrol.new_token(enrol.fingerprint(data.read(data.server_cert)))
    expires = dt.datetime.now(dt.UTC) + ttl
    store = _open(args)
    try:
        store.add_token(
            token.secret_hash, args.client, args.kind, args.name, int(expires.timestamp())
        )
    finally:
        store.close()
    print(token.text)
    print(
        f"single use, for {args.kind} of client {args.client!r}, expires "
        f"{expires.isoformat(timespec='seconds')}",
        file=sys.stderr,
    )
    return 0


def _revoke(args: argparse.Namespace) -> int:
    store = _open(args)
    try:
        agent = store.get_agent(args.agent_id)
        if agent is None:
            raise CustodesError(
                f"agent {args.agent_id!r} is not enrolled here",
                hint="`custodes server agent list` shows the enrolled agents",
            )
        changed = store.revoke_agent(args.agent_id, int(dt.datetime.now(dt.UTC).timestamp()))
    finally:
        store.close()
    print(f"agent {args.agent_id!r} " + ("revoked" if changed else "was already revoked"))
    return 0


def _list_agents(args: argparse.Namespace) -> int:
    store = _open(args)
    try:
        agents = store.list_agents(args.client)
    finally:
        store.close()
    now = dt.datetime.now(dt.UTC).timestamp()
    for a in agents:
        print(agent_line(a, now))
    return 0


# --- events and evidence ------------------------------------------------------------------


def parse_time(text: str | None, *, now: dt.datetime) -> dt.datetime | None:
    """An ISO date/time (UTC unless it names a zone), or a duration back from `now` (24h)."""
    if text is None:
        return None
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise UsageError(
            f"{text!r} is neither an ISO date/time nor a duration",
            hint="for example 2026-01-31, 2026-01-31T09:00+10:00 or 24h",
        ) from exc
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _events(args: argparse.Namespace) -> int:
    since = parse_time(args.since, now=dt.datetime.now(dt.UTC))
    store = _open(args)
    try:
        rows = store.events(
            client=args.client,
            technician=args.technician,
            area=args.area,
            verdict=args.decision,
            agent_id=args.agent,
            since_nanos=int(since.timestamp() * 1e9) if since else None,
            limit=max(1, min(args.limit, 100_000)),
        )
    finally:
        store.close()
    for row in rows:
        print(json.dumps(event_json(row)) if args.json else describe(row))
    return 0


def _export(args: argparse.Namespace) -> int:
    now = dt.datetime.now(dt.UTC)
    start = parse_time(args.from_, now=now)
    end = parse_time(args.to, now=now)
    data = DataDir(args.data)
    store = _open(args)
    try:
        summary = export_client(store, data, client=args.client, start=start, end=end, out=args.out)
    finally:
        store.close()
    print(summary)
    return 0


def _verify(args: argparse.Namespace) -> int:
    report = verify_file(args.file, args.agent_checkpoint)
    print(report)
    return 0
