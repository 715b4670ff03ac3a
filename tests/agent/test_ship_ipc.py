"""The daemon ↔ shipper-child wire (agent/ship_ipc.py) over a real socketpair and journal."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agent import ship_ipc
from agent.config import Limits
from agent.events import Origin
from agent.journal import Journal
from agent.records import AccessRecord, Attribution
from agent.segments import JournalError
from agent.ship_ipc import JournalClient
from agent.ship_link import ShipperLink
from policies.model import Action, Decision, SubjectKind, Verdict

ORIGIN = Origin("agent-1", "test-clinic", "boot-1")
WHO = Attribution(pid=4242, uid=1001, loginuid=1001, account="ctest", login_account="ctest")
ALLOW = Decision(Verdict.ALLOW, "in scope", "in_scope", SubjectKind.TECHNICIAN, "tech1")
LIMITS = Limits(segment_bytes=64 * 1024, group_events=100)


def access(i: int) -> AccessRecord:
    return AccessRecord(time.time_ns(), WHO, f"/srv/records/{i}.pdf", Action.READ, ALLOW, True)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal.open(tmp_path / "journal", ORIGIN, tmp_path / "keys", LIMITS)
    yield j
    j.close()


@pytest.fixture
def client(journal: Journal) -> Iterator[JournalClient]:
    daemon_end, child_end = ship_ipc.socketpair()
    server = threading.Thread(target=ship_ipc.serve_journal, args=(daemon_end, journal))
    server.start()
    c = JournalClient(child_end, LIMITS.max_event_bytes)
    yield c
    c.close()
    child_end.close()
    server.join(10)
    daemon_end.close()


def fill(journal: Journal, count: int) -> None:
    for i in range(count):
        journal.record(access(i))
        if i % 100 == 99:
            journal.flush()  # many checkpoints, several segments
    assert journal.flush()


def test_batches_over_the_socket_are_the_journals_own(
    journal: Journal, client: JournalClient
) -> None:
    fill(journal, 2000)
    assert len(list((journal.directory).glob("*.seg"))) > 1
    assert client.bounds() == (journal.first_seq, journal.next_seq, journal.checkpointed)
    assert client.latest_checkpoint() == journal.latest_checkpoint()
    for from_seq in (0, 1, 99, 100, 733, 1999):
        remote = client.read_batch(from_seq, 300, 1 << 20)
        local = journal.read_batch(from_seq, 300, 1 << 20)
        assert remote == local, from_seq
    assert client.read_batch(2000, 300, 1 << 20) is None


def test_prune_goes_no_further_than_what_is_signed(journal: Journal, client: JournalClient) -> None:
    fill(journal, 2000)
    segments = len(list(journal.directory.glob("*.seg")))
    assert client.prune_below(10**12) == segments - 1  # the active segment always stays
    with pytest.raises(JournalError, match="was pruned"):
        client.read_batch(0, 300, 1 << 20)


def test_wait_for_new_wakes_on_the_daemons_notice_and_on_close(client: JournalClient) -> None:
    assert not client.wait_for_new(0, 0.01)
    woke: list[bool] = []
    waiter = threading.Thread(target=lambda: woke.append(client.wait_for_new(5, 30.0)))
    waiter.start()
    client.signed(6)
    waiter.join(10)
    assert woke == [True]
    waiter = threading.Thread(target=lambda: woke.append(client.wait_for_new(6, 30.0)))
    waiter.start()
    client.close()
    waiter.join(10)
    assert woke == [True, False]


def test_a_request_the_wire_lacks_is_refused(journal: Journal) -> None:
    with pytest.raises(ship_ipc.IpcError, match="kind b'X'"):
        ship_ipc.answer(journal, b"X")
    with pytest.raises(ship_ipc.IpcError):
        ship_ipc.answer(journal, ship_ipc.READ + b"\x00")  # truncated


def test_a_large_server_message_arrives_whole() -> None:
    daemon_end, child_end = ship_ipc.socketpair()
    message = bytes(range(256)) * 2000  # 512 KB: several packets
    got: list[bytes | None] = []
    reader = threading.Thread(target=lambda: got.append(ship_ipc.receive_message(daemon_end)))
    reader.start()
    ship_ipc.send_message(child_end, message)
    reader.join(10)
    assert got == [message]
    child_end.close()
    assert ship_ipc.receive_message(daemon_end) is None  # EOF: the child is gone
    daemon_end.close()


def test_a_heartbeat_to_a_stuck_child_is_dropped_not_waited_for() -> None:
    daemon_end, child_end = ship_ipc.socketpair()
    daemon_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sent = [ship_ipc.send_nowait(daemon_end, ship_ipc.HEARTBEAT + b"x" * 500) for _ in range(200)]
    assert sent[0]
    assert not all(sent)  # the child reads nothing: later ones are dropped, none blocks
    daemon_end.close()
    child_end.close()


def test_a_shipper_child_that_exits_is_logged_and_started_again(
    journal: Journal, tmp_path: Path
) -> None:
    # No such config: every child exits 1 at once, a crash loop the backoff must pace.
    link = ShipperLink(
        journal, tmp_path / "missing.toml", lambda _raw: None, backoff_first=0.05, backoff_max=0.1
    )
    with capture_logs() as logs:
        link.start()
        deadline = time.monotonic() + 60
        while len([x for x in logs if x["event"] == "shipper_exited"]) < 2:
            assert time.monotonic() < deadline, logs
            time.sleep(0.05)
        link.close()
    exits = [x for x in logs if x["event"] == "shipper_exited"]
    assert {x["code"] for x in exits} == {1}
    assert link.starts >= 2
    assert link.pid is None


def test_a_signed_notice_round_trips_and_a_malformed_one_is_refused() -> None:
    body = ship_ipc.encode_signed(2**40 + 7)
    assert ship_ipc.decode_signed(body) == 2**40 + 7
    for bad in (b"", body[:-1], body + b"\x00"):
        with pytest.raises(ship_ipc.IpcError, match="signed notice"):
            ship_ipc.decode_signed(bad)


class _Signed:
    """A JournalClient stand-in that records the daemon's signed notices."""

    def __init__(self) -> None:
        self.seen: list[int] = []
        self.closed = False

    def signed(self, checkpointed: int) -> None:
        self.seen.append(checkpointed)

    def close(self) -> None:
        self.closed = True


