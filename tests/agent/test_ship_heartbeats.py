"""The shipper's heartbeat task: a posted heartbeat goes out at once with its own time; between
posts the latest is repeated every heartbeat_seconds, stamped anew."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from agent.enroll import Credentials
from agent.ship import ShipLimits, Shipper
from protos.wire import pb

WAIT_S = 10.0


class _Journal:
    next_seq = 7
    first_seq = 0


class _Call:
    """The stream's writing side: keeps what was written."""

    def __init__(self) -> None:
        self.written: list[pb.Heartbeat] = []

    async def write(self, message: pb.AgentMessage) -> None:
        self.written.append(message.heartbeat)


class _Creds(Credentials):
    def read(self, path: Path) -> bytes:
        return b"\x00" * 32  # the server's key: never used, no checkpoint is verified here


def shipper(tmp_path: Path, every: float) -> Shipper:
    return Shipper(
        _Journal(),  # type: ignore[arg-type] # the heartbeat asks only next_seq
        _Creds(tmp_path),
        "agent-1",
        "test-clinic",
        server="127.0.0.1:1",
        limits=ShipLimits(heartbeat_seconds=every),
    )


def posted(mode: int, unix_nanos: int) -> pb.Heartbeat:
    return pb.Heartbeat(unix_nanos=unix_nanos, mode=mode, marks=3)  # type: ignore[arg-type]


async def _until(call: _Call, count: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while len(call.written) < count:
        assert time.monotonic() < deadline, call.written
        await asyncio.sleep(0.01)


def run_heartbeats(s: Shipper, body) -> _Call:  # type: ignore[no-untyped-def]
    """Run the heartbeat task on a loop of its own while `body(call)` (async) runs."""
    call = _Call()

    async def main() -> None:
        s._loop = asyncio.get_running_loop()  # as Shipper.run sets them
        s._beat = asyncio.Event()
        task = asyncio.create_task(s._heartbeats(call, asyncio.Lock()))  # type: ignore[arg-type]
        try:
            await body(call)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
    return call


def test_a_posted_heartbeat_goes_out_at_once_with_its_own_time(tmp_path: Path) -> None:
    s = shipper(tmp_path, every=3600.0)  # no repeat within the test
    s.send_heartbeat(posted(pb.GATE_MODE_ENFORCING, 111))

    async def body(call: _Call) -> None:
        await _until(call, 1)
        # A mode change posted from another thread (the child's listener) wakes the task.
        poster = threading.Thread(
            target=s.send_heartbeat, args=(posted(pb.GATE_MODE_MONITOR, 222),)
        )
        poster.start()
        poster.join(WAIT_S)
        await _until(call, 2)
        await asyncio.sleep(0.2)  # and nothing more until heartbeat_seconds

    call = run_heartbeats(s, body)
    assert [(b.mode, b.unix_nanos) for b in call.written] == [
        (pb.GATE_MODE_ENFORCING, 111),
        (pb.GATE_MODE_MONITOR, 222),
    ]
    assert all(b.journal_next_seq == 7 for b in call.written)


def test_a_repeated_heartbeat_is_stamped_anew(tmp_path: Path) -> None:
    s = shipper(tmp_path, every=0.05)
    s.send_heartbeat(posted(pb.GATE_MODE_ENFORCING, 111))
    before = time.time_ns()

    async def body(call: _Call) -> None:
        await _until(call, 3)

    call = run_heartbeats(s, body)
    assert call.written[0].unix_nanos == 111
    assert all(b.unix_nanos >= before and b.marks == 3 for b in call.written[1:])
