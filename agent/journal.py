"""The agent's journal: the single source of truth on the host.

`record` never blocks: records go to a bounded queue that counts what it drops. One writer
thread serialises them (agent.events), chains them (protos.evidence.chain), appends them to
the current segment (agent.segments) and group-commits: an fsync at most every
`commit_interval_ms`, sooner when a deny waits or `group_events` are queued. Every group
commit ends with a signed checkpoint (C2SP note, extension lines `boot {id}` and
`epoch {n}`), then the `on_durable` callbacks run. When the disk is full, callbacks get
False, the loss is counted, and a JournalLoss event is written as soon as space returns.

The signing key rotates on its own (forward security): every `limits.epoch_events` events
(EPOCH_EVENTS when 0) or EPOCH_SECONDS, whichever comes first. A batch for shipping never
crosses an epoch: it ends at the checkpoint the old key signed over the KeyRotated event,
which is what teaches a verifier the new key.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
from array import array
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from agent import keys as epoch_keys
from agent import segments as fmt
from agent.config import Limits
from agent.events import (
    JournalLossRecord,
    JournalRecord,
    KeyRotatedRecord,
    Origin,
    decode,
    encode,
)
from agent.keys import EpochKey
from agent.records import AccessRecord
from agent.segments import JournalCorruptError, JournalError
from protos.evidence.chain import GENESIS, Link, link_hash
from protos.evidence.errors import EvidenceError
from protos.evidence.note import Checkpoint, NoteVerifier, parse_checkpoint, verify_checkpoint
from protos.evidence.origins import agent_origin

log = structlog.get_logger("agent.journal")

Callback = Callable[[bool], None]
_IDLE_WAIT = 0.5  # seconds the writer sleeps when idle; also the retry period after a loss
EPOCH_EVENTS = 100_000  # rotate the signing key after this many events by default ...
EPOCH_SECONDS = 24 * 3600.0  # ... or after this long, whichever comes first


@dataclass(frozen=True, slots=True)
class JournalBatch:
    """Events `links` after chain hash `prev_hash`, ending exactly at `checkpoint`."""

    prev_hash: bytes
    links: list[Link]
    checkpoint: bytes


@dataclass(frozen=True, slots=True)
class BatchSpan:
    """Where a batch lies: the records of `path` from byte `start` to `stop`, then `checkpoint`.

    `prev_hash` is the chain hash before the batch when the span starts at its segment's
    first record; None when the span starts one record early, whose chain hash is that one.
    """

    path: Path
    start: int
    stop: int
    prev_hash: bytes | None
    checkpoint: bytes


def read_span(span: BatchSpan, max_event_bytes: int) -> JournalBatch:
    """Read and decode the batch at `span` (JournalCorruptError for bad bytes)."""
    with span.path.open("rb") as fh:
        links = fmt.read_range(fh, span.path, span.start, span.stop, max_event_bytes)
    if span.prev_hash is not None:
        return JournalBatch(span.prev_hash, links, span.checkpoint)
    if not links:
        raise JournalError(f"{span.path} holds no record at offset {span.start}")
    prev = links.pop(0).hash
    return JournalBatch(prev, links, span.checkpoint)


@dataclass(frozen=True, slots=True)
class Recovery:
    """What `Journal.open` found of the previous run."""

    previous_run_clean: bool
    note: str  # plain words: torn records truncated, first start, ...
    next_seq: int


@dataclass(frozen=True, slots=True)
class JournalStats:
    """Counters for the heartbeat."""

    next_seq: int
    checkpointed: int
    queued: int
    dropped: int  # queue overflow, since start
    lost: int  # could not be written (disk full), since start
    commits: int
    epoch: int


@dataclass(slots=True)
class _Ckp:
    size: int
    offset: int
    end: int
    epoch: int = 0  # the signing epoch; a shipped batch never spans two


@dataclass(slots=True)
class _Segment:
    first_seq: int
    path: Path
    prev_hash: bytes
    offsets: array[int] | None = None  # record start offsets, loaded lazily for old segments
    checkpoints: list[_Ckp] | None = None
    end_offset: int = 0  # bytes of whole records (durable part for the active segment)

    @property
    def ckp_path(self) -> Path:
        return self.path.with_suffix(fmt.CKP_SUFFIX)


@dataclass(slots=True)
class _Loss:
    count: int = 0
    first: int = 0
    last: int = 0

    def add(self, n: int, at: int) -> None:
        if self.count == 0:
            self.first = at
        self.count += n
        self.last = at


@dataclass(slots=True)
class _Item:
    rec: JournalRecord
    cb: Callback | None = None
    at: int = 0


class Journal:
    """Append-only, hash-chained, checkpoint-signed event journal. Use `Journal.open`."""

    def __init__(
        self,
        *,
        directory: Path,
        origin: Origin,
        key_dir: Path,
        key: EpochKey,
        limits: Limits,
        segs: list[_Segment],
        head: bytes,
        next_seq: int,
        latest: bytes,
        checkpointed: int,
        recovery: Recovery,
        sync: Callable[[int], None],
        clock: Callable[[], int],
    ) -> None:
        self.directory = directory
        self.origin = origin
        self.name = agent_origin(origin.client, origin.agent_id)
        self.recovery = recovery
        self._key_dir = key_dir
        self._key = key
        self._next_key: tuple[EpochKey, int] | None = None  # (key, seq of its KeyRotated)
        self._prepared: EpochKey | None = None  # made by rotate_key, not yet journaled
        self._rotate_lock = threading.Lock()
        self._epoch_events = limits.epoch_events or EPOCH_EVENTS
        self._epoch_seconds = EPOCH_SECONDS
        self._epoch_from = next_seq  # where this run's current epoch began counting
        self._epoch_since = time.monotonic()
        self._failing = False  # the last write failed: log transitions, not every retry
        self._limits = limits
        self._segs = segs
        self._head = head
        self._next_seq = next_seq
        self._latest = latest
        self._checkpointed = checkpointed
        self._sync = sync
        self._clock = clock
        self._queue: deque[_Item] = deque()
        self._urgent = False
        self._wake = threading.Event()
        self._lock = threading.Lock()  # guards the segment index and the counters below
        self._new = threading.Condition(self._lock)
        self._read_lock = threading.Lock()  # serialises lazy index loads
        self._drops = _Loss()
        self._losses: dict[str, _Loss] = {}
        self._dropped_total = 0
        self._lost_total = 0
        self._commits = 0
        self._closing = False
        self._closed = False
        self._last_commit = 0.0
        active = segs[-1]
        self._seg_fd = os.open(active.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self._ckp_fd = os.open(
            active.ckp_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        self._writer = threading.Thread(target=self._run, name="journal-writer", daemon=True)

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        directory: Path,
        origin: Origin,
        key_dir: Path,
        limits: Limits | None = None,
        *,
        sync: Callable[[int], None] = os.fdatasync,
        clock: Callable[[], int] = time.time_ns,
    ) -> Journal:
        """Open (or create) the journal in `directory` and start its writer thread.

        Verifies the tail of the previous run: the last segment's records chain, the last
        checkpoint's signature and root; truncates a torn final record and says so in
        `recovery.note`. Raises JournalCorruptError or EvidenceError when the tail does not
        verify, OSError when the directory cannot be used.
        """
        limits = limits or Limits()
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        name = agent_origin(origin.client, origin.agent_id)
        key = epoch_keys.load_or_create(key_dir, name)
        notes: list[str] = []
        found = fmt.list_segments(directory)
        first_start = not found
        if first_start:
            _create_segment(directory, 0, GENESIS)
            found = fmt.list_segments(directory)
            notes.append("first start: new journal")
        segs = [_Segment(seq, path, b"") for seq, path in found]
        for seg in segs:
            with seg.path.open("rb") as fh:
                hdr = fmt.read_header(fh, seg.path)
            seg.prev_hash = hdr.prev_hash
        active = segs[-1]
        hashes = _recover_segment(active, limits, notes)
        _recover_checkpoints(active, notes)
        next_seq = active.first_seq + len(hashes)
        head = hashes[-1] if hashes else active.prev_hash
        latest = b""
        checkpointed = active.first_seq
        if active.checkpoints:
            latest = _check_checkpoint(active, hashes, key_dir, name)
            checkpointed = active.checkpoints[-1].size
        elif len(segs) > 1:
            prev = segs[-2]
            _load_index(prev, limits)
            if prev.checkpoints:
                latest = _read_note(prev, prev.checkpoints[-1])
                checkpointed = prev.checkpoints[-1].size
        clean = first_start or _last_event_is_stop(segs, limits)
        journal = cls(
            directory=directory,
            origin=origin,
            key_dir=key_dir,
            key=key,
            limits=limits,
            segs=segs,
            head=head,
            next_seq=next_seq,
            latest=latest,
            checkpointed=checkpointed,
            recovery=Recovery(clean, "; ".join(notes), next_seq),
            sync=sync,
            clock=clock,
        )
        journal._resume_rotation(hashes)
        journal._writer.start()
        return journal

    def _resume_rotation(self, hashes: list[bytes]) -> None:
        pending = epoch_keys.pending_next(self._key_dir, self.name, self._key)
        if pending is None:
            return
        active = self._segs[-1]
        found: int | None = None
        if hashes:
            with active.path.open("rb") as fh:
                for item in fmt.iter_records(
                    fh, active.path, max_event_bytes=self._limits.max_event_bytes
                ):
                    if isinstance(item, fmt.Torn):
                        break
                    ev = decode(item.link.event)
                    if (
                        ev.WhichOneof("body") == "key_rotated"
                        and ev.key_rotated.epoch == pending.epoch
                        and ev.key_rotated.public_key == pending.public
                    ):
                        found = item.link.seq
        if found is None:
            epoch_keys.abandon(self._key_dir, pending)
            log.warning("key_rotation_abandoned", epoch=pending.epoch)
        elif found < self._checkpointed:
            epoch_keys.finish_rotation(self._key_dir, self._key, pending)
            self._key = pending
            log.info("key_rotation_finished", epoch=pending.epoch)
        else:
            self._next_key = (pending, found)

    # -- the EventSink side ---------------------------------------------------------------

    def record(self, rec: AccessRecord, on_durable: Callback | None = None) -> None:
        """Queue an access record without blocking (agent.records.EventSink)."""
        if self._closing:
            if on_durable is not None:
                on_durable(False)
            return
        if len(self._queue) >= self._limits.queue_events:
            with self._lock:
                self._drops.add(1, rec.unix_nanos or self._clock())
                self._dropped_total += 1
            if on_durable is not None:
                on_durable(False)
            return
        self._queue.append(_Item(rec, on_durable))
        if on_durable is not None:
            self._urgent = True
            self._wake.set()
        elif len(self._queue) in (1, self._limits.group_events):
            self._wake.set()

    def note(self, rec: JournalRecord, on_durable: Callback | None = None) -> None:
        """Queue a lifecycle record; these are rare and never dropped for a full queue."""
        if self._closing:
            if on_durable is not None:
                on_durable(False)
            return
        self._queue.append(_Item(rec, on_durable, self._clock()))
        self._urgent = True
        self._wake.set()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far is committed (or failed). True if committed."""
        if self._closing:
            return False
        done = threading.Event()
        result: list[bool] = []

        def cb(ok: bool) -> None:
            result.append(ok)
            done.set()

        # A marker that rides the queue: the writer calls back without writing an event.
        self._queue.append(_Item(_FLUSH, cb))
        self._urgent = True
        self._wake.set()
        return done.wait(timeout) and bool(result) and result[0]

    def rotate_key(self) -> bool:
        """Start a new signing epoch: journal its public key, signed in by the old key.

        False (nothing done) while an earlier rotation is not finished yet.
        """
        with self._rotate_lock:
            if self._prepared is not None or self._next_key is not None or self._closing:
                return False
            nxt = epoch_keys.prepare_next(self._key_dir, self.name, self._key)
            self._prepared = nxt
            self._epoch_from, self._epoch_since = self._next_seq, time.monotonic()
        self.note(KeyRotatedRecord(nxt.epoch, nxt.public))
        return True

    def set_epoch(self, *, events: int | None = None, seconds: float | None = None) -> None:
        """Change when the key rotates on its own (0 events or seconds: never by that)."""
        if events is not None:
            self._epoch_events = events
        if seconds is not None:
            self._epoch_seconds = seconds

    def _maybe_rotate_epoch(self) -> None:
        by_count = self._epoch_events and self._next_seq - self._epoch_from >= self._epoch_events
        by_time = self._epoch_seconds and (
            time.monotonic() - self._epoch_since >= self._epoch_seconds
        )
        if (by_count or by_time) and self.rotate_key():
            log.info("key_rotation_started", epoch=self._key.epoch + 1, at_seq=self._next_seq)

    def close(self, timeout: float = 10.0) -> None:
        """Commit what is queued, stop the writer and close the files."""
        if self._closed:
            return
        self._closing = True
        self._wake.set()
        self._writer.join(timeout)
        with self._lock:
            self._closed = True
            self._new.notify_all()
        for fd in (self._seg_fd, self._ckp_fd):
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- the shipping side ---------------------------------------------------------------

    @property
    def next_seq(self) -> int:
        """The seq the next event will get."""
        return self._next_seq

    @property
    def first_seq(self) -> int:
        """The lowest seq still held locally."""
        with self._lock:
            return self._segs[0].first_seq

    @property
    def checkpointed(self) -> int:
        """The size of the latest stored checkpoint: events below it are signed."""
        return self._checkpointed

    def latest_checkpoint(self) -> bytes:
        """The latest signed checkpoint note (empty before the first commit)."""
        with self._lock:
            return self._latest

    def public_key(self) -> bytes:
        """The current epoch's raw Ed25519 public key."""
        return self._key.public

    def verifier(self) -> NoteVerifier:
        """The current epoch's note verifier."""
        return self._key.signer.verifier()

    @property
    def epoch(self) -> int:
        """The current signing epoch."""
        return self._key.epoch

    def stats(self) -> JournalStats:
        """Counters for the heartbeat."""
        with self._lock:
            return JournalStats(
                self._next_seq,
                self._checkpointed,
                len(self._queue),
                self._dropped_total,
                self._lost_total,
                self._commits,
                self._key.epoch,
            )

    def wait_for_new(self, after_seq: int, timeout: float) -> bool:
        """Wait until a checkpoint covers more than `after_seq` events; True when one does."""
        deadline = time.monotonic() + max(0.0, timeout)
        with self._new:
            while self._checkpointed <= after_seq and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._new.wait(remaining)
            return self._checkpointed > after_seq

    def read_batch(self, from_seq: int, max_events: int, max_bytes: int) -> JournalBatch | None:
        """The events from `from_seq` up to a stored checkpoint, within the bounds if possible.

        The batch ends at the furthest checkpoint within `max_events` and `max_bytes`; when
        even the first one beyond `from_seq` is further, the batch ends there anyway (a group
        commit holds at most `group_events`). None when no checkpoint lies beyond `from_seq`.
        Raises JournalError when `from_seq` was pruned, JournalCorruptError for bad bytes.
        """
        span = self.locate_batch(from_seq, max_events, max_bytes)
        return None if span is None else read_span(span, self._limits.max_event_bytes)

    def locate_batch(self, from_seq: int, max_events: int, max_bytes: int) -> BatchSpan | None:
        """Where the batch `read_batch` would return lies on disk (see there), unread.

        The shipper child (agent/shipper_proc.py) reads the span itself: the daemon keeps
        the index and never copies the events. Raises JournalError when `from_seq` was pruned.
        """
        with self._lock:
            if from_seq >= self._checkpointed:
                return None
            if from_seq < self._segs[0].first_seq:
                raise JournalError(
                    f"seq {from_seq} was pruned; the journal starts at seq "
                    f"{self._segs[0].first_seq}"
                )
            seg = next(s for s in reversed(self._segs) if s.first_seq <= from_seq)
            active = seg is self._segs[-1]
        with self._read_lock:
            if not active:
                _load_index(seg, self._limits)
        with self._lock:
            offsets, ckps = seg.offsets, list(seg.checkpoints or ())
            end_offset = seg.end_offset
            count = len(offsets) if offsets is not None else 0
        assert offsets is not None
        cands = [c for c in ckps if c.size > from_seq]
        if not cands:
            return None

        def end_of(size: int) -> int:
            i = size - seg.first_seq
            return offsets[i] if i < count else end_offset

        start = offsets[from_seq - seg.first_seq]
        chosen = cands[0]
        for c in cands[1:]:
            if c.size - from_seq > max_events or end_of(c.size) - start > max_bytes:
                break
            if c.epoch != chosen.epoch:  # the old key's checkpoint teaches the new key
                break
            chosen = c
        first = from_seq == seg.first_seq
        return BatchSpan(
            path=seg.path,
            start=start if first else offsets[from_seq - 1 - seg.first_seq],
            stop=end_of(chosen.size),
            prev_hash=seg.prev_hash if first else None,
            checkpoint=_read_note(seg, chosen),
        )

    def prune_below(self, seq: int) -> int:
        """Delete whole segments whose every event is below `seq`; return how many."""
        removed: list[_Segment] = []
        with self._lock:
            while len(self._segs) > 1 and self._segs[1].first_seq <= seq:
                removed.append(self._segs.pop(0))
        for seg in removed:
            for p in (seg.path, seg.ckp_path):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
            log.info("segment_pruned", first_seq=seg.first_seq, below=seq)
        if removed:
            _fsync_dir(self.directory)
        return len(removed)

    # -- the writer thread ---------------------------------------------------------------

    def _run(self) -> None:
        interval = self._limits.commit_interval_ms / 1000.0
        try:
            while True:
                pending_loss = bool(self._losses) or self._drops.count > 0
                if not self._queue and not self._closing:
                    self._wake.wait(_IDLE_WAIT)
                    self._wake.clear()
                    if not self._queue and not pending_loss:
                        continue
                # Group commit: wait for the interval since the last commit unless a deny
                # waits, the group is full, or we are closing.
                while (
                    not self._urgent
                    and not self._closing
                    and len(self._queue) < self._limits.group_events
                ):
                    remaining = self._last_commit + interval - time.monotonic()
                    if remaining <= 0:
                        break
                    self._wake.wait(remaining)
                    self._wake.clear()
                self._urgent = False
                items: list[_Item] = []
                while self._queue and len(items) < self._limits.group_events:
                    items.append(self._queue.popleft())
                self._commit(items)
                if self._closing and not self._queue:
                    return
                self._maybe_rotate_epoch()
        except Exception:
            log.exception("journal_writer_crashed")
            self._closing = True
            while self._queue:
                item = self._queue.popleft()
                if item.cb is not None:
                    _call(item.cb, False)

    def _loss_records(self) -> list[_Item]:
        out: list[_Item] = []
        with self._lock:
            if self._drops.count:
                self._losses.setdefault("queue overflow", _Loss())
                mine = self._losses["queue overflow"]
                if mine.count == 0:
                    mine.first = self._drops.first
                mine.count += self._drops.count
                mine.last = self._drops.last
                self._drops = _Loss()
            for cause, loss in self._losses.items():
                out.append(_Item(JournalLossRecord(loss.count, cause, loss.first, loss.last), None))
        return out

    def _commit(self, items: list[_Item]) -> None:
        self._last_commit = time.monotonic()
        loss_items = self._loss_records()
        room = max(1, self._limits.group_events - len(loss_items))
        if len(items) > room:
            # A group (and so a shipped batch) holds at most group_events records: the
            # server refuses a larger batch, and the shipper would resend it forever.
            self._queue.extendleft(reversed(items[room:]))
            del items[room:]
        now = self._clock()
        seg = self._segs[-1]
        seq = self._next_seq
        head = self._head
        parts: list[bytes] = []
        new_offsets: list[int] = []
        callbacks: list[Callback] = []
        lost_times: list[int] = []  # the times of the events in this group, should it fail
        rotation_seq: int | None = None
        pos = seg.end_offset
        # Hot loop: one pass, locals bound once (this is the journal's throughput).
        enc, chain, frame = encode, link_hash, fmt.encode_record
        origin, max_bytes = self.origin, self._limits.max_event_bytes
        for item in loss_items + items if loss_items else items:
            rec = item.rec
            if item.cb is not None:
                callbacks.append(item.cb)
            if rec is _FLUSH:
                continue
            lost_times.append(rec.unix_nanos or now)
            try:
                data = enc(rec, origin, seq, item.at or now)
            except (ValueError, TypeError) as exc:  # a bug upstream must not stop the writer
                log.exception("event_unencodable", error=str(exc))
                self._add_loss("unencodable event", 1, now)
                continue
            if len(data) > max_bytes:
                self._add_loss("event larger than max_event_bytes", 1, now)
                continue
            if type(rec) is KeyRotatedRecord:
                rotation_seq = seq
            head = chain(head, seq, data)
            framed = frame(seq, head, data)
            new_offsets.append(pos)
            pos += len(framed)
            parts.append(framed)
            seq += 1
        if not parts and self._checkpointed == self._next_seq:
            # Nothing new to sign (only flush markers): still durable.
            for cb in callbacks:
                _call(cb, True)
            return
        buf = b"".join(parts)
        if buf and not self._append(self._seg_fd, buf, seg.end_offset):
            lost_times = lost_times[len(loss_items) :]  # loss records are kept to retry
            if lost_times:
                cause = "disk full" if self._enospc else "write failed"
                self._add_loss_span(cause, len(lost_times), lost_times)
            for cb in callbacks:
                _call(cb, False)
            return
        if loss_items:
            with self._lock:
                self._losses.clear()
            for li in loss_items:
                assert isinstance(li.rec, JournalLossRecord)
                log.warning("journal_loss_recorded", lost=li.rec.lost, cause=li.rec.cause)
        with self._lock:
            if seg.offsets is None:
                seg.offsets = array("Q")
            seg.offsets.extend(new_offsets)
            seg.end_offset = pos
            self._next_seq = seq
            self._head = head
        if rotation_seq is not None and self._prepared is not None:
            self._next_key = (self._prepared, rotation_seq)
            self._prepared = None
        self._checkpoint(seg)
        for cb in callbacks:
            _call(cb, True)
        self._maybe_rotate_segment(seg)

    _enospc = False

    def _append(self, fd: int, data: bytes, old_end: int) -> bool:
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            self._sync(fd)
        except OSError as exc:
            self._enospc = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            if not self._failing:
                log.warning("journal_write_failed", error=exc.strerror, errno=exc.errno)
            self._failing = True
            with contextlib.suppress(OSError):
                os.ftruncate(fd, old_end)
            return False
        if self._failing:
            log.info("journal_write_recovered")
        self._enospc = self._failing = False
        return True

    def _checkpoint(self, seg: _Segment) -> None:
        size = self._next_seq
        if size == self._checkpointed:
            return
        cp = Checkpoint(
            self.name,
            size,
            self._head,
            (f"boot {self.origin.boot_id}", f"epoch {self._key.epoch}"),
        )
        note = self._key.signer.sign(cp)
        ckp_end = os.fstat(self._ckp_fd).st_size
        if not self._append(self._ckp_fd, fmt.encode_checkpoint(size, note), ckp_end):
            # The events are durable; the next commit's checkpoint will cover them too.
            return
        with self._new:
            if seg.checkpoints is None:
                seg.checkpoints = []
            seg.checkpoints.append(
                _Ckp(size, ckp_end, ckp_end + fmt.CKP_HEADER.size + len(note), self._key.epoch)
            )
            self._latest = note
            self._checkpointed = size
            self._commits += 1
            self._new.notify_all()
        if self._next_key is not None and self._next_key[1] < size:
            old, new = self._key, self._next_key[0]
            epoch_keys.finish_rotation(self._key_dir, old, new)
            self._key = new
            self._next_key = None
            log.info("key_rotated", epoch=new.epoch, at_seq=size)

    def _maybe_rotate_segment(self, seg: _Segment) -> None:
        if seg.end_offset < self._limits.segment_bytes or self._checkpointed != self._next_seq:
            return
        try:
            path = _create_segment(self.directory, self._next_seq, self._head)
            seg_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            ckp_fd = os.open(
                path.with_suffix(fmt.CKP_SUFFIX),
                os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                0o600,
            )
        except OSError as exc:
            log.warning("segment_rotation_failed", error=exc.strerror)
            return
        new = _Segment(self._next_seq, path, self._head, array("Q"), [], fmt.SEG_HEADER.size)
        old_fds = (self._seg_fd, self._ckp_fd)
        with self._lock:
            self._segs.append(new)
        self._seg_fd, self._ckp_fd = seg_fd, ckp_fd
        for fd in old_fds:
            os.close(fd)
        log.info("segment_rotated", first_seq=new.first_seq)

    def _add_loss(self, cause: str, n: int, at: int) -> None:
        with self._lock:
            self._losses.setdefault(cause, _Loss()).add(n, at)
            self._lost_total += n

    def _add_loss_span(self, cause: str, n: int, times: list[int]) -> None:
        with self._lock:
            loss = self._losses.setdefault(cause, _Loss())
            if loss.count == 0:
                loss.first = min(times)
            loss.count += n
            loss.last = max(*times, loss.last)
            self._lost_total += n


