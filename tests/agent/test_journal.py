"""The journal: chained, group-committed, checkpoint-signed, recoverable, verifiable."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import segments as fmt
from agent.config import Limits
from agent.events import AgentStoppedRecord, Origin, decode
from agent.journal import Journal
from agent.keys import epoch_verifier
from agent.records import AccessRecord, Attribution
from agent.verify import latest_checkpoint, verify_journal
from policies.model import Action, Decision, SubjectKind, Verdict
from protos.evidence.chain import verify_links
from protos.evidence.note import verify_checkpoint
from protos.wire import pb

ORIGIN = Origin("agent-1", "test-clinic", "boot-1")
NAME = "custodes.agent/test-clinic/agent-1"
WHO = Attribution(pid=4242, uid=1001, loginuid=1001, account="ctest", login_account="ctest")
DENY = Decision(
    Verdict.DENY, "out of scope", "out_of_scope", SubjectKind.TECHNICIAN, "tech1", area="records"
)
ALLOW = Decision(Verdict.ALLOW, "in scope", "in_scope", SubjectKind.TECHNICIAN, "tech1")


def access(i: int, decision: Decision = ALLOW) -> AccessRecord:
    return AccessRecord(time.time_ns(), WHO, f"/srv/records/{i}.pdf", Action.READ, decision, True)


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "journal", tmp_path / "keys"


@pytest.fixture
def open_journal(dirs: tuple[Path, Path]) -> Iterator[Callable[..., Journal]]:
    opened: list[Journal] = []

    def make(limits: Limits | None = None, **kw: object) -> Journal:
        j = Journal.open(dirs[0], ORIGIN, dirs[1], limits, **kw)  # type: ignore[arg-type]
        opened.append(j)
        return j

    yield make
    for j in opened:
        j.close()


def verify(dirs: tuple[Path, Path]):  # type: ignore[no-untyped-def]
    return verify_journal(dirs[0], epoch_verifier(dirs[1], 0), origin=NAME)


def events(journal_dir: Path) -> list[pb.Event]:
    out: list[pb.Event] = []
    for _, path in fmt.list_segments(journal_dir):
        with path.open("rb") as fh:
            for item in fmt.iter_records(fh, path, max_event_bytes=1 << 20):
                if isinstance(item, fmt.RecordAt):
                    out.append(decode(item.link.event))
    return out


def test_appended_events_chain_and_verify(
    open_journal: Callable[..., Journal], dirs: tuple[Path, Path]
) -> None:
    j = open_journal()
    for i in range(500):
        j.record(access(i))
    assert j.flush()
    assert j.next_seq == 500
    assert j.checkpointed == 500
    j.close()
    report = verify(dirs)
    assert report.ok, report.problem
    assert (report.first_seq, report.next_seq, report.signed_size) == (0, 500, 500)


def test_reopen_continues_the_chain_and_knows_the_clean_stop(
    open_journal: Callable[..., Journal], dirs: tuple[Path, Path]
) -> None:
    j = open_journal()
    j.record(access(0))
    j.note(AgentStoppedRecord("test"))
    j.close()
    j2 = open_journal()
    assert j2.recovery.previous_run_clean
    assert j2.next_seq == 2
    j2.record(access(1))
    j2.flush()
    j2.close()
    j3 = open_journal()
    assert not j3.recovery.previous_run_clean  # no AgentStopped at the end of run 2
    j3.close()
    report = verify(dirs)
    assert report.ok, report.problem
    assert report.next_seq == 3


def test_torn_final_record_is_truncated_and_reported(
    open_journal: Callable[..., Journal], dirs: tuple[Path, Path]
) -> None:
    j = open_journal()
    for i in range(10):
        j.record(access(i))
    j.flush()
    j.close()
    (_, seg), *_ = fmt.list_segments(dirs[0])
    whole = fmt.encode_record(10, bytes(32), b"x" * 200)
    with seg.open("ab") as fh:
        fh.write(whole[:100])  # a crash in the middle of an append
    assert "torn final record" in verify(dirs).notes
    j2 = open_journal()
    assert "truncated a torn final record at seq 10" in j2.recovery.note
    j2.record(access(10))
    j2.flush()
    j2.close()
    report = verify(dirs)
    assert report.ok, report.problem
    assert report.next_seq == 11


def test_every_group_commit_ends_with_a_checkpoint_on_the_chain_head(
    open_journal: Callable[..., Journal],
) -> None:
    j = open_journal(Limits(group_events=64))
    for i in range(1000):
        j.record(access(i))
        if i % 97 == 0:
            j.flush()
    j.flush()
    seq, prev, batches = 0, b"\0" * 32, 0
    while (batch := j.read_batch(seq, max_events=1, max_bytes=1)) is not None:
        cp = verify_checkpoint(batch.checkpoint, [j.verifier()], origin=NAME)
        assert batch.prev_hash == prev
        head = verify_links(batch.prev_hash, seq, batch.links)
        assert cp.root == head
        assert cp.size == batch.links[-1].seq + 1
        assert f"boot {ORIGIN.boot_id}" in cp.extensions
        seq, prev, batches = cp.size, head, batches + 1
    assert seq == 1000
    assert batches == j.stats().commits  # one batch per commit: every commit was signed


def test_read_batch_takes_the_furthest_checkpoint_within_bounds(
    open_journal: Callable[..., Journal],
) -> None:
    j = open_journal()
    for n in range(5):
        for i in range(10):
            j.record(access(n * 10 + i))
        j.flush()
    batch = j.read_batch(0, max_events=35, max_bytes=1 << 20)
    assert batch is not None
    assert len(batch.links) == 30
    assert j.read_batch(50, 100, 1 << 20) is None


def _rewrite_first_note(ckp: Path, change: Callable[[bytearray], None]) -> None:
    """Change the first checkpoint's note and fix its checksum, as a forger would."""
    data = bytearray(ckp.read_bytes())
    length, size, _ = fmt.CKP_HEADER.unpack_from(data, 0)
    note = bytearray(data[fmt.CKP_HEADER.size : fmt.CKP_HEADER.size + length])
    change(note)
    data[: fmt.CKP_HEADER.size + length] = fmt.encode_checkpoint(size, bytes(note))
    ckp.write_bytes(bytes(data))


