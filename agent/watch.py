"""The gate's notification thread: new directories marked at once, a technician's creates,
deletes and renames recorded.

fanotify permission events cannot gate a create, a delete or a rename; the notification
group reports them after the fact. New directories are marked first (until marked, opens in
them escape the gate), then the actor is identified (it is not blocked and may be gone
within a millisecond), then a technician's change is decided by the policy and journaled
with `enforcing=False` and a reason that says it was recorded, not gated.
"""

from __future__ import annotations

import os
import select
import threading
from collections.abc import Callable, Collection
from dataclasses import replace
from datetime import UTC, datetime

import structlog

from agent import attribute as attr
from agent import fanotify as fan
from agent.marks import DirEntryChange, Marker
from agent.records import AccessRecord, Attribution, EventSink
from policies.model import Action, Decision, Subject, SubjectKind

log = structlog.get_logger("custodes.agent.gate")

TICK_S = 0.1  # poll timeout: bounds how long a stop waits for this thread

Decide = Callable[[Subject, str, Action, datetime], Decision]
Classify = Callable[[int, int | None], SubjectKind]


class ChangeWatcher:
    """Reads the notification group until `stopping` is set (the body of one thread).

    `decide` and `classify` see the gate's current agreement and grants.
    """

    def __init__(
        self,
        *,
        fd: int,
        marker: Marker,
        own: Collection[int],
        enricher: attr.Enricher,
        sink: EventSink,
        clock: Callable[[], int],
        decide: Decide,
        classify: Classify,
    ) -> None:
        self._fd = fd
        self._marker = marker
        self._own = own
        self._enricher = enricher
        self._sink = sink
        self._clock = clock
        self._decide = decide
        self._classify = classify
        self.recorded = 0  # a technician's changes recorded (not gated)
        self.unattributed = 0  # changes whose actor exited before it could be identified
        self.errors = 0

    def run(self, stopping: threading.Event) -> None:
        """Watch until `stopping` is set or the fd is gone (read returns nothing)."""
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        while not stopping.is_set():
            if not poller.poll(TICK_S * 1000) or stopping.is_set():
                continue
            try:
                buf = os.read(self._fd, fan.READ_SIZE)
            except BlockingIOError:
                continue
            except OSError as e:
                log.exception("gate_watch_read_failed", error=str(e))
                return
            if not buf:
                return  # fail_open put /dev/null here
            try:
                self.handle(fan.parse(buf))
            except Exception as e:  # keep watching: a lost change is counted, not fatal
                self.errors += 1
                log.exception("gate_watch_failed", error=str(e))

    def handle(self, events: list[fan.Event]) -> None:
        """Mark new directories, identify the actors, record a technician's changes."""
        # New directories first: until marked, opens inside them escape the gate.
        premarked = self._marker.mark_new_dirs(events)
        # Then attribute, before anything slower: the actor is not blocked and may be gone
        # within a millisecond (an `mv` from a shell).
        actors = {e.pid: self._actor(e.pid) for e in events}
        for change in self._marker.handle(events, premarked):
            who = actors[change.pid]
            if who is not None:
                self._record(change, who)

    def _actor(self, pid: int) -> Attribution | None:
        """The full attribution of a change's actor when it is a technician, else None."""
        if pid in self._own:
            return None
        uid = attr.uid_of(pid)
        if uid < 0:
            self.unattributed += 1  # gone before we looked: cannot tell who it was
            return None
        loginuid = attr.loginuid_of(pid)
        if self._classify(uid, loginuid) is not SubjectKind.TECHNICIAN:
            return None
        return self._enricher.attribute(pid, uid, loginuid)

    def _record(self, change: DirEntryChange, who: Attribution) -> None:
        if change.mask & fan.FAN_DELETE:
            action = Action.DELETE
        elif change.mask & (fan.FAN_MOVED_TO | fan.FAN_MOVED_FROM):
            action = Action.RENAME
        else:
            action = Action.CREATE
        now = self._clock()
        subject = Subject(who.account, who.login_account, who.exe or None)
        at = datetime.fromtimestamp(now / 1e9, tz=UTC)
        decision = self._decide(subject, change.path, action, at)
        what = "directory" if change.is_dir else "entry"
        decision = replace(
            decision,
            reason=f"{decision.reason} (recorded after the fact: fanotify cannot gate a "
            f"{action.value} of a {what})",
        )
        self.recorded += 1
        self._sink.record(AccessRecord(now, who, change.path, action, decision, enforcing=False))
