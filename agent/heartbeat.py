"""Self-metrics for the heartbeat: memory, CPU, events/s, queue depth, mode, marks, agreement.

Off the gate's answer path. `HeartbeatMeter.sample` is called every `heartbeat_seconds`
by the daemon, which logs it and sends it to the server. Resident memory is read from
/proc/self/statm where there is one (Linux: where the daemon gates), else from psutil,
imported only there: in the daemon psutil would stay resident (~0.8 MB) for one number.
The shipping child's memory and CPU (an enrolled agent's other process) are read from its
/proc/PID/statm and /proc/PID/stat, and are 0 where there is no /proc.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from protos.wire import pb

_PROC = "/proc"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _statm_rss(pid: int | str = "self") -> int:
    """The resident set size in bytes of process `pid` (this one by default)."""
    with open(f"{_PROC}/{pid}/statm", "rb") as f:
        return int(f.read(256).split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _stat_cpu_seconds(pid: int) -> float:
    """User and system CPU time of process `pid` so far, in seconds."""
    with open(f"{_PROC}/{pid}/stat", "rb") as f:
        stat = f.read(4096)
    # After "pid (comm) ": comm may hold spaces and parentheses, so split after the last
    # ")". Fields from there on count from 3 (state); utime is 14 and stime 15.
    fields = stat[stat.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


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
    shipper_rss_bytes: int = 0  # the shipping child's; 0 when there is none
    shipper_cpu_percent: float = 0.0

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
            shipper_rss_bytes=self.shipper_rss_bytes,
            shipper_cpu_percent=self.shipper_cpu_percent,
        )


class HeartbeatMeter:
    """Turns counters into rates between samples."""

    def __init__(self) -> None:
        self._rss = _rss_reader()
        self._last_t = time.monotonic()
        self._last_cpu = _cpu_seconds()
        self._last_seq = 0
        self._last_shipper: tuple[int, float] | None = None  # its PID and CPU seconds

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
        shipper_pid: int | None = None,
    ) -> HeartbeatSample:
        """Measure now; `events_per_second` is journaled events since the last sample.

        `shipper_pid` is the shipping child's (None when there is none): its memory and CPU
        are measured too, and are 0 when it is gone by the time they are read.
        """
        now, cpu = time.monotonic(), _cpu_seconds()
        elapsed = max(now - self._last_t, 1e-6)
        rate = (next_seq - self._last_seq) / elapsed if self._last_seq else 0.0
        # CPU time over wall time since the last sample, as psutil's cpu_percent: 100 is
        # one CPU busy.
        cpu_percent = (cpu - self._last_cpu) / elapsed * 100
        self._last_t, self._last_cpu, self._last_seq = now, cpu, next_seq
        shipper_rss, shipper_cpu = self._shipper(shipper_pid, elapsed)
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
            shipper_rss_bytes=shipper_rss,
            shipper_cpu_percent=round(shipper_cpu, 2),
        )

    def _shipper(self, pid: int | None, elapsed: float) -> tuple[int, float]:
        """The shipping child's RSS and CPU percent since the last sample."""
        if pid is None:
            self._last_shipper = None
            return 0, 0.0
        try:
            rss, cpu = _statm_rss(pid), _stat_cpu_seconds(pid)
        except (OSError, ValueError, IndexError):  # no /proc, or it has just ended
            self._last_shipper = None
            return 0, 0.0
        last = self._last_shipper
        # A child not seen at the last sample is counted from its start: it did not run
        # before (unless it started just before a sample that did not know its PID yet).
        before = last[1] if last is not None and last[0] == pid else 0.0
        self._last_shipper = (pid, cpu)
        return rss, (cpu - before) / elapsed * 100
