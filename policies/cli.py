"""`custodes policy check` and `custodes policy explain`: thin wiring over load and decide."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timedelta
from pathlib import Path

from policies.compile import CompiledAgreement, compile_agreement
from policies.durations import parse_duration
from policies.errors import AgreementInvalid, PolicyError
from policies.load import load_agreement
from policies.model import Action, Decision, Grant, Subject
from protos.errors import UsageError


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `policy` group with `check` and `explain`."""
    group = groups.add_parser("policy", help="check and explain service agreements")
    commands = group.add_subparsers(dest="policy_command", metavar="COMMAND")
    commands.required = True

    check = commands.add_parser("check", help="validate agreement files; list every problem")
    check.add_argument("files", nargs="+", type=Path, metavar="FILE")
    check.set_defaults(func=run_check)

    explain = commands.add_parser("explain", help="show the decision for one access and why")
    explain.add_argument("file", type=Path, metavar="FILE")
    who = explain.add_mutually_exclusive_group(required=True)
    who.add_argument("--technician", metavar="ID", help="a technician id from the agreement")
    who.add_argument("--account", metavar="NAME", help="an OS account (e.g. a principal's)")
    explain.add_argument("--login-account", metavar="NAME", help="account behind loginuid")
    explain.add_argument("--exe", metavar="PATH", help="the executable (principal exe pins)")
    explain.add_argument("--path", required=True, metavar="P")
    explain.add_argument("--action", required=True, choices=[a.value for a in Action])
    explain.add_argument("--at", metavar="ISO8601", help="when (default now; naive = local)")
    explain.add_argument(
        "--grant",
        action="append",
        default=[],
        metavar="AREA:ACTIONS:UNTIL",
        help="an active grant, e.g. patient-documents:read,list:2h (repeatable)",
    )
    explain.add_argument(
        "--break-glass", action="store_true", help="the --grant options are break-glass grants"
    )
    explain.add_argument("--json", action="store_true", help="print one JSON object")
    explain.set_defaults(func=run_explain)


def run_check(args: argparse.Namespace) -> int:
    """Check each file; print ok lines to stdout and every problem to stderr."""
    failed = False
    for path in args.files:
        try:
            agreement = load_agreement(path)
        except AgreementInvalid as exc:
            failed = True
            for problem in exc.problems:
                print(problem, file=sys.stderr)
            continue
        print(
            f"ok: {path} (client {agreement.client.id}, version {agreement.version}, "
            f"{len(agreement.areas)} areas)"
        )
    if failed:
        print("hint: fix every line above, then check again", file=sys.stderr)
    return 1 if failed else 0


def _parse_at(text: str | None, compiled: CompiledAgreement) -> datetime:
    if text is None:
        return datetime.now(compiled.timezone)
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"--at {text!r} is not a date and time", hint="use ISO 8601, e.g. 2025-06-02T10:00"
        ) from None
    return at if at.tzinfo is not None else at.replace(tzinfo=compiled.timezone)


def _parse_grant(
    spec: str,
    *,
    number: int,
    technician: str,
    at: datetime,
    compiled: CompiledAgreement,
    glass: bool,
) -> Grant:
    hint = "write AREA:ACTIONS:UNTIL, e.g. patient-documents:read,list:2h"
    parts = spec.split(":", 2)
    if len(parts) != 3 or not all(parts):
        raise UsageError(f"--grant {spec!r} is not AREA:ACTIONS:UNTIL", hint=hint)
    area, actions_text, until_text = parts
    try:
        actions = frozenset(Action(a.strip()) for a in actions_text.split(","))
    except ValueError:
        raise UsageError(
            f"--grant {spec!r}: {actions_text!r} is not a list of actions",
            hint=f"actions are {', '.join(a.value for a in Action)}",
        ) from None
    try:
        end = at + parse_duration(until_text)
    except ValueError:
        try:
            end = datetime.fromisoformat(until_text)
        except ValueError:
            raise UsageError(
                f"--grant {spec!r}: {until_text!r} is neither a duration nor a time", hint=hint
            ) from None
        if end.tzinfo is None:
            end = end.replace(tzinfo=compiled.timezone)
    start = min(at, end - timedelta(seconds=1))  # an already expired grant still explains
    return Grant(f"cli-{number}", technician, area, actions, start, end, break_glass=glass)


def run_explain(args: argparse.Namespace) -> int:
    """Print the decision for one access, its reason, rule, area and kinds."""
    compiled = compile_agreement(load_agreement(args.file))
    if args.technician is not None:
        tech = next((t for t in compiled.agreement.technicians if t.id == args.technician), None)
        if tech is None:
            known = ", ".join(t.id for t in compiled.agreement.technicians)
            raise UsageError(
                f"no technician {args.technician!r} in {args.file}",
                hint=f"technicians are: {known}",
            )
        subject = Subject(account=tech.accounts[0], login_account=tech.accounts[0], exe=args.exe)
        grantee = tech.id
    else:
        subject = Subject(account=args.account, login_account=args.login_account, exe=args.exe)
        grantee = compiled.classify(subject)[1] or args.account
    at = _parse_at(args.at, compiled)
    grants = [
        _parse_grant(
            spec, number=i, technician=grantee, at=at, compiled=compiled, glass=args.break_glass
        )
        for i, spec in enumerate(args.grant, start=1)
    ]
    try:
        decision = compiled.decide(subject, args.path, Action(args.action), at, grants)
    except ValueError as exc:
        raise PolicyError(str(exc)) from None
    _print(decision, compiled, at, as_json=args.json)
    return 0


def _print(decision: Decision, compiled: CompiledAgreement, at: datetime, *, as_json: bool) -> None:
    if as_json:
        print(
            json.dumps(
                {
                    "decision": decision.verdict.value,
                    "reason": decision.reason,
                    "rule": decision.rule,
                    "area": decision.area,
                    "kinds": list(decision.kinds),
                    "individuals_estimate": decision.individuals_estimate,
                    "grant_id": decision.grant_id,
                    "subject_kind": decision.subject_kind.value,
                    "technician": decision.technician,
                    "principal": decision.principal,
                    "at": at.isoformat(),
                    "agreement": {
                        "client": compiled.client,
                        "version": compiled.version,
                        "sha256": compiled.sha256,
                    },
                },
                indent=2,
            )
        )
        return
    print(f"decision: {decision.verdict.value}")
    print(f"reason:   {decision.reason}")
    print(f"rule:     {decision.rule}")
    print(f"area:     {decision.area or '-'}")
    print(f"kinds:    {', '.join(decision.kinds) or '-'}")
    if decision.grant_id:
        print(f"grant:    {decision.grant_id}")
