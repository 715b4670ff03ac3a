"""The journal's on-disk format: segment files of chained records, and their checkpoints.

A segment `{first_seq:020d}.seg` starts with a header (magic, first seq, the chain hash
before its first record) so each segment verifies on its own and old ones can be pruned.
Each record is `len u32 | seq u64 | chain hash 32 | crc32 u32 | event bytes`; the CRC tells
a torn final write (crash mid-append) from bytes changed later. Next to it,
`{first_seq:020d}.ckp` holds the signed checkpoint notes of that segment as
`len u32 | size u64 | crc32 u32 | note`. Every read is bounded: a corrupt length never
allocates more than the configured maximum.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from protos.errors import CustodesError
from protos.evidence.chain import Link, make_links
from protos.evidence.errors import EvidenceError

MAGIC = b"CUSTJSG1"
SEG_HEADER = struct.Struct(">8sQ32s")
REC_HEADER = struct.Struct(">IQ32sI")
CKP_HEADER = struct.Struct(">IQI")
MAX_NOTE_BYTES = 16 * 1024
SEG_SUFFIX = ".seg"
CKP_SUFFIX = ".ckp"


class JournalError(CustodesError):
    """Root of the journal's errors."""


class JournalCorruptError(JournalError):
    """Journal files hold bytes that are not what the agent wrote (bad input)."""

    def __init__(self, message: str, *, path: Path, offset: int, seq: int | None = None) -> None:
        super().__init__(
            message,
            hint="keep the files for investigation; `custodes agent journal verify` reports "
            "the first problem",
        )
        self.path = path
        self.offset = offset
        self.seq = seq


@dataclass(frozen=True, slots=True)
class SegmentHeader:
    """The header of one segment file."""

    first_seq: int
    prev_hash: bytes


@dataclass(frozen=True, slots=True)
class RecordAt:
    """One record read from a segment, with where it starts and ends."""

    offset: int
    end: int
    link: Link


@dataclass(frozen=True, slots=True)
class CheckpointAt:
    """One checkpoint note read from a .ckp file."""

    offset: int
    end: int
    size: int
    note: bytes


@dataclass(frozen=True, slots=True)
class Torn:
    """A final record (or note) cut short: where the good bytes end, and why."""

    good_end: int
    file_size: int
    reason: str


def segment_name(first_seq: int) -> str:
    """The file name (without suffix) of the segment starting at `first_seq`."""
    return f"{first_seq:020d}"


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    """(first_seq, path) of every segment file in `directory`, in order."""
    found: list[tuple[int, Path]] = []
    for p in directory.iterdir():
        if p.suffix == SEG_SUFFIX and p.stem.isdigit() and len(p.stem) == 20:
            found.append((int(p.stem), p))
    found.sort()
    return found


def encode_header(first_seq: int, prev_hash: bytes) -> bytes:
    """The header bytes of a new segment."""
    return SEG_HEADER.pack(MAGIC, first_seq, prev_hash)


_SEQ_HASH = struct.Struct(">Q32s")
_LEN = struct.Struct(">I")


def encode_record(seq: int, chain_hash: bytes, event: bytes) -> bytes:
    """The bytes of one record as appended to a segment (the REC_HEADER layout + event)."""
    middle = _SEQ_HASH.pack(seq, chain_hash)
    crc = zlib.crc32(event, zlib.crc32(middle))
    return b"".join((_LEN.pack(len(event)), middle, _LEN.pack(crc), event))


def encode_checkpoint(size: int, note: bytes) -> bytes:
    """The bytes of one checkpoint entry as appended to a .ckp file."""
    return CKP_HEADER.pack(len(note), size, zlib.crc32(note)) + note


def read_header(fh: BinaryIO, path: Path) -> SegmentHeader:
    """Read and check a segment's header. Raises JournalCorruptError."""
    fh.seek(0)
    raw = fh.read(SEG_HEADER.size)
    if len(raw) != SEG_HEADER.size:
        raise JournalCorruptError(
            f"segment {path.name} is {len(raw)} bytes, shorter than its {SEG_HEADER.size}-byte "
            "header",
            path=path,
            offset=0,
        )
    magic, first_seq, prev = SEG_HEADER.unpack(raw)
    if magic != MAGIC:
        raise JournalCorruptError(
            f"segment {path.name} starts with {magic!r}; expected {MAGIC!r}", path=path, offset=0
        )
    if path.stem.isdigit() and int(path.stem) != first_seq:
        raise JournalCorruptError(
            f"segment {path.name} says it starts at seq {first_seq}; its name says "
            f"{int(path.stem)}",
            path=path,
            offset=0,
        )
    return SegmentHeader(first_seq, prev)


def _rest_is_zero(fh: BinaryIO, offset: int, size: int) -> bool:
    # A crash can leave a file extended with zeros its data never reached (delayed allocation).
    fh.seek(offset)
    remaining = size - offset
    while remaining > 0:
        chunk = fh.read(min(remaining, 1 << 20))
        if not chunk or chunk.count(0) != len(chunk):
            return False
        remaining -= len(chunk)
    return True


