"""`custodes incidents list|show|assess|decide|statement|notified|close|register`.

Each command acts on a server data directory (`--data DIR`) and its database, like the
other server admin commands. Steps of the assessment name who took them (`--by`); every
step is kept in the incident's audit trail.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import sys
import textwrap
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TextIO, TypeAlias

from protos.errors import UsageError
from server.datadir import DEFAULT_DATA, DataDir
from server.incidents import assessment, statement
from server.incidents import register as book_register
from server.incidents.model import FACTORS, NOTIFY_OPTIONS, AuditEntry, Incident, State
from server.store import Store, open_store
from server.store.incidents import IncidentStore

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Step = Callable[[Incident, float], tuple[Incident, AuditEntry]]
CHUNK = 500  # incidents read per query by `list` and `register`
MAX_CHUNKS = 20_000  # 10M incidents: a bound on the loop, never reached in practice


def register(groups: Subparsers) -> None:
    """Add `custodes incidents ...`."""
    top = groups.add_parser("incidents", help="possible breaches and their NDB assessment")
    commands = top.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    listing = _command(commands, "list", "list incidents", _list)
    listing.add_argument("--client")
    listing.add_argument("--state", choices=[s.value for s in State], action="append")
    listing.add_argument("--overdue", action="store_true", help="only overdue assessments")
    listing.add_argument("--json", action="store_true")

    show = _command(commands, "show", "an incident, its assessment, audit trail, deliveries", _show)
    show.add_argument("id", metavar="ID")
    show.add_argument("--json", action="store_true")

    assess = _command(commands, "assess", "record s 26WG factors and containment steps", _assess)
    assess.add_argument("id", metavar="ID")
    _by(assess)
    assess.add_argument(
        "--factor",
        action="append",
        default=[],
        metavar="KEY=REASON",
        help=f"an s 26WG factor and its reason (KEY one of {', '.join(FACTORS)})",
    )
    assess.add_argument("--containment", action="append", default=[], metavar="STEP")
    assess.add_argument("--at", help="when the containment steps were taken (ISO; default now)")
    assess.add_argument(
        "--my-health-records",
        choices=["yes", "no"],
        help="the breach involves My Health Record information (s 75: notify the System Operator)",
    )

    decide = _command(commands, "decide", "decide the assessment, with reasons", _decide)
    decide.add_argument("id", metavar="ID")
    _by(decide)
    decide.add_argument(
        "--outcome", required=True, choices=[s.value for s in sorted(assessment.OUTCOMES)]
    )
    decide.add_argument("--reason", action="append", default=[], required=True)

    draft = _command(commands, "statement", "print the draft s 26WK statement", _statement)
    draft.add_argument("id", metavar="ID")
    draft.add_argument(
        "--prepared", action="store_true", help="record that the statement was prepared"
    )
    draft.add_argument("--by", default="", help="who prepared it (with --prepared)")

    notified = _command(commands, "notified", "record that individuals were notified", _notified)
    notified.add_argument("id", metavar="ID")
    _by(notified)
    notified.add_argument("--option", required=True, choices=sorted(NOTIFY_OPTIONS))

    close = _command(commands, "close", "close a decided incident", _close)
    close.add_argument("id", metavar="ID")
    _by(close)
    close.add_argument("--note", required=True, help="the outcome, in a sentence")

    reg = _command(commands, "register", "the breach register", _register)
    reg.add_argument("--format", choices=["csv", "json"], default="csv")
    reg.add_argument("--client")
    reg.add_argument("--out", type=Path, help="write to FILE instead of standard output")


def _command(
    commands: Subparsers, name: str, help_text: str, func: Callable[[argparse.Namespace], int]
) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=help_text)
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help=f"data directory (default {DEFAULT_DATA})"
    )
    parser.add_argument("--database", default=None, help="database URL (default: from DIR)")
    parser.set_defaults(func=func)
    return parser


def _by(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--by", required=True, help="who takes this step (for the audit trail)")


def _open(args: argparse.Namespace) -> Store:
    data = DataDir(args.data)
    data.require_initialised()
    url = args.database
    if not url:
        recorded = data.load_settings().get("database")
        url = recorded if isinstance(recorded, str) and recorded else data.default_database_url()
    return open_store(url)


def parse_id(text: str) -> int:
    """An incident id as `7` or `INC-000007`."""
    digits = text.upper().removeprefix("INC-")
    if not digits.isdigit():
        raise UsageError(
            f"{text!r} is not an incident id", hint="for example INC-000007 or 7; see `list`"
        )
    return int(digits)


def _now() -> float:
    return dt.datetime.now(dt.UTC).timestamp()


def _when(text: str | None) -> float:
    if text is None:
        return _now()
    try:
        at = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise UsageError(
            f"--at {text!r} is not an ISO date/time", hint="for example 2026-01-31T09:00+10:00"
        ) from exc
    return (at if at.tzinfo else at.replace(tzinfo=dt.UTC)).timestamp()


def _each(
    store: Store, client: str | None, states: Sequence[State] | None = None
) -> Iterator[Incident]:
    """Every incident (of `client`, in `states`) by id, read CHUNK at a time: a register of
    years of incidents is never held in memory at once."""
    found = IncidentStore(store)
    after = 0
    for _ in range(MAX_CHUNKS):
        chunk = found.incidents(client=client, states=states, after_id=after, limit=CHUNK)
        yield from chunk
        if len(chunk) < CHUNK:
            return
        after = chunk[-1].id
    raise UsageError(
        f"more than {MAX_CHUNKS * CHUNK:,} incidents; expected fewer",
        hint="narrow the list with --client",
    )


def _list(args: argparse.Namespace) -> int:
    store = _open(args)
    now = _now()
    try:
        states = [State(s) for s in args.state] if args.state else None
        for inc in _each(store, args.client, states):
            if args.overdue and not inc.overdue(now):
                continue
            if args.json:
                print(json.dumps(book_register.row(inc, now)))
                continue
            flag = " OVERDUE" if inc.overdue(now) else ""
            print(
                f"{inc.label}\t{inc.client}\t{inc.state}{flag}\t{inc.rule}\t{inc.subject}\t"
                f"due {book_register.iso(inc.due_unix)[:10]}\t{inc.summary}"
            )
    finally:
        store.close()
    return 0


def _show(args: argparse.Namespace) -> int:
    store = _open(args)
    try:
        book = IncidentStore(store)
        inc = book.get(parse_id(args.id))
        evidence = book.evidence(inc.id, limit=20)
        deliveries = book.deliveries(inc.id)
    finally:
        store.close()
    now = _now()
    if args.json:
        out = book_register.row(inc, now) | {
            "audit": [
                [book_register.iso(e.at_unix), e.actor, e.action, e.detail] for e in inc.audit
            ],
            "factors": {f.key: f.reason for f in inc.factors},
            "evidence": [list(e) for e in evidence],
            "deliveries": [[d.channel, d.target, d.event, d.state, d.attempts] for d in deliveries],
        }
        print(json.dumps(out, indent=2))
        return 0
    for key, value in book_register.row(inc, now).items():
        if value not in ("", None):
            print(f"{key:22} {value}")
    if inc.factors:
        print("s 26WG factors:")
        for f in inc.factors:
            print(f"  {FACTORS[f.key]}: {f.reason} ({f.by}, {book_register.iso(f.at_unix)})")
    print(f"evidence (first {len(evidence)} of {inc.evidence_count}):")
    for agent_id, seq in evidence:
        print(f"  {agent_id} seq {seq}")
    print("audit trail:")
    for e in inc.audit:
        print(f"  {book_register.iso(e.at_unix)}  {e.actor:20} {e.action:10} {e.detail}")
    if deliveries:
        print("notifications:")
        for d in deliveries:
            error = f"  ({d.last_error[:120]})" if d.last_error else ""
            print(f"  {d.channel} {d.target} {d.event}: {d.state} after {d.attempts}{error}")
    return 0


def _step(args: argparse.Namespace, step: Step) -> int:
    store = _open(args)
    try:
        book = IncidentStore(store)
        before = book.get(parse_id(args.id))
        after, entry = step(before, _now())
        stored = book.save_step(before, after, entry)
    finally:
        store.close()
    print(f"{stored.label} is {stored.state}: {entry.detail}")
    return 0


def _assess(args: argparse.Namespace) -> int:
    factors: dict[str, str] = {}
    for item in args.factor:
        key, sep, reason = item.partition("=")
        if not sep:
            raise UsageError(
                f"--factor {item!r} is not KEY=REASON", hint="for example --factor harm='low'"
            )
        factors[key.strip()] = reason
    at = _when(args.at)
    mhr = None if args.my_health_records is None else args.my_health_records == "yes"
    return _step(
        args,
        lambda inc, now: assessment.assess(
            inc,
            args.by,
            now,
            factors=factors,
            containment=[(s, at) for s in args.containment],
            my_health_records=mhr,
        ),
    )


def _decide(args: argparse.Namespace) -> int:
    outcome = State(args.outcome)
    return _step(args, lambda inc, now: assessment.decide(inc, args.by, now, outcome, args.reason))


def _notified(args: argparse.Namespace) -> int:
    return _step(
        args, lambda inc, now: assessment.notify_individuals(inc, args.by, now, args.option)
    )


def _close(args: argparse.Namespace) -> int:
    return _step(args, lambda inc, now: assessment.close(inc, args.by, now, args.note))


def _statement(args: argparse.Namespace) -> int:
    if args.prepared:
        _step(args, lambda inc, now: assessment.prepare_statement(inc, args.by, now))
    store = _open(args)
    try:
        inc = IncidentStore(store).get(parse_id(args.id))
    finally:
        store.close()
    sys.stdout.write(statement.draft(inc))
    return 0


def _register(args: argparse.Namespace) -> int:
    store = _open(args)
    try:
        if args.out is None:
            _write_register(sys.stdout, _each(store, args.client), args.format, _now())
            return 0
        part = args.out.with_name(f".{args.out.name}.part")
        with part.open("w", encoding="utf-8") as out:
            count = _write_register(out, _each(store, args.client), args.format, _now())
        part.replace(args.out)
    finally:
        store.close()
    print(f"wrote {count} incident(s) to {args.out}", file=sys.stderr)
    return 0


def _write_register(out: TextIO, incidents: Iterable[Incident], fmt: str, now: float) -> int:
    """The register as CSV or JSON (as register.to_csv/to_json write it), row by row;
    how many incidents."""
    count = 0
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=book_register.COLUMNS, lineterminator="\n")
        writer.writeheader()
        for count, inc in enumerate(incidents, 1):  # noqa: B007 - the count is returned
            writer.writerow(book_register.row(inc, now))
        return count
    for count, inc in enumerate(incidents, 1):
        text = json.dumps(book_register.row(inc, now), indent=2)
        out.write(("[\n" if count == 1 else ",\n") + textwrap.indent(text, "  "))
    out.write("\n]\n" if count else "[]\n")
    return count
