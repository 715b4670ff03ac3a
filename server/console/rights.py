"""Who may see and do what in the console (pure: people and rows in, answers out).

The viewer is a `server.access.Person`: a role (technician, approver, auditor, admin) and a
client (None: MSP-wide). Client-bound people see only their client. Technicians see only
their own requests and their own events. Paths and command lines name patients, so they
are shown only where `sees_sensitive` says so, and masked everywhere else; that function
is the one place the rule lives.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from pathlib import PurePosixPath

from protos.errors import CustodesError
from server.access import Person, Role

MASK = "•••"


class ConsoleForbiddenError(CustodesError):
    """The viewer may not see this page or take this action."""


def clients_in_scope(viewer: Person, known: Sequence[str]) -> list[str]:
    """The clients whose data `viewer` may see, out of `known` (sorted)."""
    return sorted(c for c in set(known) if viewer.serves(c))


def may_see_client(viewer: Person, client: str) -> bool:
    """Whether `viewer` may see `client`'s pages (technicians: only their own rows of it)."""
    return viewer.serves(client)


def sees_all_events(viewer: Person) -> bool:
    """False for technicians, who see only their own events."""
    return viewer.role is not Role.TECHNICIAN


def may_read_incidents(viewer: Person) -> bool:
    """Incidents, the breach register and statements: everyone but technicians."""
    return viewer.role is not Role.TECHNICIAN


def may_assess(viewer: Person, client: str) -> bool:
    """Record s 26WG factors, containment and decisions for `client`'s incidents.

    The client's own privacy officer (an auditor of that client) and approvers of that
    client, and MSP-wide auditors and admins.
    """
    if not viewer.serves(client):
        return False
    if viewer.client is None:
        return viewer.role in (Role.AUDITOR, Role.ADMIN)
    return viewer.role in (Role.AUDITOR, Role.APPROVER, Role.ADMIN)


def may_decide_requests(viewer: Person, client: str) -> bool:
    """Whether to offer approve/deny/revoke (the workflow itself still checks every rule)."""
    return viewer.role in (Role.APPROVER, Role.ADMIN) and viewer.serves(client)


def sees_sensitive(viewer: Person, client: str, technician: str | None) -> bool:
    """THE masking rule: may `viewer` read the paths and command lines of this event?

    * a technician: only in their own events;
    * a person bound to the client (practice manager, privacy officer, the client's
      auditor): yes, it is their own data;
    * an MSP-wide auditor: yes, auditing and incident assessment need the file names;
    * an MSP-wide approver or admin: no, approving and running the service does not.
    """
    if not viewer.serves(client):
        return False
    if viewer.role is Role.TECHNICIAN:
        own = viewer.technician or viewer.name
        return technician is not None and technician == own
    if viewer.client is not None:
        return True
    return viewer.role is Role.AUDITOR


def mask_path(path: str, key: bytes) -> str:
    """A path with every name hidden but the first directory and the extension.

    The short keyed tag lets a reader see that two events touched the same file without
    learning its name (the key is per console process, so tags do not travel).
    """
    if not path:
        return ""
    p = PurePosixPath(path)
    tag = hmac.new(key, path.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()[:6]
    first = p.parts[1] if p.is_absolute() and len(p.parts) > 2 else ""
    ext = p.suffix if 0 < len(p.suffix) <= 6 else ""
    head = f"/{first}/…/" if first else "…/"
    return f"{head}{MASK}{ext} [{tag}]"


def mask_cmdline(cmdline: str) -> str:
    """Only the program's base name; the arguments (which may name files) are hidden."""
    if not cmdline.strip():
        return ""
    program = PurePosixPath(cmdline.split(maxsplit=1)[0]).name
    return f"{program} {MASK}" if len(cmdline.split()) > 1 else program


def shown_path(viewer: Person, client: str, technician: str | None, path: str, key: bytes) -> str:
    """The path as this viewer may read it."""
    return path if sees_sensitive(viewer, client, technician) else mask_path(path, key)


def shown_cmdline(viewer: Person, client: str, technician: str | None, cmdline: str) -> str:
    """The command line as this viewer may read it."""
    return cmdline if sees_sensitive(viewer, client, technician) else mask_cmdline(cmdline)
