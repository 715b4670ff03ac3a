"""The shipper child's entry: `python -m agent.shipper_proc --config … --journal-fd N …`.

Started by the enrolled daemon (agent/ship_link.py), never by hand. It ships the daemon's
journal with agent.ship.Shipper over gRPC, reading the journal through the daemon
(agent/ship_ipc.JournalClient), relays what the server pushes to the daemon as bytes, and
sends the daemon's heartbeats. It never outlives the daemon: PR_SET_PDEATHSIG brings
SIGTERM when the daemon's thread that started it ends, and EOF on the messages socket ends
it too. Exit codes: 0 stopped, 1 failed, 2 usage, 3 the daemon was already gone.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

# protos.logs imports structlog (its way) before anything else does.
from protos import logs  # isort: split

from agent import ship_ipc
from agent.config import load_config
from agent.enroll import Credentials
from agent.ship import ShipLimits, Shipper
from agent.ship_ipc import JournalClient
from protos.errors import CustodesError
from protos.wire import pb

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_ORPHANED = 3
PR_SET_PDEATHSIG = 1
IDLE_WAIT_S = 30.0  # the sender re-checks on its own this often; the daemon's notices wake it


def die_with_parent(parent_pid: int) -> bool:
    """Ask for SIGTERM when the parent ends; False when it has already ended."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    return os.getppid() == parent_pid


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """The child's arguments (the daemon passes them)."""
    p = argparse.ArgumentParser(prog="python -m agent.shipper_proc")
    p.add_argument("--config", required=True)
    p.add_argument("--journal-fd", type=int, required=True)
    p.add_argument("--messages-fd", type=int, required=True)
    p.add_argument("--parent-pid", type=int, required=True)
    p.add_argument("--log-level", default="info")
    p.add_argument("--log-format", choices=("auto", "json", "console"), default="auto")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Ship until SIGTERM or the daemon goes away; the exit code."""
    try:
        args = parse(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else EXIT_OK
    logs.configure(args.log_level, args.log_format)
    log = logs.get_logger("agent.shipper_proc")
    if not die_with_parent(args.parent_pid):
        log.warning("shipper_orphaned", parent_pid=args.parent_pid)
        return EXIT_ORPHANED

    journal_sock = socket.socket(fileno=args.journal_fd)
    messages = socket.socket(fileno=args.messages_fd)
    try:
        cfg = load_config(Path(args.config))
        journal = JournalClient(journal_sock, cfg.limits.max_event_bytes)
        relay = Relay(messages)
        shipper = Shipper(
            journal,
            Credentials(cfg.state_dir),
            cfg.agent_id,
            cfg.client,
            server=cfg.server,
            limits=ShipLimits(idle_wait_seconds=IDLE_WAIT_S),
            on_server_message=relay.forward,
        )
    except CustodesError as exc:
        log.error("shipper_failed", error=str(exc))  # noqa: TRY400 - the words, no traceback
        return EXIT_FAILED
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("shipper_stopping", signal=signal.Signals(signum).name)
        stop.set()
        journal.close()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    listener = threading.Thread(
        target=relay.listen, args=(shipper, journal, stop), name="daemon-listener", daemon=True
    )
    listener.start()
    log.info("shipper_running", server=shipper.server, daemon=args.parent_pid)
    asyncio.run(shipper.run(stop))
    journal.close()
    return EXIT_OK


class Relay:
    """The messages socket, from the child's side."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._lock = threading.Lock()

    def forward(self, message: pb.ServerMessage) -> None:
        """Send a server message (grant, revocation, agreement) to the daemon as its bytes."""
        raw = message.SerializeToString()
        with self._lock:
            ship_ipc.send_message(self._sock, raw)

    def listen(self, shipper: Shipper, journal: JournalClient, stop: threading.Event) -> None:
        """Take the daemon's heartbeats and signed notices until it closes its end."""
        log = logs.get_logger("agent.shipper_proc")
        while not stop.is_set():
            try:
                packet = self._sock.recv(ship_ipc.MAX_PACKET)
            except OSError:
                break
            if not packet:
                log.info("daemon_gone")
                break
            kind, body = packet[:1], packet[1:]
            if kind == ship_ipc.HEARTBEAT:
                try:
                    beat = pb.Heartbeat.FromString(body)
                except Exception:  # protobuf's DecodeError and others
                    log.warning("heartbeat_unreadable", size=len(body))
                    continue
                shipper.send_heartbeat(beat)
            elif kind == ship_ipc.SIGNED:
                try:
                    journal.signed(ship_ipc.decode_signed(body))
                except ship_ipc.IpcError as exc:
                    log.warning("signed_notice_unreadable", error=str(exc))
        stop.set()
        journal.close()


if __name__ == "__main__":
    sys.exit(main())
