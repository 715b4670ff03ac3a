"""The heartbeat's self-metrics."""

from __future__ import annotations

import os
import time

from agent.heartbeat import HeartbeatMeter, _statm_rss


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
