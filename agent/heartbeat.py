"""Self-metrics for the heartbeat: memory, CPU, events/s, queue depth, mode, marks, agreement.

psutil stays here, off the gate's answer path. `HeartbeatMeter.sample` is called every
`heartbeat_seconds` by the daemon, which logs it and (later) sends it to the server.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import psutil

from protos.wire import pb


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
        self._proc = psutil.Process()
        self._proc.cpu_percent(None)  # the first call only sets the reference point
        self._last_t = time.monotonic()
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
        now = time.monotonic()
        elapsed = max(now - self._last_t, 1e-6)
        rate = (next_seq - self._last_seq) / elapsed if self._last_seq else 0.0
        self._last_t, self._last_seq = now, next_seq
        return HeartbeatSample(
            unix_nanos=time.time_ns(),
            mode=mode,
            mode_note=mode_note,
            rss_bytes=self._proc.memory_info().rss,
            cpu_percent=self._proc.cpu_percent(None),
            events_per_second=round(rate, 1),
            queue_depth=queue_depth,
            marks=marks,
            agreement_version=agreement_version,
            journal_next_seq=next_seq,
            dropped=dropped,
        )
