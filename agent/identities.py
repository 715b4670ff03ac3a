"""Who is a technician, a principal or anyone else, by uid: the gate's hot-path lookup.

The agreement names OS accounts; they are resolved to uids with `pwd` once per agreement
load, so the gate decides "is this a technician?" with two dict lookups on ints. An account
unknown to this machine is skipped (and listed in `unresolved`): it cannot open anything.

Root (uid 0) is matched only through the loginuid (a login as root), never through the
effective uid: every system daemon runs as root with no loginuid, and none of them is a
technician.
"""

from __future__ import annotations

import pwd
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from policies.model import SubjectKind

UNSET_LOGINUID = 4294967295  # (uid_t)-1: /proc/PID/loginuid of a process no login set


@dataclass(frozen=True, slots=True)
class Identities:
    """uid → technician and uid → principal, resolved from an agreement's accounts."""

    technician_uids: Mapping[int, str] = field(default_factory=dict)
    principal_uids: Mapping[int, str] = field(default_factory=dict)
    unresolved: tuple[str, ...] = ()

    def classify(self, uid: int, loginuid: int | None) -> tuple[SubjectKind, str | None]:
        """The kind of subject and the technician or principal it names.

        A technician behind the loginuid wins over the effective account (su, sudo keep it).
        """
        if loginuid is not None:
            tech = self.technician_uids.get(loginuid)
            if tech is not None:
                return SubjectKind.TECHNICIAN, tech
        if uid != 0:
            tech = self.technician_uids.get(uid)
            if tech is not None:
                return SubjectKind.TECHNICIAN, tech
        principal = self.principal_uids.get(uid)
        if principal is not None:
            return SubjectKind.PRINCIPAL, principal
        return SubjectKind.OTHER, None


def _uid_of(account: str) -> int | None:
    try:
        return pwd.getpwnam(account).pw_uid
    except KeyError:
        return None


def resolve(
    technician_accounts: Mapping[str, str], principal_accounts: Collection[str]
) -> Identities:
    """Resolve account names to uids (one `pwd` lookup per account)."""
    techs: dict[int, str] = {}
    principals: dict[int, str] = {}
    unresolved: list[str] = []
    for account, technician in technician_accounts.items():
        uid = _uid_of(account)
        if uid is None:
            unresolved.append(account)
        else:
            techs[uid] = technician
    for account in principal_accounts:
        uid = _uid_of(account)
        if uid is None:
            unresolved.append(account)
        elif uid not in techs:  # a shared account is never a free pass for a technician
            principals[uid] = (
                str(principal_accounts[account])
                if isinstance(principal_accounts, Mapping)
                else account
            )
    return Identities(techs, principals, tuple(unresolved))