_FLUSH: JournalRecord = JournalLossRecord(0, "flush marker", 0, 0)


def _call(cb: Callback | None, ok: bool) -> None:
    if cb is None:
        return
    try:
        cb(ok)
    except Exception:
        log.exception("durable_callback_failed")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create_segment(directory: Path, first_seq: int, prev_hash: bytes) -> Path:
    path = directory / (fmt.segment_name(first_seq) + fmt.SEG_SUFFIX)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, fmt.encode_header(first_seq, prev_hash))
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_dir(directory)
    return path


def _recover_segment(seg: _Segment, limits: Limits, notes: list[str]) -> list[bytes]:
    """Scan the active segment, truncate a torn tail, verify its chain; return its hashes."""
    offsets = array("Q")
    hashes: list[bytes] = []
    prev = seg.prev_hash
    expected = seg.first_seq
    with seg.path.open("r+b") as fh:
        end = fmt.SEG_HEADER.size
        for item in fmt.iter_records(fh, seg.path, max_event_bytes=limits.max_event_bytes):
            if isinstance(item, fmt.Torn):
                fh.truncate(item.good_end)
                fh.flush()
                os.fsync(fh.fileno())
                notes.append(
                    f"truncated a torn final record at seq {expected} "
                    f"({item.file_size - item.good_end} bytes: {item.reason})"
                )
                log.warning("torn_record_truncated", seq=expected, reason=item.reason)
                break
            link = item.link
            if link.seq != expected:
                raise JournalCorruptError(
                    f"segment {seg.path.name}: record at byte {item.offset} has seq {link.seq}; "
                    f"expected seq {expected}",
                    path=seg.path,
                    offset=item.offset,
                    seq=link.seq,
                )
            computed = link_hash(prev, link.seq, link.event)
            if computed != link.hash:
                raise JournalCorruptError(
                    f"segment {seg.path.name}: record seq {link.seq} does not match its chain "
                    "hash; expected the chain the agent wrote",
                    path=seg.path,
                    offset=item.offset,
                    seq=link.seq,
                )
            prev = computed
            offsets.append(item.offset)
            hashes.append(computed)
            expected += 1
            end = item.end
    seg.offsets = offsets
    seg.end_offset = end
    return hashes


