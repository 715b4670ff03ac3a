"""`custodes server user add|list` and `custodes server agreement apply|list`.

People are identities with a role: technician, approver, auditor or admin, each of one
client (`--client`) or MSP-wide. `user add` stores the person and prints a single-use
enrolment token bound to that name (kind "person"); `custodes login --token` exchanges it
for the person's client certificate. An approver of a client counts as its practice or
client manager in agreement terms (client_manager, practice_manager); an MSP-wide approver
as the MSP lead (msp_lead, msp_owner). A technician maps to the agreement technician of the
same name unless `--technician ID` says otherwise.

`agreement apply FILE` validates an agreement with the policies loader and stores it as a
new version of its client; the running server notices it and pushes it, signed, to the
client's agents.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeAlias

from policies.durations import parse_duration
from policies.load import load_agreement
from protos.errors import UsageError
from server import enrol
from server.access import Person, Role
from server.access_service import MSP_CLIENT
from server.console.cli import add_passwd
from server.datadir import DEFAULT_DATA, DataDir
from server.store import Store, StoreConflictError
from server.store.access import AccessStore

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
OpenStore: TypeAlias = Callable[[argparse.Namespace], Store]


class PersonError(UsageError):
    """A person cannot be added as asked."""


def new_person(name: str, role: str, client: str | None, technician: str | None) -> Person:
    """A valid Person from command-line words; PersonError naming what is wrong."""
    try:
        enrol.check_name("person", name)
        the_role = Role(role)
        if client is not None:
            enrol.check_name("client", client)
        if technician is not None:
            enrol.check_name("technician", technician)
    except ValueError:
        raise PersonError(
            f"role {role!r} is unknown; expected one of {', '.join(r.value for r in Role)}"
        ) from None
    if client == MSP_CLIENT:
        raise PersonError(f"client {MSP_CLIENT!r} is reserved for MSP-wide people; omit --client")
    if technician is not None and the_role not in (Role.TECHNICIAN, Role.APPROVER):
        raise PersonError("--technician applies to technicians and leads (approvers) only")
    if technician is not None and the_role is Role.APPROVER and client is not None:
        raise PersonError("a client's approver is not an MSP technician; omit --technician")
    if the_role is Role.TECHNICIAN and technician is None:
        technician = name
    return Person(name=name, role=the_role, client=client, technician=technician)


def add_person(store: Store, data: DataDir, person: Person, ttl: dt.timedelta) -> str:
    """Store `person` and a single-use enrolment token for them; returns the token text."""
    now = dt.datetime.now(dt.UTC)
    AccessStore(store).add_person(person, int(now.timestamp()))
    token = enrol.new_token(enrol.fingerprint(data.read(data.server_cert)))
    store.add_token(
        token.secret_hash,
        person.client or MSP_CLIENT,
        "person",
        person.name,
        int((now + ttl).timestamp()),
    )
    return token.text


def register(commands: Subparsers, open_store_for: OpenStore) -> None:
    """Add `user` and `agreement` to the `server` group (called by server/cli.py)."""
    user = commands.add_parser("user", help="people: technicians, approvers, auditors, admins")
    user_commands = user.add_subparsers(dest="user_command", metavar="COMMAND")
    user_commands.required = True
    add = user_commands.add_parser("add", help="add a person and print their enrolment token")
    add.add_argument("name", metavar="NAME")
    add.add_argument("--role", required=True, choices=[r.value for r in Role])
    add.add_argument("--client", default=None, help="the client they belong to (omit: the MSP)")
    add.add_argument(
        "--technician",
        default=None,
        help="the agreement technician id (technicians: default NAME; an MSP lead who is "
        "also a technician may request too, never approve their own)",
    )
    add.add_argument("--ttl", default="24h", help="how long the token is valid (default 24h)")
    _common(add)
    add.set_defaults(func=lambda a: _add(a, open_store_for))
    listing = user_commands.add_parser("list", help="list people")
    listing.add_argument("--client", default=None)
    _common(listing)
    listing.set_defaults(func=lambda a: _list_people(a, open_store_for))
    add_passwd(user_commands, open_store_for)  # `server user passwd NAME` (the console's)

    agreement = commands.add_parser("agreement", help="service agreements the agents enforce")
    agreement_commands = agreement.add_subparsers(dest="agreement_command", metavar="COMMAND")
    agreement_commands.required = True
    apply = agreement_commands.add_parser(
        "apply", help="validate and store a new version; the server pushes it to the agents"
    )
    apply.add_argument("file", type=Path, metavar="FILE")
    _common(apply)
    apply.set_defaults(func=lambda a: _apply(a, open_store_for))
    versions = agreement_commands.add_parser("list", help="list stored agreement versions")
    versions.add_argument("--client", default=None)
    _common(versions)
    versions.set_defaults(func=lambda a: _list_agreements(a, open_store_for))


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help=f"data directory (default {DEFAULT_DATA})"
    )
    parser.add_argument("--database", default=None, help="database URL (default: from DIR)")


def _add(args: argparse.Namespace, open_store_for: OpenStore) -> int:
    person = new_person(args.name, args.role, args.client, args.technician)
    try:
        ttl = parse_duration(args.ttl)
    except ValueError as exc:
        raise UsageError(f"--ttl {args.ttl!r}: {exc}", hint="for example --ttl 24h") from exc
    store = open_store_for(args)
    try:
        token = add_person(store, DataDir(args.data), person, ttl)
    except StoreConflictError as exc:
        raise PersonError(str(exc), hint="`custodes server user list` shows who exists") from exc
    finally:
        store.close()
    print(token)
    print(
        f"single use, for {person.role} {person.name!r} of "
        f"{person.client or 'the MSP'}; they run `custodes login --server HOST:PORT --token ...`",
        file=sys.stderr,
    )
    return 0


def _list_people(args: argparse.Namespace, open_store_for: OpenStore) -> int:
    store = open_store_for(args)
    try:
        people = AccessStore(store).list_people(args.client)
    finally:
        store.close()
    for p in people:
        kinds = ",".join(sorted(p.approver_kinds)) or "-"
        print(f"{p.name}\t{p.role}\t{p.client or '(msp)'}\t{p.technician or '-'}\t{kinds}")
    return 0


def _apply(args: argparse.Namespace, open_store_for: OpenStore) -> int:
    agreement = load_agreement(args.file)
    yaml = args.file.read_bytes()
    store = open_store_for(args)
    try:
        row, new = AccessStore(store).add_agreement(
            agreement.client.id,
            agreement.version,
            agreement.sha256,
            yaml,
            at_unix=int(dt.datetime.now(dt.UTC).timestamp()),
            by=getpass.getuser(),
        )
    except StoreConflictError as exc:
        raise UsageError(str(exc), hint="raise `version:` in the agreement file") from exc
    finally:
        store.close()
    what = "stored" if new else "already stored"
    print(f"agreement {row.version} of {row.client} {what} (sha256 {row.sha256[:16]}…)")
    return 0


def _list_agreements(args: argparse.Namespace, open_store_for: OpenStore) -> int:
    store = open_store_for(args)
    try:
        rows = AccessStore(store).list_agreements(args.client)
    finally:
        store.close()
    current = {r.client: r.id for r in rows}
    for r in rows:
        when = dt.datetime.fromtimestamp(r.applied_unix, dt.UTC).isoformat(timespec="seconds")
        mark = "current" if current[r.client] == r.id else "-"
        print(f"{r.client}\t{r.version}\t{mark}\t{when}\t{r.applied_by}\t{r.sha256[:16]}")
    return 0