def iter_records(
    fh: BinaryIO,
    path: Path,
    *,
    max_event_bytes: int,
    start: int = SEG_HEADER.size,
    stop: int | None = None,
    headers_only: bool = False,
    strict: bool = False,
) -> Iterator[RecordAt | Torn]:
    """Yield the records of a segment from byte `start` up to `stop` (default: end of file).

    A record cut short at the very end, or a bad final record followed only by zeros, is
    yielded as `Torn` and ends the iteration. A bad record with more bytes after it raises
    JournalCorruptError. With `strict`, a whole final record whose checksum fails is an
    error too (a crash cuts a record short; it does not change bytes in place). With
    `headers_only` the event bytes are skipped (Link.event = b"") and the CRC is not
    checked: for building an index quickly.
    """
    size = os.fstat(fh.fileno()).st_size if stop is None else stop
    offset = start
    fh.seek(offset)
    while offset < size:
        raw = fh.read(REC_HEADER.size)
        if len(raw) < REC_HEADER.size:
            yield Torn(offset, size, f"a record header cut short at {len(raw)} bytes")
            return
        length, seq, chain_hash, crc = REC_HEADER.unpack(raw)
        end = offset + REC_HEADER.size + length
        if length > max_event_bytes:
            if _rest_is_zero(fh, offset, size):
                yield Torn(offset, size, "zeros where a record should be")
                return
            raise JournalCorruptError(
                f"segment {path.name}: record at byte {offset} claims {length} bytes; expected "
                f"at most {max_event_bytes}",
                path=path,
                offset=offset,
            )
        if end > size:
            yield Torn(offset, size, f"a record of {length} bytes cut short at {size - offset}")
            return
        if headers_only:
            fh.seek(end)
            yield RecordAt(offset, end, Link(seq, b"", chain_hash))
            offset = end
            continue
        event = fh.read(length)
        expected = zlib.crc32(event, zlib.crc32(raw[4:44]))
        if expected != crc:
            if (end == size and not strict) or _rest_is_zero(fh, offset, size):
                yield Torn(offset, size, "a final record whose checksum does not match")
                return
            raise JournalCorruptError(
                f"segment {path.name}: record seq {seq} at byte {offset} does not match its "
                "checksum; expected the bytes the agent wrote",
                path=path,
                offset=offset,
                seq=seq,
            )
        yield RecordAt(offset, end, Link(seq, event, chain_hash))
        offset = end
        fh.seek(offset)


def iter_checkpoints(
    fh: BinaryIO, path: Path, *, strict: bool = False
) -> Iterator[CheckpointAt | Torn]:
    """Yield the checkpoint notes of a .ckp file; a torn final entry ends it as `Torn`.

    `strict` as for `iter_records`.
    """
    size = os.fstat(fh.fileno()).st_size
    offset = 0
    fh.seek(0)
    while offset < size:
        raw = fh.read(CKP_HEADER.size)
        if len(raw) < CKP_HEADER.size:
            yield Torn(offset, size, "a checkpoint header cut short")
            return
        length, ckp_size, crc = CKP_HEADER.unpack(raw)
        end = offset + CKP_HEADER.size + length
        if end > size:
            yield Torn(offset, size, "a checkpoint note cut short")
            return
        if length > MAX_NOTE_BYTES:
            if _rest_is_zero(fh, offset, size):
                yield Torn(offset, size, "zeros where a checkpoint should be")
                return
            raise JournalCorruptError(
                f"{path.name}: checkpoint at byte {offset} claims {length} bytes; expected at "
                f"most {MAX_NOTE_BYTES}",
                path=path,
                offset=offset,
            )
        note = fh.read(length)
        if zlib.crc32(note) != crc:
            if (end == size and not strict) or _rest_is_zero(fh, offset, size):
                yield Torn(offset, size, "a final checkpoint whose checksum does not match")
                return
            raise JournalCorruptError(
                f"{path.name}: checkpoint at byte {offset} does not match its checksum",
                path=path,
                offset=offset,
            )
        yield CheckpointAt(offset, end, ckp_size, note)
        offset = end


def read_range(fh: BinaryIO, path: Path, start: int, stop: int, max_event_bytes: int) -> list[Link]:
    """The records between byte offsets `start` and `stop`, which must all be whole.

    One read of the whole range, parsed in memory (the shipper reads thousands of records
    per batch). Raises JournalCorruptError for anything but whole records with good CRCs.
    """
    fh.seek(start)
    data = fh.read(stop - start)
    triples: list[tuple[int, bytes, bytes]] = []
    unpack, crc32, header = REC_HEADER.unpack_from, zlib.crc32, REC_HEADER.size
    size, offset = len(data), 0
    problem = "" if size == stop - start else f"the file ends {stop - start - size} bytes early"
    while not problem and offset < size:
        if size - offset < header:
            problem = f"a record header cut short at {size - offset} bytes"
            break
        length, seq, chain_hash, crc = unpack(data, offset)
        end = offset + header + length
        if length > max_event_bytes:
            problem = f"a record of {length} bytes, expected at most {max_event_bytes}"
        elif end > size:
            problem = f"a record of {length} bytes cut short at {size - offset}"
        else:
            event = data[offset + header : end]
            if crc32(event, crc32(data[offset + 4 : offset + 44])) != crc:
                problem = f"record seq {seq} does not match its checksum"
            else:
                triples.append((seq, event, chain_hash))
                offset = end
    if problem:
        raise JournalCorruptError(
            f"segment {path.name}: {problem} at byte {start + offset}, inside the "
            "checkpointed part",
            path=path,
            offset=start + offset,
        )
    try:
        return make_links(triples)
    except EvidenceError as exc:
        raise JournalCorruptError(
            f"segment {path.name}: {exc}", path=path, offset=start, seq=exc.seq
        ) from exc