def _swap_char(buf: bytearray, at: int) -> None:
    buf[at] = ord("A") if buf[at] != ord("A") else ord("B")


@pytest.mark.parametrize(
    ("what", "expected"),
    [
        ("event", "does not match its checksum"),
        ("hash", "does not match its checksum"),
        ("last-event", "does not match its checksum"),
        ("checkpoint-bytes", "does not match its checksum"),
        ("signature", "does not verify"),
        ("root", "does not verify"),
    ],
)
def test_a_flipped_byte_is_found_by_verify(
    open_journal: Callable[..., Journal], dirs: tuple[Path, Path], what: str, expected: str
) -> None:
    j = open_journal()
    for i in range(20):
        j.record(access(i))
        if i == 9:
            j.flush()
    j.flush()
    j.close()
    (_, seg), *_ = fmt.list_segments(dirs[0])
    ckp = seg.with_suffix(fmt.CKP_SUFFIX)
    with seg.open("rb") as fh:
        recs = list(fmt.iter_records(fh, seg, max_event_bytes=1 << 20))
    r5 = recs[5]
    assert isinstance(r5, fmt.RecordAt)
    if what in ("event", "hash", "last-event"):
        data = bytearray(seg.read_bytes())
        at = {"event": r5.end - 3, "hash": r5.offset + 14, "last-event": len(data) - 2}[what]
        data[at] ^= 0x01
        seg.write_bytes(bytes(data))
    elif what == "checkpoint-bytes":
        data = bytearray(ckp.read_bytes())
        data[-10] ^= 0x01
        ckp.write_bytes(bytes(data))
    elif what == "signature":
        _rewrite_first_note(ckp, lambda note: _swap_char(note, len(note) - 10))
    else:  # the root line (third line) of the note
        _rewrite_first_note(ckp, lambda note: _swap_char(note, note.index(b"=\n") - 2))
    report = verify(dirs)
    assert not report.ok
    assert expected in report.problem