def _recover_checkpoints(seg: _Segment, notes: list[str]) -> None:
    ckps: list[_Ckp] = []
    path = seg.ckp_path
    if not path.exists():
        seg.checkpoints = ckps
        return
    with path.open("r+b") as fh:
        for item in fmt.iter_checkpoints(fh, path):
            if isinstance(item, fmt.Torn):
                fh.truncate(item.good_end)
                fh.flush()
                os.fsync(fh.fileno())
                notes.append(f"truncated a torn final checkpoint ({item.reason})")
                break
            ckps.append(_Ckp(item.size, item.offset, item.end, _note_epoch(item.note)))
    seg.checkpoints = ckps


def _check_checkpoint(seg: _Segment, hashes: list[bytes], key_dir: Path, name: str) -> bytes:
    """Verify the segment's last checkpoint against its key and records; return the note."""
    assert seg.checkpoints
    last = seg.checkpoints[-1]
    note = _read_note(seg, last)
    size = last.size
    cp, _ = parse_checkpoint(note)
    epoch = _epoch_of(cp)
    verifier = epoch_keys.epoch_verifier(key_dir, epoch)
    cp = verify_checkpoint(note, [verifier], origin=name)
    index = cp.size - seg.first_seq - 1
    if cp.size != size or index >= len(hashes) or (index >= 0 and hashes[index] != cp.root):
        raise JournalCorruptError(
            f"the last checkpoint (size {cp.size}) does not match the journal's records "
            f"({seg.first_seq + len(hashes)} events); expected its root to be the chain hash "
            f"at seq {cp.size - 1}",
            path=seg.ckp_path,
            offset=0,
            seq=cp.size,
        )
    return note


