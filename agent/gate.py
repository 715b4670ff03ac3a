"""The kernel gate: fanotify permission events → decisions → answers, kernel first.

One answer thread reads the permission group. Non-technicians take a fast path (the uid from
stat(/proc/PID), the loginuid; neither a technician → allow), with one exception journaled
as rule "unknown_admin": root with a loginuid that is neither a technician nor a principal.
A technician's open is attributed fully, classified (exec, list, create, write, read from
/proc/TID/syscall) and decided by the policy. An allow is answered, then recorded; a deny is
recorded with `on_durable` and answered EPERM from the journal's callback, once it is on
disk, so other openers keep being answered meanwhile.

A second thread (agent.watch) reads the notification group: it marks new directories and
records a technician's creates, deletes and renames, which fanotify cannot gate.

The answer path is in C (agent/_answer.c): per event, the opener thread's kept /proc handles
give loginuid (pread) and uid (fstat) with no open; an agent thread, or anyone but a
technician or an unnamed interactive root, is allowed in a batch written with one writev,
without the GIL. Only technicians' and unnamed roots' events come back to Python, with the
path, the open flags and the kind of access read there. An allow the policy says holds for
a while (`stable_until`: no business-hours or grant boundary before then) is remembered
there from the second time it is given, until then or the next policy or grants, and the
same open by the same person is then answered in C and only recorded here.
"""

from __future__ import annotations

import os
import resource
import stat
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

import structlog

from agent import _answer as ans
from agent import attribute as attr
from agent import fanotify as fan
from agent._answer import BUCKETS, Answerer
from agent.identities import UNSET_LOGINUID, Identities, resolve
from agent.marks import GateError, MarkChoice, Marker, PathMap, RootPlan, plan
from agent.records import AccessRecord, Attribution, EventSink
from agent.watch import ChangeWatcher
from policies.decide import aware
from policies.model import Action, Decision, Grant, Subject, SubjectKind, Verdict

log = structlog.get_logger("custodes.agent.gate")

INIT_FLAGS = (
    fan.FAN_CLASS_CONTENT
    | fan.FAN_UNLIMITED_QUEUE
    | fan.FAN_UNLIMITED_MARKS
    | fan.FAN_CLOEXEC
    | fan.FAN_NONBLOCK
)
NOTIF_FLAGS = (
    fan.FAN_CLASS_NOTIF
    | fan.FAN_REPORT_DFID_NAME
    | fan.FAN_UNLIMITED_QUEUE
    | fan.FAN_UNLIMITED_MARKS
    | fan.FAN_CLOEXEC
    | fan.FAN_NONBLOCK
)
# O_NONBLOCK: the kernel opens each event's file for us; a FIFO opened for reading without
# it would wait for a writer, and the writer may be the opener we have not answered yet
# (6.18 raises no permission events for FIFOs; older kernels did). O_CLOEXEC: no event fd
# leaks into a child the daemon starts.
EVENT_FD_FLAGS = os.O_RDONLY | os.O_LARGEFILE | os.O_NONBLOCK | os.O_CLOEXEC
TICK_S = 0.1  # poll timeout: bounds how long stop() and fail_open() wait for a thread
TICK_MS = int(TICK_S * 1000)
JOIN_S = 2.0
_EXEC_MASK = fan.FAN_OPEN_EXEC_PERM
_PACK = fan.RESPONSE.pack
_ALLOW = fan.FAN_ALLOW
_EPOCH = datetime.fromtimestamp(0, tz=UTC)
_NEEDS_STAT = os.O_CREAT | os.O_DIRECTORY
_TECHNICIAN = ans.KIND_TECHNICIAN
_UNREAD = ans.FLAGS_UNREAD
_UNKNOWN = ans.FLAGS_UNKNOWN
# agent._answer's access kinds (ACCESS_STAT, 0: only a stat of the file can tell)
_ACTIONS: dict[int, Action] = {
    ans.ACCESS_READ: Action.READ,
    ans.ACCESS_WRITE: Action.WRITE,
    ans.ACCESS_EXEC: Action.EXEC,
    ans.ACCESS_LIST: Action.LIST,
}
_FOREVER_NS = (1 << 63) - 1
_MICROSECOND = timedelta(microseconds=1)
MAX_SUBJECTS = 4096
MAX_SEEN = 4096


