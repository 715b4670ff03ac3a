"""Self-metrics for the heartbeat: memory, CPU, events/s, queue depth, mode, marks, agreement.

Off the gate's answer path. `HeartbeatMeter.sample` is called every `heartbeat_seconds`
by the daemon, which logs it and sends it to the server. Resident memory is read from
/proc/self/statm where there is one (Linux: where the daemon gates), else from psutil,
imported only there: in the daemon psutil would stay resident (~0.8 MB) for one number.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from protos.wire import pb

_STATM = "/proc/self/statm"


def _statm_rss() -> int:
    with open(_STATM, "rb") as f:
        return int(f.read(256).split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _rss_reader() -> Callable[[], int]:
    """A function returning this process's resident set size in bytes."""
    try:
        _statm_rss()
    except (OSError, ValueError, IndexError):
        import psutil  # noqa: PLC0415 - only where there is no /proc

        proc = psutil.Process()
        return lambda: int(proc.memory_info().rss)
    return _statm_rss


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


@dataclass(frozen=True, slots=True)
class HeartbeatSample:
    """One heartbeat."""

    unix_nanos: int
    mode: str  # "enforcing" or "monitor"
    mode_note: str  # why monitor mode, stated in every heartbeat
    rss_bytes: int
    cpu_percent: float
    events_per_second: float
    queue_depth: int
    marks: int
    agreement_version: str
    journal_next_seq: int
    dropped: int

    def to_wire(self) -> pb.Heartbeat:
        """The custodes.v1.Heartbeat message."""
        return pb.Heartbeat(
            unix_nanos=self.unix_nanos,
            mode=pb.GATE_MODE_ENFORCING if self.mode == "enforcing" else pb.GATE_MODE_MONITOR,
            rss_bytes=self.rss_bytes,
            cpu_percent=self.cpu_percent,
            events_per_second=self.events_per_second,
            queue_depth=self.queue_depth,
            marks=self.marks,
            agreement_version=self.agreement_version,
            journal_next_seq=self.journal_next_seq,
            dropped=self.dropped,
            mode_note=self.mode_note,
        )


class HeartbeatMeter:
    """Turns counters into rates between samples."""

    def __init__(self) -> None:
        self._rss = _rss_reader()
        self._last_t = time.monotonic()
        self._last_cpu = _cpu_seconds()
        self._last_seq = 0

    def sample(
        self,
        *,
        mode: str,
        mode_note: str,
        next_seq: int,
        queue_depth: int,
        marks: int,
        agreement_version: str,
        dropped: int,
    ) -> HeartbeatSample:
        """Measure now; `events_per_second` is journaled events since the last sample."""
        now, cpu = time.monotonic(), _cpu_seconds()
        elapsed = max(now - self._last_t, 1e-6)
        rate = (next_seq - self._last_seq) / elapsed if self._last_seq else 0.0
        # CPU time over wall time since the last sample, as psutil's cpu_percent: 100 is
        # one CPU busy.
        cpu_percent = (cpu - self._last_cpu) / elapsed * 100
        self._last_t, self._last_cpu, self._last_seq = now, cpu, next_seq
        return HeartbeatSample(
            unix_nanos=time.time_ns(),
            mode=mode,
            mode_note=mode_note,
            rss_bytes=self._rss(),
            cpu_percent=round(cpu_percent, 2),
            events_per_second=round(rate, 1),
            queue_depth=queue_depth,
            marks=marks,
            agreement_version=agreement_version,
            journal_next_seq=next_seq,
            dropped=dropped,
        )