def test_a_recomputed_checksum_does_not_hide_a_changed_event(
    open_journal: Callable[..., Journal], dirs: tuple[Path, Path]
) -> None:
    j = open_journal()
    for i in range(5):
        j.record(access(i))
    j.flush()
    j.close()
    (_, seg), *_ = fmt.list_segments(dirs[0])
    with seg.open("rb") as fh:
        recs = list(fmt.iter_records(fh, seg, max_event_bytes=1 << 20))
    r2 = recs[2]
    assert isinstance(r2, fmt.RecordAt)
    forged = bytearray(r2.link.event)
    forged[-1] ^= 0x01
    data = seg.read_bytes()
    new = fmt.encode_record(r2.link.seq, r2.link.hash, bytes(forged))
    seg.write_bytes(data[: r2.offset] + new + data[r2.end :])
    report = verify(dirs)
    assert not report.ok
    assert "seq 2" in report.problem
    assert "modified" in report.problem


def test_truncated_journal_is_detected(
    open_journal: Callable[..., Journal], dirs: tuple[Path, Path]
) -> None:
    j = open_journal()
    for i in range(10):
        j.record(access(i))
    j.flush()
    j.close()
    (_, seg), *_ = fmt.list_segments(dirs[0])
    with seg.open("rb") as fh:
        recs = list(fmt.iter_records(fh, seg, max_event_bytes=1 << 20))
    last = recs[-1]
    assert isinstance(last, fmt.RecordAt)
    os.truncate(seg, last.offset)  # a whole, checkpointed record removed
    report = verify(dirs)
    assert not report.ok
    assert "truncated" in report.problem
    with pytest.raises(fmt.JournalCorruptError):
        Journal.open(dirs[0], ORIGIN, dirs[1])


def test_deny_callback_runs_only_after_the_sync(open_journal: Callable[..., Journal]) -> None:
    synced: list[int] = []
    seen: list[tuple[bool, list[int], int]] = []
    done = threading.Event()

    def sync(fd: int) -> None:
        os.fdatasync(fd)
        synced.append(os.fstat(fd).st_size)

    j = open_journal(sync=sync)
    for i in range(50):
        j.record(access(i))

    def on_durable(ok: bool) -> None:
        seen.append((ok, list(synced), j.checkpointed))
        done.set()

    j.record(access(50, DENY), on_durable)
    assert done.wait(10)
    ok, synced_then, checkpointed = seen[0]
    assert ok
    assert synced_then  # the segment (and the checkpoint) were synced before the callback
    assert checkpointed == 51  # the deny is covered by a signed checkpoint


def test_queue_overflow_is_counted_and_journaled(
    open_journal: Callable[..., Journal], dirs: tuple[Path, Path]
) -> None:
    gate = threading.Event()
    stuck = threading.Event()

    def slow_sync(fd: int) -> None:
        stuck.set()
        gate.wait(10)  # a slow disk: the writer sits in fsync
        os.fdatasync(fd)

    j = open_journal(Limits(queue_events=16, group_events=4), sync=slow_sync)
    j.record(access(0))
    assert stuck.wait(10)
    results: list[bool] = []
    for i in range(1, 200):
        j.record(access(i, DENY), results.append)
    dropped = j.stats().dropped
    assert dropped >= 200 - 1 - 16 - 4
    assert results.count(False) == dropped  # a dropped deny is answered, never waited for
    gate.set()
    assert j.flush()
    j.close()
    losses = [e.loss for e in events(dirs[0]) if e.WhichOneof("body") == "loss"]
    assert sum(x.lost for x in losses) == dropped
    assert all(x.cause == "queue overflow" for x in losses)
    assert verify(dirs).ok


def test_segments_rotate_prune_and_batches_stay_inside_one(
    open_journal: Callable[..., Journal], dirs: tuple[Path, Path]
) -> None:
    j = open_journal(Limits(segment_bytes=4096, group_events=8))
    for i in range(200):
        j.record(access(i))
        if i % 8 == 7:
            j.flush()
    j.flush()
    segs = fmt.list_segments(dirs[0])
    assert len(segs) > 3
    seq = 0
    while (batch := j.read_batch(seq, 1000, 1 << 20)) is not None:
        seq = batch.links[-1].seq + 1
    assert seq == 200
    second = segs[2][0]
    assert j.prune_below(second) == 2
    assert j.first_seq == second
    with pytest.raises(fmt.JournalError):
        j.read_batch(0, 10, 1 << 20)
    j.close()
    report = verify(dirs)
    assert report.ok, report.problem
    assert report.first_seq == second


