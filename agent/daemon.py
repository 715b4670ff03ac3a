"""The agent daemon: wiring of configuration, agreement, journal, gate, grants and signals.

Start: load agent.toml and the agreement (validated and compiled in a short-lived child
process, policies.isolated, so that pydantic and ruamel.yaml never stay resident here; the
C heap is trimmed once start is done), refuse to run when the agent's own code,
interpreter, venv, configuration or state lie inside an area root, open the journal, start
the gate (or monitor mode when not root, not Linux or fanotify is unavailable: stated at
start and in every heartbeat), journal AgentStarted, tell systemd READY=1.
Run: SIGHUP or a changed agreement file reloads it transactionally (a bad one is journaled
as refused and the last good one stays); the grants file is re-read when it changes and
grants expire on time; grants, revocations and agreements the server pushes
(agent/delivery.py) reach the gate at once, and an agreement from the server is enforced
from the state dir (`server-agreement.yaml`) from then on, also after a restart (an
enrolled daemon ships from a child process, agent/ship_link.py, and never loads grpc); a watchdog
thread fails the gate open when it stops making progress and ends the process non-zero so
systemd restarts it. SIGTERM/SIGINT: clean stop.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import os
import signal
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import structlog

import agent
from agent.config import AgentConfig, AgentError
from agent.events import (
    MODE_ENFORCING,
    MODE_MONITOR,
    AgentStartedRecord,
    AgentStoppedRecord,
    AgreementRecord,
    GateIncidentRecord,
    GrantRecord,
    Origin,
)
from agent.grants import GrantBook, GrantFile, GrantsFileError, read_grants_file
from agent.heartbeat import HeartbeatMeter
from agent.journal import Journal
from policies.compile import CompiledAgreement
from policies.errors import PolicyError
from policies.isolated import compile_isolated
from protos.errors import CustodesError
from protos.files import write_atomic

if TYPE_CHECKING:
    from agent.delivery import ServerGrants
    from agent.gate import Gate
    from agent.observe import Monitor
    from agent.ship_link import ShipperLink

log = structlog.get_logger("agent.daemon")

VERSION = "0.1.0"
EXIT_OK = 0
EXIT_WATCHDOG = 3
TICK = 0.2  # seconds between main-loop passes: bounds signal and reload latency
SWITCH_INTERVAL_S = 0.0005


class StartRefusedError(AgentError):
    """The daemon will not start with this configuration (bad input)."""


@dataclass(frozen=True, slots=True)
class FileStamp:
    """What tells that a watched file changed."""

    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> FileStamp | None:
        """The stamp of `path`, or None when it does not exist."""
        try:
            st = path.stat()
        except OSError:
            return None
        return cls(st.st_ino, st.st_size, st.st_mtime_ns)


def sd_notify(message: str) -> bool:
    """Send `message` to systemd over $NOTIFY_SOCKET; False when not run by systemd."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(address)
            s.sendall(message.encode("utf-8"))
    except OSError as exc:
        log.warning("sd_notify_failed", error=exc.strerror)
        return False
    return True


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def own_paths(cfg: AgentConfig, config_path: Path) -> dict[str, Path]:
    """The paths the agent itself uses, which must stay outside every marked area."""
    code = Path(agent.__file__).resolve().parent.parent
    return {
        "code": code,
        "interpreter": Path(sys.executable).resolve(),
        "venv": Path(sys.prefix).resolve(),
        "configuration": config_path.resolve(),
        "state directory": cfg.state_dir.resolve(),
        "journal": cfg.journal_path.resolve(),
        "grants file": cfg.grants_path.resolve(),
    }


def check_outside_areas(compiled: CompiledAgreement, paths: dict[str, Path]) -> None:
    """Raise StartRefusedError when one of `paths` lies inside an area root."""
    for area, root in compiled.area_roots():
        real_root = Path(os.path.realpath(root))
        for what, p in paths.items():
            if _inside(p, real_root):
                raise StartRefusedError(
                    f"the agent's {what} {p} lies inside area {area!r} ({real_root}); expected "
                    "the agent's code, interpreter, venv, configuration and state outside "
                    "every sensitive area",
                    hint="move the state directory (agent.toml state_dir) or the agent's "
                    "installation out of the area, or fix the agreement's paths",
                )


def _load(path: Path) -> CompiledAgreement:
    # Validated and compiled in a child process: pydantic and ruamel.yaml never load here.
    return compile_isolated(path)


