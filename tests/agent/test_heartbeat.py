"""The heartbeat's self-metrics."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import heartbeat
from agent.heartbeat import HeartbeatMeter, _statm_rss
from protos.wire import pb


def _sample(meter: HeartbeatMeter, seq: int) -> tuple[int, float, float]:
    s = meter.sample(
        mode="enforcing",
        mode_note="",
        next_seq=seq,
        queue_depth=0,
        marks=0,
        agreement_version="v1",
        dropped=0,
    )
    return s.rss_bytes, s.cpu_percent, s.events_per_second


def test_rss_is_this_process_resident_set() -> None:
    with open("/proc/self/status", encoding="ascii") as f:
        vm_rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    assert abs(_statm_rss() - vm_rss) < 4 * 1024 * 1024


def test_cpu_percent_counts_this_process_busy_time() -> None:
    meter = HeartbeatMeter()
    end = time.process_time() + 0.2
    while time.process_time() < end:
        pass
    rss, cpu, _ = _sample(meter, 1)
    assert rss > 0
    assert 10.0 < cpu <= 100.0 * (os.cpu_count() or 1)


def test_events_per_second_is_the_journal_rate_between_samples() -> None:
    meter = HeartbeatMeter()
    assert _sample(meter, 100)[2] == 0.0  # nothing to compare with yet
    time.sleep(0.1)
    assert _sample(meter, 200)[2] > 0


# A stand-in for the shipping child: busy on the CPU for a moment, then idle.
BUSY_THEN_IDLE = """
import sys, time
sys.stdout.write("ready\\n"); sys.stdout.flush()
end = time.process_time() + 0.3
while time.process_time() < end:
    pass
sys.stdout.write("busy done\\n"); sys.stdout.flush()
time.sleep(60)
"""


@pytest.fixture
def child() -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", BUSY_THEN_IDLE], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    yield proc
    proc.kill()
    proc.wait(10)


def _shipper_sample(meter: HeartbeatMeter, pid: int | None) -> pb.Heartbeat:
    return meter.sample(
        mode="enforcing",
        mode_note="",
        next_seq=1,
        queue_depth=0,
        marks=0,
        agreement_version="v1",
        dropped=0,
        shipper_pid=pid,
    ).to_wire()


def test_the_shipping_childs_memory_and_cpu_are_in_the_heartbeat(
    child: subprocess.Popen[str],
) -> None:
    meter = HeartbeatMeter()
    assert child.stdout is not None
    assert child.stdout.readline() == "busy done\n"
    beat = _shipper_sample(meter, child.pid)
    with open(f"/proc/{child.pid}/status", encoding="ascii") as f:
        vm_rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    assert abs(beat.shipper_rss_bytes - vm_rss) < 4 * 1024 * 1024
    assert beat.shipper_rss_bytes != beat.rss_bytes
    assert 10.0 < beat.shipper_cpu_percent <= 100.0 * (os.cpu_count() or 1)
    # Idle since: its CPU between two samples is counted from the last one, not its start.
    time.sleep(0.5)
    again = _shipper_sample(meter, child.pid)
    assert again.shipper_cpu_percent < 10.0
    assert again.shipper_rss_bytes > 0


def test_no_shipping_child_or_one_gone_reads_as_zero(child: subprocess.Popen[str]) -> None:
    meter = HeartbeatMeter()
    beat = _shipper_sample(meter, None)
    assert (beat.shipper_rss_bytes, beat.shipper_cpu_percent) == (0, 0.0)
    child.kill()
    child.wait(10)
    gone = _shipper_sample(meter, child.pid)
    assert (gone.shipper_rss_bytes, gone.shipper_cpu_percent) == (0, 0.0)
    assert gone.rss_bytes > 0


def test_a_process_name_with_spaces_and_parentheses_is_read_past(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proc = tmp_path / "4242"
    proc.mkdir()
    page = os.sysconf("SC_PAGE_SIZE")
    ticks = os.sysconf("SC_CLK_TCK")
    (proc / "statm").write_bytes(b"9000 1000 300 1 0 700 0\n")
    rest = " ".join(["0"] * 10)  # ppid .. cmajflt, then utime and stime
    (proc / "stat").write_bytes(f"4242 (a ) b (c)) S {rest} {3 * ticks} {ticks} 0 0 20\n".encode())
    monkeypatch.setattr(heartbeat, "_PROC", str(tmp_path))
    assert heartbeat._statm_rss(4242) == 1000 * page
    assert heartbeat._stat_cpu_seconds(4242) == 4.0