def test_key_rotation_is_chained_and_the_old_key_is_erased(
    open_journal: Callable[..., Journal], dirs: tuple[Path, Path]
) -> None:
    j = open_journal()
    j.record(access(0))
    j.flush()
    j.rotate_key()
    j.flush()
    j.record(access(1))
    j.flush()
    assert j.epoch == 1
    assert not (dirs[1] / "epoch-0.key").exists()
    assert b"epoch 1" in j.latest_checkpoint()
    j.close()
    report = verify(dirs)
    assert report.ok, report.problem
    assert report.epochs == 1
    j2 = open_journal()
    assert j2.epoch == 1


def test_latest_checkpoint_is_readable_without_the_daemon(
    open_journal: Callable[..., Journal], dirs: tuple[Path, Path]
) -> None:
    j = open_journal()
    j.record(access(0))
    j.flush()
    note = j.latest_checkpoint()
    j.close()
    assert latest_checkpoint(dirs[0]) == note
    assert verify_checkpoint(note, [epoch_verifier(dirs[1], 0)], origin=NAME).size == 1


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=6))
def test_any_pattern_of_commits_and_restarts_verifies(
    tmp_path_factory: pytest.TempPathFactory, groups: list[int]
) -> None:
    base = tmp_path_factory.mktemp("prop")
    total = 0
    for n in groups:
        j = Journal.open(base / "j", ORIGIN, base / "k", Limits(group_events=7))
        for i in range(n):
            j.record(access(total + i, DENY if i % 3 == 0 else ALLOW))
        j.flush()
        j.close()
        total += n
    report = verify_journal(base / "j", epoch_verifier(base / "k", 0), origin=NAME)
    assert report.next_seq == total
    if total:
        assert report.ok, report.problem
        assert report.denies == sum((n + 2) // 3 for n in groups)


def test_a_corrupt_length_is_refused_without_reading_it(
    open_journal: Callable[..., Journal], dirs: tuple[Path, Path]
) -> None:
    j = open_journal()
    for i in range(3):
        j.record(access(i))
    j.flush()
    j.close()
    (_, seg), *_ = fmt.list_segments(dirs[0])
    data = bytearray(seg.read_bytes())
    first = fmt.SEG_HEADER.size
    data[first : first + 4] = (0xFFFFFFF0).to_bytes(4, "big")  # ~4 GiB claimed
    seg.write_bytes(bytes(data))
    report = verify(dirs)
    assert not report.ok
    assert "claims 4294967280 bytes" in report.problem
    with pytest.raises(fmt.JournalCorruptError, match="claims"):
        Journal.open(dirs[0], ORIGIN, dirs[1])


def test_a_loss_record_never_makes_a_group_larger_than_group_events(
    open_journal: Callable[..., Journal],
) -> None:
    gate = threading.Event()
    stuck = threading.Event()

    def slow_sync(fd: int) -> None:
        stuck.set()
        gate.wait(10)
        os.fdatasync(fd)

    j = open_journal(Limits(queue_events=16, group_events=4), sync=slow_sync)
    j.record(access(0))
    assert stuck.wait(10)
    for i in range(1, 100):  # a full queue (then drops): the next group carries a loss record
        j.record(access(i))
    assert j.stats().dropped > 0
    gate.set()
    assert j.flush()
    seq, sizes = 0, []
    while (batch := j.read_batch(seq, 4, 1 << 20)) is not None:
        sizes.append(len(batch.links))
        seq = batch.links[-1].seq + 1
    assert seq == j.checkpointed
    assert max(sizes) <= 4  # the server refuses batches above its max_batch_events


@pytest.mark.parametrize("where", ["event", "header"])
def test_read_batch_refuses_a_changed_byte_in_the_checkpointed_part(
    open_journal: Callable[..., Journal], dirs: tuple[Path, Path], where: str
) -> None:
    j = open_journal()
    for i in range(20):
        j.record(access(i))
    assert j.flush()
    whole = j.read_batch(0, 100, 1 << 20)
    assert whole is not None
    assert len(whole.links) == 20
    _, path = fmt.list_segments(dirs[0])[0]
    data = bytearray(path.read_bytes())
    # the 5th record: skip the segment header and four whole records
    offset = fmt.SEG_HEADER.size
    for _ in range(4):
        offset += fmt.REC_HEADER.size + fmt.REC_HEADER.unpack_from(data, offset)[0]
    data[offset + (fmt.REC_HEADER.size + 3 if where == "event" else 6)] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(fmt.JournalCorruptError, match="checkpointed part"):
        j.read_batch(0, 100, 1 << 20)