class GatePolicy(Protocol):
    """What the gate needs of a compiled agreement (policies.compile.CompiledAgreement).

    `technician_accounts` (OS account → technician) and `principal_accounts` (OS accounts,
    or account → principal) are resolved to uids once per `swap_policy`, so the hot path is
    int dict lookups; `area_roots()` names the directories to mark. A policy that also has
    `stable_until` (policies.compile.CompiledAgreement does) lets the gate remember its
    allows: see `Gate._remember`. One that also has `decide_at_ns` (the same decision at
    nanoseconds since the epoch, its datetime built only where the time matters) is asked
    that way before an answer.
    """

    @property
    def version(self) -> str: ...

    @property
    def technician_accounts(self) -> Mapping[str, str]: ...

    @property
    def principal_accounts(self) -> Collection[str]: ...

    def area_roots(self) -> Sequence[tuple[str, str]]: ...

    def decide(
        self,
        subject: Subject,
        path: str,
        action: Action,
        at: datetime,
        grants: Sequence[Grant] = (),
    ) -> Decision: ...


@dataclass(frozen=True, slots=True)
class GateStats:
    """Counters since start; answer latencies (event read → answer written) in µs, exact
    to the µs below 1 ms, upper bounds of powers of two above."""

    events: int
    allowed: int
    denied: int
    technician_events: int
    remembered: int  # technician events answered in C from a remembered allow
    unknown_admin: int
    exempt: int
    errors: int
    journal_failures: int  # denies answered EPERM although the journal could not keep them
    recorded_changes: int  # a technician's creates/deletes/renames recorded (not gated)
    unattributed_changes: int  # changes whose actor exited before it could be identified
    marks: int
    new_dirs: int
    found_in_new_dirs: int
    answer_p50_us: float
    answer_p99_us: float


class _DecideAtNs(Protocol):
    def __call__(
        self,
        subject: Subject,
        path: str,
        action: Action,
        now_ns: int,
        grants: Sequence[Grant] = (),
    ) -> Decision: ...


class _StableUntil(Protocol):
    def __call__(
        self,
        subject: Subject,
        path: str,
        action: Action,
        at: datetime,
        grants: Sequence[Grant] = (),
    ) -> datetime | None: ...


@dataclass(frozen=True, slots=True)
class _PolicyState:
    policy: GatePolicy
    ids: Identities
    stable_until: _StableUntil | None = None
    decide_at_ns: _DecideAtNs | None = None


def _state(policy: GatePolicy) -> _PolicyState:
    until: _StableUntil | None = getattr(policy, "stable_until", None)
    at_ns: _DecideAtNs | None = getattr(policy, "decide_at_ns", None)
    return _PolicyState(policy, _identities(policy), until, at_ns)


FD_LIMIT = 65536  # soft RLIMIT_NOFILE the gate asks for: event fds and /proc handles


def raise_fd_limit(want: int = FD_LIMIT) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards `want` (never above the hard limit);
    returns the soft limit now. systemd starts services with a soft limit of 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


_EXACT_US = 1024  # latencies below this are kept to the µs; above, in powers of two
assert BUCKETS == _EXACT_US + 64  # the C answerer's histogram has the same buckets


def _bucket(ns: int) -> int:
    us = ns // 1000
    return us if us < _EXACT_US else _EXACT_US + us.bit_length()


def _percentile(hist: Sequence[int], q: float) -> float:
    """The upper bound, in µs, of the bucket holding the q-th quantile."""
    total = sum(hist)
    if not total:
        return 0.0
    seen = 0
    for k, n in enumerate(hist):
        seen += n
        if seen >= q * total:
            return float(k + 1) if k < _EXACT_US else float(1 << (k - _EXACT_US))
    return float(1 << (len(hist) - 1 - _EXACT_US))


