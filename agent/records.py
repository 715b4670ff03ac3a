"""What the gate hands to the journal: plain, frozen records, and the sink they go to.

The gate answers the kernel first and then calls `EventSink.record`, which must never
block. For a denied access the gate passes `on_durable`, and answers EPERM only when the
journal calls it back (the deny is then on disk), so a denial is never lost, while every
other opener goes on being answered by the gate thread in the meantime.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from policies.model import Action, Decision


@dataclass(frozen=True, slots=True)
class Attribution:
    """Who opened: read from /proc for the blocked opener (see agent.attribute)."""

    pid: int
    uid: int
    loginuid: int | None  # None when unset (4294967295 in /proc/PID/loginuid)
    account: str  # effective user name (numeric string when unknown to the system)
    login_account: str | None  # user name behind loginuid
    session_id: int | None = None
    ppid: int | None = None
    exe: str = ""  # filled for technician events only (enrichment)
    cmdline: str = ""  # bounded; technician events only


@dataclass(frozen=True, slots=True)
class AccessRecord:
    """One decided access, as the journal will record it."""

    unix_nanos: int
    attribution: Attribution
    path: str
    action: Action
    decision: Decision
    enforcing: bool  # False in monitor mode: the access was only observed
    device: int = 0
    inode: int = 0


class EventSink(Protocol):
    """Where decided accesses go. Implemented by the journal; a list in unit tests."""

    def record(self, rec: AccessRecord, on_durable: Callable[[bool], None] | None = None) -> None:
        """Queue `rec` without blocking.

        When `on_durable` is given it is called exactly once, from another thread:
        `on_durable(True)` when the record is fsynced, `on_durable(False)` when it could not
        be (disk full, journal closed) so that the caller never waits forever.
        """
        ...
