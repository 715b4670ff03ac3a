"""The shipper child process, seen from the daemon: start it, serve it, restart it, end it.

An enrolled daemon ships from a child (`python -m agent.shipper_proc`), so the root process
that answers the kernel never loads grpc, never parses what the server sends (TLS, HTTP/2,
protobuf from the network) and never shares its GIL with grpc's event loop. The daemon
keeps the journal; the child gets two socketpairs (agent/ship_ipc.py says what travels):

* `ship-journal` (one thread per child) answers the child's journal requests, blocking in
  recv;
* `ship-supervisor` starts the child, hands each server message it relays to
  `on_server_message` (agent/delivery.py verifies and applies it, here in the daemon), and
  when the child exits logs `shipper_exited` and starts another after a bounded, jittered
  backoff (reset once a child has run for a while, so a crash loop never spins);
* `ship-signals` tells the child when the journal signed more events, so its sender waits
  without polling.

Nothing the daemon sends can block its main loop or the journal's writer: heartbeats are
sent without waiting (a stuck child loses one, the next replaces it), and the signed
notices come from their own thread. The child ends itself when the daemon dies
(PR_SET_PDEATHSIG, and EOF on its sockets); `close` ends it by PID: SIGTERM, a bounded
wait, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from agent import ship_ipc
from agent.backoff import backoff_delays
from agent.journal import Journal
from protos import logs

log = structlog.get_logger("agent.ship_link")

HEALTHY_S = 60.0  # a child that ran this long resets the backoff
STOP_WAIT_S = 5.0  # SIGTERM, then this long, then SIGKILL
SIGNAL_WAIT_S = 60.0  # the signed-notice thread re-checks that it should go on this often


def log_options() -> list[str]:
    """`--log-level` and `--log-format` that configure the child as this process is (none,
    the child's defaults, when this process never configured logging)."""
    settings = logs.settings()
    if settings is None:
        return []
    return ["--log-level", settings.level, "--log-format", settings.fmt]


@dataclass
class _Child:
    proc: subprocess.Popen[bytes]
    journal: socket.socket
    messages: socket.socket
    server: threading.Thread  # answers the child's journal requests on `journal`
    started: float = field(default_factory=time.monotonic)

    def reap(self, timeout: float) -> int:
        """Wait for the process (SIGKILL by PID after `timeout`); its exit code."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("shipper_killed", pid=self.proc.pid, after_seconds=timeout)
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            return self.proc.wait(timeout)

    def close_sockets(self) -> None:
        """Shut both sockets, wait (bounded) for the thread serving the journal, close them."""
        for s in (self.journal, self.messages):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        # After the shutdown its recv returns at once; a request it is answering ends first,
        # so nothing reads the journal for this child once the daemon goes on to close it.
        self.server.join(STOP_WAIT_S)
        for s in (self.journal, self.messages):
            s.close()


class ShipperLink:
    """Runs the shipper child for one journal until `close`."""

    def __init__(
        self,
        journal: Journal,
        config_path: Path,
        on_server_message: Callable[[bytes], None],
        *,
        backoff_first: float = 1.0,
        backoff_max: float = 60.0,
        rng: random.Random | None = None,
    ) -> None:
        self._journal = journal
        self._config_path = config_path
        self._on_server_message = on_server_message
        self._backoff = (backoff_first, backoff_max)
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        self._closing = threading.Event()
        self._lock = threading.Lock()  # the current child, against close
        self._child: _Child | None = None
        self._heartbeat = b""  # the latest, for a child started later
        # Joined by `close`. The signed-notice thread is not: it waits in the journal's
        # wait_for_new, which the journal's own close (after this one's) ends.
        self._supervisor: threading.Thread | None = None
        self.starts = 0

    @property
    def pid(self) -> int | None:
        """The running child's PID (None between children)."""
        child = self._child
        return child.proc.pid if child is not None else None

    def start(self) -> None:
        """Start the supervisor (which starts the child) and the signed-notice thread."""
        self._supervisor = threading.Thread(
            target=self._supervise, name="ship-supervisor", daemon=True
        )
        self._supervisor.start()
        threading.Thread(target=self._signals, name="ship-signals", daemon=True).start()

    def post_heartbeat(self, heartbeat: bytes) -> None:
        """Hand the child the daemon's latest serialized Heartbeat; never blocks."""
        self._heartbeat = heartbeat
        child = self._child
        if child is not None:
            ship_ipc.send_nowait(child.messages, ship_ipc.HEARTBEAT + heartbeat)

    def close(self, timeout: float = STOP_WAIT_S) -> None:
        """End the child (SIGTERM, then SIGKILL after `timeout`), then wait (bounded) for the
        supervisor, which waits for the thread serving the child's journal requests."""
        with self._lock:
            self._closing.set()
            child = self._child
        if child is not None:
            with contextlib.suppress(ProcessLookupError):
                child.proc.terminate()
            child.reap(timeout)
            with contextlib.suppress(OSError):
                child.messages.shutdown(socket.SHUT_RDWR)
        if self._supervisor is not None:
            self._supervisor.join(timeout + STOP_WAIT_S + 1.0)  # its reap, then its sockets

    # -- the threads -----------------------------------------------------------------------

    def _spawn(self) -> _Child:
        journal, child_journal = ship_ipc.socketpair()
        messages, child_messages = ship_ipc.socketpair()
        fds = (child_journal.fileno(), child_messages.fileno())
        argv = [
            sys.executable,
            "-P",  # never import from the working directory
            "-m",
            "agent.shipper_proc",
            "--config",
            str(self._config_path),
            "--journal-fd",
            str(fds[0]),
            "--messages-fd",
            str(fds[1]),
            "--parent-pid",
            str(os.getpid()),
            *log_options(),
        ]
        try:
            # No preexec_fn: it would force fork() in a threaded process; the child sets its
            # own parent-death signal.
            proc = subprocess.Popen(argv, pass_fds=fds, stdin=subprocess.DEVNULL)
        except BaseException:
            for s in (journal, messages):
                s.close()
            raise
        finally:
            child_journal.close()
            child_messages.close()
        server = threading.Thread(
            target=ship_ipc.serve_journal,
            args=(journal, self._journal),
            name="ship-journal",
            daemon=True,
        )
        server.start()
        child = _Child(proc, journal, messages, server)
        if self._heartbeat:
            ship_ipc.send_nowait(messages, ship_ipc.HEARTBEAT + self._heartbeat)
        self.starts += 1
        log.info("shipper_started", pid=proc.pid, starts=self.starts)
        return child

    def _supervise(self) -> None:
        first, cap = self._backoff
        delay = backoff_delays(first, cap, self._rng)
        while not self._closing.is_set():
            with self._lock:
                if self._closing.is_set():
                    return
                try:
                    child: _Child | None = self._spawn()
                except Exception:  # not the interpreter, no fds, a bug: retry later
                    log.exception("shipper_start_failed")
                    child = None
                self._child = child
            if child is not None:
                self._relay(child)
                code = child.reap(STOP_WAIT_S)
                with self._lock:
                    self._child = None
                child.close_sockets()
                ran = time.monotonic() - child.started
                if self._closing.is_set():
                    log.info("shipper_stopped", pid=child.proc.pid, code=code)
                    return
                log.warning(
                    "shipper_exited", pid=child.proc.pid, code=code, ran_seconds=round(ran, 1)
                )
                if ran >= HEALTHY_S:
                    delay = backoff_delays(first, cap, self._rng)
            self._closing.wait(delay())

    def _relay(self, child: _Child) -> None:
        """Hand each server message to the daemon until the child closes its socket."""
        while True:
            try:
                message = ship_ipc.receive_message(child.messages)
            except ship_ipc.IpcError as exc:
                log.warning("shipper_sent_bad_packet", pid=child.proc.pid, error=str(exc))
                with contextlib.suppress(ProcessLookupError):
                    child.proc.kill()
                return
            except OSError:
                return
            if message is None:
                return
            try:
                self._on_server_message(message)
            except Exception:  # one bad message must not stop the relay
                log.exception("server_message_failed", pid=child.proc.pid)

    def _signals(self) -> None:
        sent = 0
        journal = self._journal
        while not self._closing.is_set():
            journal.wait_for_new(sent, SIGNAL_WAIT_S)
            if self._closing.is_set():
                return
            signed = journal.checkpointed
            child = self._child
            if signed <= sent:
                self._closing.wait(1.0)  # timed out, or the journal closed
                continue
            if child is None:
                sent = signed  # the next child asks for the bounds when it starts
                continue
            packet = ship_ipc.SIGNED + ship_ipc.encode_signed(signed)
            if not ship_ipc.send_nowait(child.messages, packet):
                # A full buffer: the child is busy or stuck. Wait a little, then move on
                # (its sender also wakes on its own within its idle wait).
                ship_ipc.wait_writable(child.messages, 1.0)
                ship_ipc.send_nowait(child.messages, packet)
            sent = signed
