"""Monitor mode: watch the areas with inotify (watchdog) and record what happened.

For hosts where the gate cannot run (no CAP_SYS_ADMIN, a container, a kernel without
fanotify permission events). It cannot block anything and cannot say who acted: inotify
reports no process. Every record says so (`enforcing=False`, rule "monitor", an unknown
actor); the area and kinds of information come from the agreement, so the server can still
count what was touched. Same surface as the Gate, so the daemon can run either.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import structlog
from watchdog import events as wd
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from agent.gate import GatePolicy
from agent.identities import UNSET_LOGINUID
from agent.marks import MarkRefused, plan
from agent.records import AccessRecord, Attribution, EventSink
from policies.model import Action, Decision, Grant, Subject, SubjectKind, Verdict

log = structlog.get_logger("custodes.agent.observe")

UNKNOWN = Attribution(
    pid=0, uid=UNSET_LOGINUID, loginuid=None, account="unknown", login_account=None
)  # uid (uid_t)-1: no user could be named
REASON = (
    "monitor mode: seen through inotify after the fact; nothing was blocked and the actor "
    "is unknown"
)
# An explicit filter: on a large tree, unfiltered modify/open events overflow inotify's queue.
EVENT_FILTER: list[type[wd.FileSystemEvent]] = [
    wd.FileCreatedEvent,
    wd.DirCreatedEvent,
    wd.FileDeletedEvent,
    wd.DirDeletedEvent,
    wd.FileMovedEvent,
    wd.DirMovedEvent,
    wd.FileClosedEvent,
    wd.FileClosedNoWriteEvent,
]
_ACTIONS: dict[str, Action] = {
    wd.EVENT_TYPE_CREATED: Action.CREATE,
    wd.EVENT_TYPE_DELETED: Action.DELETE,
    wd.EVENT_TYPE_MOVED: Action.RENAME,
    wd.EVENT_TYPE_CLOSED: Action.WRITE,
    wd.EVENT_TYPE_CLOSED_NO_WRITE: Action.READ,
}


@dataclass(frozen=True, slots=True)
class MonitorStats:
    """Counters since start."""

    events: int
    recorded: int
    errors: int


class Monitor(wd.FileSystemEventHandler):
    """Records accesses in the area roots; never blocks. Raises MarkRefused from `start`."""

    enforcing = False

    def __init__(
        self,
        *,
        policy: GatePolicy,
        sink: EventSink,
        roots: Sequence[str],
        exempt_pids: Collection[int] = (),
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        super().__init__()
        self._policy = policy
        self._sink = sink
        self._roots = list(roots)
        self._clock = clock
        self._grants: tuple[Grant, ...] = ()
        self._observer: BaseObserver | None = None
        self._lock = threading.Lock()
        self._n = [0, 0, 0]
        self._last_progress = time.monotonic()
        del exempt_pids  # inotify names no process: nothing to exempt

    def start(self) -> None:
        """Watch every root recursively; log that nothing can be blocked."""
        plans = plan(self._roots)
        observer = Observer()
        for p in plans:
            observer.schedule(self, p.root, recursive=True, event_filter=EVENT_FILTER)
        observer.daemon = True
        observer.start()
        self._observer = observer
        log.warning(
            "monitor_started",
            roots=[p.root for p in plans],
            enforcing=False,
            note="monitor mode records what it sees and cannot block or attribute",
        )

    def stop(self) -> None:
        """Stop watching (bounded join)."""
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            observer.join(5.0)
        log.info("monitor_stopped", stats=str(self.stats))

    def fail_open(self) -> None:
        """Nothing is ever held in monitor mode; stop watching."""
        self.stop()

    def swap_policy(self, policy: GatePolicy, roots: Sequence[str] | None = None) -> None:
        """Swap the policy; re-watch when the roots changed. Raises MarkRefused."""
        wanted = list(roots) if roots is not None else [d for _, d in policy.area_roots()]
        plan(wanted)  # refuse before anything changes
        self._policy = policy
        if sorted(wanted) != sorted(self._roots) and self._observer is not None:
            self.stop()
            self._roots = wanted
            self.start()
        self._roots = wanted

    def set_grants(self, grants: Sequence[Grant]) -> None:
        """Replace the active grants (used only to fill in the would-be decision)."""
        self._grants = tuple(grants)

    @property
    def last_progress(self) -> float:
        """time.monotonic() of the last recorded event, or now while watching."""
        return time.monotonic() if self._observer is not None else self._last_progress

    @property
    def marks(self) -> int:
        """No fanotify marks in monitor mode."""
        return 0

    @property
    def stats(self) -> MonitorStats:
        """A snapshot of the counters."""
        return MonitorStats(*self._n)

    def on_any_event(self, event: wd.FileSystemEvent) -> None:
        """Record one event (watchdog's thread)."""
        self._n[0] += 1
        action = _ACTIONS.get(event.event_type)
        if action is None:
            return
        if event.is_directory and action in (Action.READ, Action.WRITE):
            return
        raw = event.dest_path if action is Action.RENAME and event.dest_path else event.src_path
        path = raw.decode() if isinstance(raw, bytes) else str(raw)
        try:
            self._record(Path(path).as_posix(), action)
        except Exception as e:  # keep watching; the loss is counted
            self._n[2] += 1
            log.exception("monitor_record_failed", error=str(e))

    def _record(self, path: str, action: Action) -> None:
        now = self._clock()
        at = datetime.fromtimestamp(now / 1e9, tz=UTC)
        seen = self._policy.decide(Subject(UNKNOWN.account), path, action, at, self._grants)
        decision = replace(
            seen,
            verdict=Verdict.ALLOW,
            reason=REASON,
            rule="monitor",
            subject_kind=SubjectKind.OTHER,
        )
        self._sink.record(AccessRecord(now, UNKNOWN, path, action, decision, enforcing=False))
        self._n[1] += 1
        self._last_progress = time.monotonic()


__all__ = ["REASON", "Decision", "MarkRefused", "Monitor", "MonitorStats"]
