"""Cross-checks over the whole agreement: references, duplicates, accounts claimed twice.

They run over the plain data (not the validated model) so that they still report their
problems when some field elsewhere has the wrong type: every problem is found in one pass.
Each check skips whatever is malformed; the schema reports that part.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from policies.positions import Loc

Finding = tuple[Loc, str]
# A shared system account cannot stand for one person: every root daemon would count as them.
SHARED_ACCOUNTS = frozenset({"root", "nobody", "daemon", "bin", "sys"})


def _items(data: Any, key: str) -> Iterator[tuple[int, dict[str, Any]]]:
    value = data.get(key) if isinstance(data, dict) else None
    if isinstance(value, list):
        for i, item in enumerate(value):
            if isinstance(item, dict):
                yield i, item


def _strings(value: Any) -> Iterator[tuple[int | None, str]]:
    """(index, string) of a list of strings, or (None, s) of a single string."""
    if isinstance(value, str):
        yield None, value
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if isinstance(item, str):
                yield i, item


def _at(base: Loc, index: int | None) -> Loc:
    return base if index is None else (*base, index)


def cross_check(data: Any) -> list[Finding]:
    """Every cross-reference problem in the agreement's plain data, as (loc, message)."""
    if not isinstance(data, dict):
        return []
    findings: list[Finding] = []
    findings += _unique_ids(data, "technicians", "id", "technician")
    findings += _unique_ids(data, "areas", "id", "area")
    findings += _unique_ids(data, "principals", "name", "principal")
    findings += _accounts(data)
    findings += _area_paths(data)
    areas = {a["id"] for _, a in _items(data, "areas") if isinstance(a.get("id"), str)}
    techs = {t["id"] for _, t in _items(data, "technicians") if isinstance(t.get("id"), str)}
    for section in ("in_scope", "just_in_time"):
        for i, rule in _items(data, section):
            findings += _refs(rule.get("areas"), (section, i, "areas"), areas, "area")
            findings += _refs(
                rule.get("technicians"), (section, i, "technicians"), techs, "technician"
            )
    glass = data.get("break_glass")
    if isinstance(glass, dict):
        findings += _refs(glass.get("areas"), ("break_glass", "areas"), areas, "area")
    return findings


def _unique_ids(data: dict[str, Any], section: str, key: str, noun: str) -> list[Finding]:
    first: dict[str, int] = {}
    out: list[Finding] = []
    for i, item in _items(data, section):
        value = item.get(key)
        if not isinstance(value, str):
            continue
        if value in first:
            out.append(
                (
                    (section, i, key),
                    f"duplicate {noun} {key} {value!r} (also {section}[{first[value]}]); "
                    "expected each once",
                )
            )
        else:
            first[value] = i
    return out


def _accounts(data: dict[str, Any]) -> list[Finding]:
    owner: dict[str, str] = {}
    out: list[Finding] = []
    for i, tech in _items(data, "technicians"):
        who = f"technician {tech.get('id')!r}"
        for j, account in _strings(tech.get("accounts")):
            loc = _at(("technicians", i, "accounts"), j)
            if account in SHARED_ACCOUNTS:
                out.append(
                    (loc, f"{account!r} is a shared system account; expected the technician's own")
                )
            if account in owner:
                out.append((loc, f"OS account {account!r} is already claimed by {owner[account]}"))
            else:
                owner[account] = who
    for i, principal in _items(data, "principals"):
        pacct = principal.get("account")
        if not isinstance(pacct, str):
            continue
        ploc: Loc = ("principals", i, "account")
        if pacct in owner:
            out.append((ploc, f"OS account {pacct!r} is already claimed by {owner[pacct]}"))
        else:
            owner[pacct] = f"principal {principal.get('name')!r}"
        if pacct in SHARED_ACCOUNTS and not principal.get("exe"):
            out.append(
                (
                    ploc,
                    f"{pacct!r} is a shared system account; "
                    "expected an exe pin so that only that program is always allowed",
                )
            )
    return out


def _area_paths(data: dict[str, Any]) -> list[Finding]:
    """The same glob in two places makes the area ambiguous or empty."""
    owner: dict[str, str] = {}
    out: list[Finding] = []
    for i, area in _items(data, "areas"):
        name = area.get("id")
        for j, glob in _strings(area.get("paths")):
            loc = _at(("areas", i, "paths"), j)
            if glob in owner:
                out.append(
                    (loc, f"path {glob!r} is already in area {owner[glob]!r}; expected it once")
                )
            else:
                owner[glob] = str(name)
        own = {g for _, g in _strings(area.get("paths"))}
        for j, glob in _strings(area.get("exclude")):
            if glob in own:
                out.append(
                    (
                        _at(("areas", i, "exclude"), j),
                        f"exclude {glob!r} is also one of this area's paths; it would empty it",
                    )
                )
    return out


def _refs(value: Any, base: Loc, known: set[str], noun: str) -> list[Finding]:
    out: list[Finding] = []
    for j, ref in _strings(value):
        if ref == "*" or ref in known:
            continue
        expected = ", ".join(sorted(known)) or "none defined"
        out.append((_at(base, j), f"unknown {noun} {ref!r}; expected one of: {expected}"))
    return out