def release_free_memory() -> bool:
    """Give the C heap's free pages back to the system (glibc's malloc_trim); False when the
    C library has none. What start allocated and freed (the agreement's answer from the
    loader, the marking walk, the journal's recovery) would otherwise stay resident: ~0.8 MB
    measured with 100k marked directories."""
    import ctypes  # noqa: PLC0415 - once, at the end of start

    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return bool(trim(0))


def _file_sha256(path: Path) -> str:
    try:
        with path.open("rb") as fh:
            return hashlib.sha256(fh.read(4 * 1024 * 1024)).hexdigest()
    except OSError:
        return ""


class Daemon:
    """One run of the agent. `run` returns the process exit code."""

    def __init__(self, cfg: AgentConfig, config_path: Path) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.boot_id = uuid.uuid4().hex
        self._stop = threading.Event()
        self._stop_reason = "stopped"
        self._reload = threading.Event()
        self._exit_code = EXIT_OK
        self.mode = MODE_MONITOR
        self.mode_note = ""
        self.gate: Gate | Monitor | None = None
        self._grant_file: GrantFile | None = None
        self._compiled: CompiledAgreement | None = None
        self._journal: Journal | None = None
        self._book: GrantBook | None = None
        self._grants_stamp: FileStamp | None = None
        self._agreement_stamp: FileStamp | None = None
        self._last_grants: tuple[str, ...] = ()
        self._ship_link: ShipperLink | None = None  # the shipper child; heartbeats go to it
        self._agreement_path = cfg.agreement  # the server's copy once it sent one
        self._server_grants: ServerGrants | None = None
        self._grants_lock = threading.Lock()  # the shipper's relay and the main loop refresh
        self._reload_lock = threading.RLock()

    @property
    def server_agreement_path(self) -> Path:
        """Where the last agreement the server pushed and this agent accepted is kept."""
        return self.cfg.state_dir / "server-agreement.yaml"

    # -- start ---------------------------------------------------------------------------

    def _start_gate(self, compiled: CompiledAgreement) -> tuple[str, str, int]:
        """Start the gate; (mode, note, marks). Falls back to monitor mode when allowed."""
        want = self.cfg.mode
        if want == "monitor":
            return MODE_MONITOR, 'monitor mode: configured (mode = "monitor")', 0
        problem = ""
        if not sys.platform.startswith("linux"):
            problem = f"monitor mode: {sys.platform} has no fanotify, cannot block"
        elif os.geteuid() != 0:
            problem = "monitor mode: not root, cannot block"
        if not problem:
            # The ctypes binding loads libc's fanotify calls: only on Linux, only as root.
            from agent.fanotify import FanotifyError  # noqa: PLC0415
            from agent.gate import Gate  # noqa: PLC0415
            from agent.marks import GateError  # noqa: PLC0415

            roots = [d for _, d in compiled.area_roots()]
            gate = Gate(
                policy=compiled, sink=self._journal_or_fail(), roots=roots, marks=self.cfg.marks
            )
            try:
                gate.start()
            except FanotifyError as exc:
                problem = f"monitor mode: fanotify unavailable ({exc})"
            except GateError as exc:
                raise StartRefusedError(str(exc), hint=exc.hint) from exc
            else:
                self.gate = gate
                return MODE_ENFORCING, "", gate.marks
        if want == "enforce":
            raise StartRefusedError(
                f"cannot enforce: {problem.removeprefix('monitor mode: ')}",
                hint='run as root on Linux, or set mode = "monitor" in agent.toml',
            )
        return MODE_MONITOR, problem, 0

    def _start_monitor(self, compiled: CompiledAgreement) -> None:
        """Watch the areas (inotify) and record what is seen: blocks nothing."""
        from agent.marks import GateError  # noqa: PLC0415
        from agent.observe import Monitor  # noqa: PLC0415 - watchdog only in monitor mode

        monitor = Monitor(
            policy=compiled,
            sink=self._journal_or_fail(),
            roots=[d for _, d in compiled.area_roots()],
        )
        try:
            monitor.start()
        except GateError as exc:
            raise StartRefusedError(str(exc), hint=exc.hint) from exc
        self.gate = monitor

    def _journal_or_fail(self) -> Journal:
        if self._journal is None:
            raise AgentError("the journal is not open")
        return self._journal

    def start(self) -> None:
        """Everything up to READY=1. Raises StartRefusedError, JournalError, PolicyError."""
        cfg = self.cfg
        paths = own_paths(cfg, self.config_path)
        compiled: CompiledAgreement | None = None
        if self.server_agreement_path.is_file():
            try:
                compiled = _load(self.server_agreement_path)
                self._agreement_path = self.server_agreement_path
            except PolicyError as exc:
                log.warning("server_agreement_unusable", error=str(exc)[:500])
        if compiled is None:
            try:
                compiled = _load(self._agreement_path)
            except PolicyError as exc:
                raise StartRefusedError(
                    f"the agreement {self._agreement_path} does not load:\n{exc}", hint=exc.hint
                ) from exc
        if compiled.client != cfg.client:
            raise StartRefusedError(
                f"the agreement is for client {compiled.client!r}; agent.toml says {cfg.client!r}",
                hint="point agent.toml at this client's agreement",
            )
        check_outside_areas(compiled, paths)
        self._compiled = compiled
        self._agreement_stamp = FileStamp.of(self._agreement_path)
        cfg.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        journal = Journal.open(
            cfg.journal_path,
            Origin(cfg.agent_id, cfg.client, self.boot_id),
            cfg.key_dir,
            cfg.limits,
        )
        self._journal = journal
        self.mode, self.mode_note, marks = self._start_gate(compiled)
        if self.mode == MODE_MONITOR:
            self._start_monitor(compiled)
        else:
            # The answer thread must get the GIL back quickly from the journal's and the
            # shipper's long pure-Python stretches (signing a group): 5 ms by default.
            sys.setswitchinterval(SWITCH_INTERVAL_S)
        note = "; ".join(n for n in (journal.recovery.note, self.mode_note) if n)
        journal.note(
            AgentStartedRecord(
                previous_run_clean=journal.recovery.previous_run_clean,
                version=VERSION,
                mode=self.mode,
                marks=marks,
                agreement_version=compiled.version,
                note=note,
            )
        )
        journal.note(AgreementRecord(compiled.version, compiled.sha256, accepted=True))
        self._book = GrantBook(compiled.area_ids, compiled.technician_ids)
        self._refresh_grants(force=True)
        journal.flush()
        self._start_shipping(journal)
        self._refresh_grants(force=True)  # with the server's grants kept from the last run
        # What start made lives as long as the process: out of the collector's way, so a
        # collection on the answer thread walks only what the events themselves allocate.
        gc.collect()
        gc.freeze()
        release_free_memory()
        log.info(
            "agent_started",
            agent_id=cfg.agent_id,
            client=cfg.client,
            mode=self.mode,
            mode_note=self.mode_note,
            marks=marks,
            agreement=compiled.version,
            previous_run_clean=journal.recovery.previous_run_clean,
            recovery=journal.recovery.note,
            next_seq=journal.next_seq,
            boot_id=self.boot_id,
        )

    # -- run -----------------------------------------------------------------------------

    def _signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self._reload.set()
        else:
            self._stop_reason = f"signal {signal.Signals(signum).name}"
            self._stop.set()

    def run(self) -> int:
        """Start, serve until a signal or the watchdog, stop; return the exit code."""
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._signal)
        try:
            self.start()
        except BaseException:
            self._close("start failed")
            raise
        sd_notify(f"READY=1\nSTATUS=gating in {self.mode} mode\nMAINPID={os.getpid()}")
        watchdog = threading.Thread(target=self._watchdog, name="agent-watchdog", daemon=True)
        watchdog.start()
        meter = HeartbeatMeter()
        next_beat = time.monotonic()
        next_poll = time.monotonic()
        limits = self.cfg.limits
        while not self._stop.wait(TICK):
            now = time.monotonic()
            if self._reload.is_set():
                self._reload.clear()
                self.reload(reason="SIGHUP")
            if now >= next_poll:
                next_poll = now + limits.reload_poll_seconds
                stamp = FileStamp.of(self._agreement_path)
                if stamp is not None and stamp != self._agreement_stamp:
                    self.reload(reason="file changed")
                self._refresh_grants()
            if now >= next_beat:
                next_beat = now + limits.heartbeat_seconds
                self._heartbeat(meter)
            if self._gate_progressing():
                sd_notify("WATCHDOG=1")
        self._close(self._stop_reason)
        return self._exit_code

    def _start_shipping(self, journal: Journal) -> None:
        from agent.enroll import Credentials  # noqa: PLC0415 - only to know if enrolled

        creds = Credentials(self.cfg.state_dir)
        if not creds.exists():
            log.info("shipping_disabled", reason="not enrolled", state_dir=str(self.cfg.state_dir))
            return
        # The shipper runs in a child process (agent/ship_link.py): grpc never loads here,
        # and what the server sends is parsed there; only its pushed grants, revocations
        # and agreements come back, as bytes, to be verified and applied here.
        from agent.delivery import Hooks, ServerGrants  # noqa: PLC0415
        from agent.ship_link import ShipperLink  # noqa: PLC0415

        self._server_grants = ServerGrants(
            creds.read(creds.server_pub),
            self.cfg.client,
            self.cfg.state_dir / "server-grants.json",
            Hooks(
                journal=self._journal_grant,
                grants_changed=self._refresh_grants,
                agreement=self.apply_server_agreement,
                agreement_sha256=lambda: self._compiled.sha256 if self._compiled else "",
            ),
        )
        link = ShipperLink(journal, self.config_path, self._server_message)
        self._ship_link = link
        link.start()
        server = self.cfg.server
        if not server:
            with contextlib.suppress(CustodesError, OSError):
                server = creds.server_info()["server"]
        log.info("shipping_started", server=server)

    def _server_message(self, raw: bytes) -> None:
        """A message the shipper child relayed from the server: verify and apply it."""
        from protos.wire import pb  # noqa: PLC0415 - loaded by agent.delivery already

        server = self._server_grants
        if server is None:
            return
        try:
            message = pb.ServerMessage.FromString(raw)
        except Exception:  # protobuf's DecodeError and others
            log.warning("server_message_unreadable", size=len(raw))
            return
        server.handle(message)

    def _gate_progressing(self) -> bool:
        gate = self.gate
        if gate is None:
            return True
        return time.monotonic() - gate.last_progress < self.cfg.limits.watchdog_seconds

    def _watchdog(self) -> None:
        bound = self.cfg.limits.watchdog_seconds
        while not self._stop.wait(min(0.5, bound / 4)):
            if self.check_gate(time.monotonic()):
                # If the main thread is stuck too, do not wait for it: systemd restarts us.
                time.sleep(5.0)
                os._exit(EXIT_WATCHDOG)

    def check_gate(self, now: float) -> bool:
        """Fail the gate open when it made no progress within the bound; True if it did.

        The openers are released at once (fail_open), the incident is journaled, and the
        daemon is told to stop with EXIT_WATCHDOG so that systemd restarts it.
        """
        gate, bound = self.gate, self.cfg.limits.watchdog_seconds
        if gate is None:
            return False
        stalled = now - gate.last_progress
        if stalled <= bound:
            return False
        gate.fail_open()
        log.error("gate_stuck_failed_open", stalled_seconds=round(stalled, 1), bound=bound)
        journal = self._journal
        if journal is not None:
            journal.note(
                GateIncidentRecord(
                    "watchdog_fail_open",
                    f"the gate made no progress for {stalled:.1f}s (bound {bound}s); "
                    "failed open and exiting for a restart",
                )
            )
            journal.flush(timeout=2.0)
        self._exit_code = EXIT_WATCHDOG
        self._stop_reason = "watchdog"
        self._stop.set()
        return True

    def _heartbeat(self, meter: HeartbeatMeter) -> None:
        journal = self._journal
        if journal is None:
            return
        stats = journal.stats()
        marks = self.gate.marks if self.gate is not None else 0
        compiled = self._compiled
        link = self._ship_link
        sample = meter.sample(
            mode=self.mode,
            mode_note=self.mode_note,
            next_seq=stats.next_seq,
            queue_depth=stats.queued,
            marks=marks,
            agreement_version=compiled.version if compiled else "",
            dropped=stats.dropped,
            shipper_pid=link.pid if link is not None else None,
        )
        if link is not None:
            link.post_heartbeat(sample.to_wire().SerializeToString())
        log.info(
            "heartbeat",
            mode=sample.mode,
            mode_note=sample.mode_note,
            rss_bytes=sample.rss_bytes,
            cpu_percent=sample.cpu_percent,
            shipper_rss_bytes=sample.shipper_rss_bytes,
            shipper_cpu_percent=sample.shipper_cpu_percent,
            events_per_second=sample.events_per_second,
            queue_depth=sample.queue_depth,
            marks=sample.marks,
            agreement=sample.agreement_version,
            next_seq=sample.journal_next_seq,
            dropped=sample.dropped,
            lost=stats.lost,
            epoch=stats.epoch,
        )

    # -- reload --------------------------------------------------------------------------

    def reload(self, *, reason: str, path: Path | None = None, version: str = "") -> bool:
        """Load the agreement again; swap it in only if it is good. True when swapped.

        `path` is a candidate (the server's agreement before it is accepted); `version` names
        it in the refusal record.
        """
        with self._reload_lock:
            return self._reload_now(reason, path, version)

    def _reload_now(self, reason: str, candidate: Path | None, version: str) -> bool:
        journal = self._journal_or_fail()
        path = candidate or self._agreement_path
        if candidate is None:
            self._agreement_stamp = FileStamp.of(path)
        try:
            compiled = self._candidate(path)
            if self.gate is not None:
                self.gate.swap_policy(compiled)
        except (CustodesError, OSError) as exc:
            error = str(exc)
            log.warning("agreement_refused", path=str(path), reason=reason, problems=error)
            journal.note(AgreementRecord(version, _file_sha256(path), accepted=False, error=error))
            return False
        except Exception as exc:  # a bug must not take the last good agreement away
            log.exception("agreement_refused", path=str(path), reason=reason)
            journal.note(
                AgreementRecord(version, _file_sha256(path), accepted=False, error=str(exc))
            )
            return False
        self._compiled = compiled
        if self._book is not None:
            self._book.retarget(compiled.area_ids, compiled.technician_ids)
        journal.note(AgreementRecord(compiled.version, compiled.sha256, accepted=True))
        log.info("agreement_reloaded", version=compiled.version, reason=reason)
        self._refresh_grants(force=True)
        return True

    def _candidate(self, path: Path) -> CompiledAgreement:
        compiled = _load(path)
        if compiled.client != self.cfg.client:
            raise StartRefusedError(
                f"the agreement is for client {compiled.client!r}; expected {self.cfg.client!r}"
            )
        check_outside_areas(compiled, own_paths(self.cfg, self.config_path))
        return compiled

    def apply_server_agreement(self, yaml: bytes, version: str) -> bool:
        """Enforce an agreement the server pushed (signature already verified) if it is good.

        Written atomically as a candidate in the state dir and reloaded through the same
        transactional path as a local change; only when accepted does it become
        `server-agreement.yaml`, enforced from then on. True when accepted.
        """
        with self._reload_lock:
            candidate = self.cfg.state_dir / "server-agreement.candidate.yaml"
            write_atomic(candidate, yaml, mode=0o600)
            if not self.reload(reason=f"server pushed {version}", path=candidate, version=version):
                candidate.unlink(missing_ok=True)
                return False
            candidate.replace(self.server_agreement_path)
            self._agreement_path = self.server_agreement_path
            self._agreement_stamp = FileStamp.of(self._agreement_path)
            return True

    def _journal_grant(self, rec: GrantRecord) -> None:
        journal = self._journal
        if journal is not None:
            journal.note(rec)
        log.info(
            "grant_" + rec.kind,
            grant=rec.grant_id,
            technician=rec.technician,
            area=rec.area,
            reason=rec.reason,
        )

    def _refresh_grants(self, *, force: bool = False) -> None:
        with self._grants_lock:
            self._refresh_grants_locked(force=force)

    def _refresh_grants_locked(self, *, force: bool) -> None:
        book, journal = self._book, self._journal
        if book is None or journal is None:
            return
        path = self.cfg.grants_path
        stamp = FileStamp.of(path)
        changed = force or stamp != self._grants_stamp
        self._grants_stamp = stamp
        try:
            current = read_grants_file(path) if changed else None
        except GrantsFileError as exc:
            log.warning("grants_file_refused", path=str(path), error=str(exc))
            current = None
        if current is not None:
            self._grant_file = current
        grant_file = self._grant_file or GrantFile((), ())
        now = datetime.now(UTC)
        server = self._server_grants
        revoked: dict[str, str] = {}
        if server is not None:
            grant_file = GrantFile(grant_file.grants + server.grants(), grant_file.refused)
            revoked = server.revocations()
        active, records = book.update(grant_file, now, revoked)
        if server is not None:
            server.prune(now)
        for rec in records:
            self._journal_grant(rec)
        ids = tuple(g.id for g in active)
        if ids != self._last_grants or records:
            self._last_grants = ids
            if self.gate is not None:
                self.gate.set_grants(active)

    # -- stop ----------------------------------------------------------------------------

    def _close(self, reason: str) -> None:
        gate = self.gate
        if gate is not None:
            with contextlib.suppress(Exception):
                gate.stop()
            self.gate = None
        link = self._ship_link
        if link is not None:
            link.close()
            self._ship_link = None
        journal = self._journal
        if journal is not None:
            if reason != "start failed":
                journal.note(AgentStoppedRecord(reason))
            journal.close()
            self._journal = None
        sd_notify("STOPPING=1")
        log.info("agent_stopped", reason=reason)