def test_the_childs_listener_takes_signed_notices_and_skips_malformed_ones() -> None:
    from agent.shipper_proc import Relay  # noqa: PLC0415 - imports grpc (via agent.ship)

    daemon_end, child_end = ship_ipc.socketpair()
    journal = _Signed()
    stop = threading.Event()
    listener = threading.Thread(
        target=Relay(child_end).listen,
        args=(None, journal, stop),
    )
    with capture_logs() as logs:
        listener.start()
        daemon_end.send(ship_ipc.SIGNED + ship_ipc.encode_signed(42))
        daemon_end.send(ship_ipc.SIGNED + b"\x00" * 3)
        daemon_end.send(ship_ipc.SIGNED + ship_ipc.encode_signed(43))
        daemon_end.close()  # the daemon is gone: the listener ends
        listener.join(10)
    child_end.close()
    assert not listener.is_alive()
    assert journal.seen == [42, 43]
    assert journal.closed
    assert [x["event"] for x in logs if x["log_level"] == "warning"] == ["signed_notice_unreadable"]


class _SlowBounds:
    """A journal whose bounds take a while: a request still being answered at close."""

    def __init__(self, asked: threading.Event) -> None:
        self._asked = asked
        self.next_seq = self.checkpointed = 0

    @property
    def first_seq(self) -> int:
        self._asked.set()
        time.sleep(0.5)
        return 0


def test_a_childs_sockets_close_only_after_its_journal_thread_has_ended() -> None:
    from agent.ship_link import _Child  # noqa: PLC0415

    journal, child_journal = ship_ipc.socketpair()
    messages, child_messages = ship_ipc.socketpair()
    asked = threading.Event()
    server = threading.Thread(target=ship_ipc.serve_journal, args=(journal, _SlowBounds(asked)))
    server.start()
    child = _Child(None, journal, messages, server)  # type: ignore[arg-type] # no process here
    child_journal.send(ship_ipc.BOUNDS)
    assert asked.wait(10)
    child.close_sockets()
    # Nothing reads the daemon's journal for this child any more: the daemon may close it.
    assert not server.is_alive()
    child_journal.close()
    child_messages.close()