class Gate:
    """Answers fanotify permission events for the marked area roots.

    Raises GateError (or agent.fanotify.FanotifyError) from `start` and `swap_policy`.
    """

    def __init__(
        self,
        *,
        policy: GatePolicy,
        sink: EventSink,
        roots: Sequence[str],
        exempt_pids: Collection[int] = (),
        clock: Callable[[], int] = time.time_ns,
        marks: MarkChoice = "auto",
    ) -> None:
        self._marks: MarkChoice = marks
        self._state = _state(policy)
        self._sink = sink
        self._roots = list(roots)
        self._clock = clock
        self._grants: tuple[Grant, ...] = ()
        # Allows the C side may answer by itself (Gate._remember): only with the real clock,
        # which is the one it reads; a new generation with every policy and grants.
        self._recall = clock is time.time_ns
        self._seen: dict[tuple[int, int | None, int, str], None] = {}  # allowed once
        self._generation = 0
        self._generation_lock = threading.Lock()
        self._subjects: dict[tuple[int, int | None], Subject] = {}
        self._own: set[int] = {os.getpid(), *exempt_pids}
        self._fast: Answerer | None = None
        self._names = attr.AccountNames()
        self._enricher = attr.Enricher(self._names)
        self._fd = -1
        self._notif_fd = -1
        self._closed = True
        self._failed = False
        self._stopping = threading.Event()
        self._resp_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._marker: Marker | None = None
        self._watcher: ChangeWatcher | None = None
        self._paths = PathMap([])
        self._last_progress = time.monotonic()
        self.report_tid = True
        # Counters of the slow path (the fast path's are the answerer's): each is written by
        # one thread only (the answer thread, or under _resp_lock for the journal's
        # callbacks), so no lock on the hot path.
        self._n = [0] * 4  # allowed technician unknown_admin errors
        self._denied = 0
        self._journal_failures = 0
        self._hist = [0] * BUCKETS

    # lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Create both groups, start the threads, place the marks (returns once placed)."""
        plans = plan(self._roots, marks=self._marks)
        raise_fd_limit()  # every queued event takes an fd, every opener's thread up to three
        try:
            self._fd = fan.init(INIT_FLAGS | fan.FAN_REPORT_TID, EVENT_FD_FLAGS)
        except fan.FanotifyError:
            # Older kernels refuse FAN_REPORT_TID for permission groups; the opener's main
            # thread then stands in for it when reading /proc/PID/syscall.
            self._fd = fan.init(INIT_FLAGS, EVENT_FD_FLAGS)
            self.report_tid = False
        self._notif_fd = fan.init(NOTIF_FLAGS)
        self._closed = False
        self._fast = Answerer(self._fd)
        self._set_identities(self._state.ids)
        self._exempt(threading.get_native_id())
        self._marker = Marker(self._fd, self._notif_fd)
        self._watcher = ChangeWatcher(
            fd=self._notif_fd,
            marker=self._marker,
            own=self._own,
            enricher=self._enricher,
            sink=self._sink,
            clock=self._clock,
            decide=self._decide_change,
            classify=self._classify,
        )
        self._threads = [
            threading.Thread(target=self._answer_loop, name="custodes-gate", daemon=True),
            threading.Thread(target=self._watch, name="custodes-gate-watch", daemon=True),
        ]
        for t in self._threads:
            t.start()
        try:
            self._marker.place(plans)
        except Exception:
            self.stop()
            raise
        self._paths = PathMap(self._marker.plans)
        log.info(
            "gate_started",
            roots=[p.root for p in plans],
            modes=[p.mode for p in plans],
            marks=self.marks,
            report_tid=self.report_tid,
            policy=self._state.policy.version,
        )

    def swap_policy(self, policy: GatePolicy, roots: Sequence[str] | None = None) -> None:
        """Swap the policy atomically; re-mark when its roots changed (new marks first).

        `roots` defaults to the directories of `policy.area_roots()`. Raises MarkRefused
        (the old policy and marks stay) when a new root may not be marked.
        """
        wanted = list(roots) if roots is not None else [d for _, d in policy.area_roots()]
        self._exempt(threading.get_native_id())  # it lists marked directories when re-marking
        state = _state(policy)
        marker = self._marker
        if marker is None:
            self._state, self._roots = state, wanted
            self._new_generation()
            return
        new_plans = plan(wanted, marks=self._marks)
        old = {p.root: p for p in marker.plans}
        new = {p.root: p for p in new_plans}
        self._state = state
        self._new_generation()
        self._set_identities(state.ids)
        if old.keys() != new.keys():
            marker.place([p for r, p in new.items() if r not in old])
            marker.remove([p for r, p in old.items() if r not in new])
            self._paths = PathMap(marker.plans)
        self._roots = wanted
        log.info("gate_policy_swapped", policy=policy.version, marks=self.marks)

    def set_grants(self, grants: Sequence[Grant]) -> None:
        """Replace the active grants (one atomic assignment of a tuple)."""
        self._grants = tuple(grants)
        self._new_generation()

    def _new_generation(self) -> None:
        """Forget every remembered allow: called after a new policy or grants is in place
        (the answer thread reads the generation before them, so an allow decided under the
        old ones is remembered in the old generation, which no longer holds)."""
        with self._generation_lock:
            self._generation += 1
            if self._fast is not None:
                self._fast.forget(self._generation)

    def stop(self) -> None:
        """Stop both threads and close the groups: the kernel allows pending opens."""
        self._stopping.set()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(JOIN_S)
        with self._resp_lock:
            self._close_groups()
        log.info("gate_stopped", stats=str(self.stats))

    def fail_open(self) -> None:
        """Drop the groups NOW, from any thread, even if the answer thread is stuck.

        The fds are replaced by /dev/null (dup2 is atomic), so the kernel releases the
        groups and allows every pending and later open, while a late response from a stuck
        thread lands harmlessly in /dev/null.
        """
        self._failed = True
        self._stopping.set()
        # A stuck callback may hold the lock: wait a little, then go ahead regardless.
        locked = self._resp_lock.acquire(timeout=0.2)
        null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        try:
            for fd in (self._fd, self._notif_fd):
                if fd >= 0 and not self._closed:
                    os.dup2(null, fd)
        finally:
            os.close(null)
            if locked:
                self._resp_lock.release()
        log.warning("gate_failed_open", stats=str(self.stats))

    def _close_groups(self) -> None:
        if self._closed:
            return
        self._closed = True
        # A thread that did not stop (stuck in a policy call) may still write a response:
        # keep its fd numbers pointing at /dev/null rather than free them for reuse.
        stuck = any(t.is_alive() and t is not threading.current_thread() for t in self._threads)
        null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC) if stuck else -1
        for fd in (self._fd, self._notif_fd):
            if fd >= 0:
                if stuck:
                    os.dup2(null, fd)
                else:
                    os.close(fd)
        if stuck:
            os.close(null)
            log.error("gate_thread_stuck_at_stop", threads=[t.name for t in self._threads])
        elif self._fast is not None:
            self._fast.close()  # the answer thread, its only user, has ended
        if self._marker is not None:
            self._marker.close()

    # observability -----------------------------------------------------------------------

    @property
    def last_progress(self) -> float:
        """time.monotonic() of the last answered event or idle tick."""
        return self._last_progress

    @property
    def marks(self) -> int:
        """Marks held by the permission group."""
        return self._marker.marks if self._marker is not None else 0

    @property
    def stats(self) -> GateStats:
        """A snapshot of the counters."""
        n = self._n
        ms = self._marker.stats if self._marker is not None else None
        w = self._watcher
        events, allowed, exempt, errors, _ = self._fast.counters() if self._fast else (0,) * 5
        hist = self._hist
        if self._fast is not None:
            hist = [a + b for a, b in zip(hist, self._fast.histogram(), strict=True)]
        return GateStats(
            events=events,
            allowed=allowed + n[0],
            denied=self._denied,
            technician_events=n[1],
            remembered=self._fast.recalled() if self._fast else 0,
            unknown_admin=n[2],
            exempt=exempt,
            errors=errors + n[3] + (w.errors if w else 0),
            journal_failures=self._journal_failures,
            recorded_changes=w.recorded if w else 0,
            unattributed_changes=w.unattributed if w else 0,
            marks=self.marks,
            new_dirs=ms.new_dirs if ms else 0,
            found_in_new_dirs=ms.found_in_new_dirs if ms else 0,
            answer_p50_us=_percentile(hist, 0.5),
            answer_p99_us=_percentile(hist, 0.99),
        )

    def _exempt(self, tid: int) -> None:
        """Exempt one of the agent's threads (or a process) from the gate."""
        self._own.add(tid)
        if self._fast is not None:
            self._fast.set_own(list(self._own))

    def _set_identities(self, ids: Identities) -> None:
        if self._fast is not None:
            self._fast.set_identities(list(ids.technician_uids), list(ids.principal_uids))

    # the answer thread -------------------------------------------------------------------

    def _answer_loop(self) -> None:
        self._exempt(threading.get_native_id())
        stopping = self._stopping
        fast = self._fast
        assert fast is not None  # start() made it before this thread
        try:
            while not stopping.is_set():
                try:
                    got = fast.answer(TICK_MS)
                except OSError as e:
                    self._n[3] += 1
                    log.exception("gate_read_failed", error=str(e))
                    return
                self._last_progress = time.monotonic()
                if got is None:
                    return  # fail_open put /dev/null here
                t0, slow = got
                for mask, efd, pid, uid, login, path, flags, access, kind, known in slow:
                    if kind == _TECHNICIAN:
                        self._technician(t0, mask, efd, pid, uid, login, path, flags, access, known)
                    else:
                        self._unknown_admin(t0, mask, efd, pid, uid, login, path, flags, access)
        finally:
            if not stopping.is_set():
                # The answer thread is gone while the groups live: every opener in the area
                # would wait forever. Let them through now; the watchdog sees no progress.
                log.error("gate_answer_thread_ended")
                self.fail_open()

    def _flags(self, pid: int, flags: int) -> int | None:
        """The open flags agent._answer read, or read here when it could not."""
        if flags == _UNREAD:
            return attr.open_flags(pid, self._syscall_fd(pid))  # waits longer, or openat2
        return None if flags == _UNKNOWN else flags

    def _unknown_admin(  # noqa: PLR0917 - the hot path avoids keyword-argument overhead
        self,
        t0: int,
        mask: int,
        efd: int,
        pid: int,
        uid: int,
        loginuid: int | None,
        path: str | None,
        flags: int,
        access: int,
    ) -> None:
        """Allow, and journal, an interactive root whose login the agreement does not name.

        The open flags are read before the answer (the opener has left the syscall after);
        everything else after it.
        """
        self._n[2] += 1
        st: os.stat_result | None = None
        action = Action.READ
        try:
            st = os.fstat(efd)
            if access:
                action = _ACTIONS[access]
            else:
                known = None if stat.S_ISDIR(st.st_mode) else self._flags(pid, flags)
                action = attr.classify_open(bool(mask & _EXEC_MASK), st, known, time.time_ns())
        except OSError:
            self._n[3] += 1
        self._n[0] += 1
        os.write(self._fd, _PACK(efd, _ALLOW))
        self._hist[_bucket(time.perf_counter_ns() - t0)] += 1
        try:
            path = self._paths.canonical(path or fan.fd_path(efd), efd)
            who = self._enricher.attribute(pid, uid, loginuid or 0)
            decision = Decision(
                Verdict.ALLOW,
                "an interactive administrator not named in the agreement opened a file "
                "in a sensitive area",
                "unknown_admin",
                SubjectKind.OTHER,
            )
            self._sink.record(self._record(who, path, action, decision, -1, st))
        except Exception as e:  # the answer is given; a record lost is counted
            self._n[3] += 1
            log.exception("gate_record_failed", rule="unknown_admin", error=str(e))
        finally:
            os.close(efd)

    def _technician(  # noqa: PLR0917 - the hot path avoids keyword-argument overhead
        self,
        t0: int,
        mask: int,
        efd: int,
        pid: int,
        uid: int,
        loginuid: int | None,
        path: str | None,
        flags: int,
        access: int,
        decision: Decision | None,
    ) -> None:
        """Classify and decide a technician's open, answer it exactly once, then record it.

        Only what the decision needs is read before an allow is answered (path, open flags,
        a stat where they leave the action open, account names); the enrichment (exe,
        command line, parent, session) follows. `decision` is an allow agent._answer found
        remembered and answered already: it is only recorded.
        """
        self._n[1] += 1
        if decision is not None:
            self._n[0] += 1
            self._allowed(efd, pid, uid, loginuid, path or "", _ACTIONS[access], decision, None)
            return
        generation = self._generation  # before the policy and grants (_new_generation)
        raw = path
        try:
            path = self._paths.canonical(path or fan.fd_path(efd), efd)
            st: os.stat_result | None = None
            if access:
                action = _ACTIONS[access]
            else:  # agent._answer could not tell without a stat (O_CREAT, O_DIRECTORY, ...)
                known = self._flags(pid, flags)
                st = os.fstat(efd) if known is None or known & _NEEDS_STAT else None
                action = attr.classify_open(bool(mask & _EXEC_MASK), st, known, time.time_ns())
            now = self._clock()
            subject = self._subjects.get((uid, loginuid))
            if subject is None:
                subject = self._subject(uid, loginuid)
            state = self._state
            grants = self._grants
            try:
                # With decide_at_ns (a CompiledAgreement) the datetime is built only when
                # the decision depends on the time: seldom, and never for a plain allow.
                if state.decide_at_ns is not None:
                    decision = state.decide_at_ns(subject, path, action, now, grants)
                else:
                    decision = state.policy.decide(subject, path, action, aware(now), grants)
            except Exception as e:  # fail closed for a technician
                log.exception("gate_policy_failed", error=str(e), policy=state.policy.version)
                decision = Decision(
                    Verdict.DENY,
                    f"the policy failed to decide ({type(e).__name__}); denied",
                    "policy_error",
                    SubjectKind.TECHNICIAN,
                    technician=state.ids.classify(uid, loginuid)[1],
                )
        except Exception as e:  # attribution failed: deny rather than let a technician by
            self._n[3] += 1
            log.exception("gate_attribution_failed", pid=pid, error=str(e))
            self._respond_once(efd, allow=False, t0=t0)
            return
        if decision.allowed:
            self._n[0] += 1
            os.write(self._fd, _PACK(efd, _ALLOW))
            self._hist[_bucket(time.perf_counter_ns() - t0)] += 1
            if access and raw is not None and raw == path and self._recall:
                self._remember(
                    state, generation, subject, raw, uid, loginuid, access, now, grants, decision
                )
            self._allowed(efd, pid, uid, loginuid, path, action, decision, st, now)
            return
        cb = self._deny_callback(efd, t0)
        try:
            who = self._enricher.attribute(pid, uid, loginuid)
            self._sink.record(
                self._record(who, path, action, decision, efd, st, now), on_durable=cb
            )
        except Exception as e:
            log.exception("gate_record_failed", rule=decision.rule, error=str(e))
            cb(False)

    def _allowed(  # noqa: PLR0917 - the hot path avoids keyword-argument overhead
        self,
        efd: int,
        pid: int,
        uid: int,
        loginuid: int | None,
        path: str,
        action: Action,
        decision: Decision,
        st: os.stat_result | None,
        now: int | None = None,
    ) -> None:
        """Record a technician's open that was answered allowed, and close its fd."""
        try:
            if st is None:
                st = os.fstat(efd)
        except OSError:
            self._n[3] += 1
        finally:
            os.close(efd)
        try:
            who = self._enricher.attribute(pid, uid, loginuid)
            self._sink.record(self._record(who, path, action, decision, -1, st, now))
        except Exception as e:  # answered already; the lost record is counted
            self._n[3] += 1
            log.exception("gate_record_failed", rule=decision.rule, error=str(e))

    def _subject(self, uid: int, loginuid: int | None) -> Subject:
        names = self._names
        subject = Subject(names.name(uid), names.name(loginuid) if loginuid is not None else None)
        if len(self._subjects) >= MAX_SUBJECTS:
            self._subjects.clear()
        self._subjects[uid, loginuid] = subject
        return subject

    def _remember(  # noqa: PLR0917 - internal step of _technician
        self,
        state: _PolicyState,
        generation: int,
        subject: Subject,
        path: str,
        uid: int,
        loginuid: int | None,
        access: int,
        now: int,
        grants: tuple[Grant, ...],
        decision: Decision,
    ) -> None:
        """Let agent._answer answer this allow by itself while the policy says it holds.

        Only for a path the policy saw as read (under an area root, so the same string
        always names the same decision), with the real clock, after the answer, and from
        the second time the same open is allowed. The span starts at `now` (a clock stepped
        back is not in it) and ends where `stable_until` says the decision may change
        (hours, grants); the generation ends it at the next policy or grants.
        """
        until = state.stable_until
        fast = self._fast
        if until is None or fast is None or not self._paths.direct(path):
            return
        # A file opened once is seldom opened again (grep -r, a backup): remember what is
        # allowed the second time, not the first, so a walk over new files pays no more.
        seen = self._seen
        key = (uid, loginuid, access, path)
        if key not in seen:
            if len(seen) >= MAX_SEEN:
                seen.clear()
            seen[key] = None
            return
        at = aware(now)
        try:
            end = until(subject, path, _ACTIONS[access], at, grants)
        except Exception as e:  # an allow not remembered is only slower
            log.exception("gate_remember_failed", error=str(e))
            return
        from_ns = now - now % 1000  # `at`, to the µs
        until_ns = _FOREVER_NS if end is None else ((end - _EPOCH) // _MICROSECOND) * 1000
        if until_ns > from_ns:
            fast.remember(
                uid,
                UNSET_LOGINUID if loginuid is None else loginuid,
                access,
                path,
                generation,
                from_ns,
                until_ns,
                decision,
            )

    def _syscall_fd(self, tid: int) -> int:
        return self._fast.syscall_fd(tid) if self._fast is not None else -1

    def _deny_callback(self, efd: int, t0: int) -> Callable[[bool], None]:
        done = threading.Lock()

        def on_durable(ok: bool) -> None:
            if not done.acquire(blocking=False):
                return  # called twice: the answer was given already
            if not ok:
                with self._resp_lock:
                    self._journal_failures += 1
                log.error("gate_deny_not_journaled", fd=efd)
            self._respond_once(efd, allow=False, t0=t0)

        return on_durable

    def _respond_once(self, efd: int, *, allow: bool, t0: int) -> None:
        """Answer from any thread; a closed group already allowed the open."""
        with self._resp_lock:
            if not self._closed:
                try:
                    os.write(self._fd, _PACK(efd, fan.FAN_ALLOW if allow else fan.FAN_DENY))
                except OSError:
                    self._n[3] += 1
                os.close(efd)
            if allow:
                self._n[0] += 1
            else:
                self._denied += 1
            self._hist[_bucket(time.perf_counter_ns() - t0)] += 1

    def _record(  # noqa: PLR0917 - internal builder, called positionally
        self,
        who: Attribution,
        path: str,
        action: Action,
        decision: Decision,
        efd: int,
        st: os.stat_result | None = None,
        now: int | None = None,
        *,
        enforcing: bool = True,
    ) -> AccessRecord:
        if st is None and efd >= 0:
            st = os.fstat(efd)
        return AccessRecord(
            unix_nanos=now if now is not None else self._clock(),
            attribution=who,
            path=path,
            action=action,
            decision=decision,
            enforcing=enforcing,
            device=st.st_dev if st else 0,
            inode=st.st_ino if st else 0,
        )

    # the notification thread (agent.watch) ----------------------------------------------

    def _watch(self) -> None:
        self._exempt(threading.get_native_id())
        if self._watcher is not None:
            self._watcher.run(self._stopping)

    def _decide_change(self, subject: Subject, path: str, action: Action, at: datetime) -> Decision:
        return self._state.policy.decide(subject, path, action, at, self._grants)

    def _classify(self, uid: int, loginuid: int | None) -> SubjectKind:
        return self._state.ids.classify(uid, loginuid)[0]


def _identities(policy: GatePolicy) -> Identities:
    return resolve(policy.technician_accounts, policy.principal_accounts)


__all__ = ["Gate", "GateError", "GatePolicy", "GateStats", "RootPlan"]