def _epoch_of(cp: Checkpoint) -> int:
    for ext in cp.extensions:
        word, _, value = ext.partition(" ")
        if word == "epoch" and value.isdigit():
            return int(value)
    raise EvidenceError(f"checkpoint at size {cp.size} has no epoch line; expected 'epoch N'")


def _note_epoch(note: bytes) -> int:
    """The `epoch N` line of a stored note, read without parsing it (0 when absent)."""
    at = note.find(b"\nepoch ")
    if at < 0:
        return 0
    digits = note[at + 7 : note.find(b"\n", at + 7)]
    return int(digits) if digits.isdigit() else 0


def _read_note(seg: _Segment, c: _Ckp) -> bytes:
    with seg.ckp_path.open("rb") as fh:
        fh.seek(c.offset)
        raw = fh.read(c.end - c.offset)
    return raw[fmt.CKP_HEADER.size :]


def _load_index(seg: _Segment, limits: Limits) -> None:
    if seg.offsets is not None and seg.checkpoints is not None:
        return
    offsets = array("Q")
    end = fmt.SEG_HEADER.size
    with seg.path.open("rb") as fh:
        for item in fmt.iter_records(
            fh, seg.path, max_event_bytes=limits.max_event_bytes, headers_only=True
        ):
            if isinstance(item, fmt.Torn):
                break
            offsets.append(item.offset)
            end = item.end
    ckps: list[_Ckp] = []
    if seg.ckp_path.exists():
        with seg.ckp_path.open("rb") as fh:
            for c in fmt.iter_checkpoints(fh, seg.ckp_path):
                if isinstance(c, fmt.Torn):
                    break
                ckps.append(_Ckp(c.size, c.offset, c.end, _note_epoch(c.note)))
    seg.offsets, seg.checkpoints, seg.end_offset = offsets, ckps, end


def _last_event_is_stop(segs: list[_Segment], limits: Limits) -> bool:
    for seg in reversed(segs):
        _load_index(seg, limits)
        if seg.offsets:
            with seg.path.open("rb") as fh:
                links = fmt.read_range(
                    fh, seg.path, seg.offsets[-1], seg.end_offset, limits.max_event_bytes
                )
            return bool(links) and decode(links[-1].event).WhichOneof("body") == "stopped"
    return False
