"""Types of protos.evidence._native (protos/evidence/_native.c): ingest's fast path in C."""

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

class _WireRecord(Protocol):
    seq: int
    event: bytes
    chain_hash: bytes

FIELDS: tuple[tuple[str, str, int, str, str], ...]

def configure(
    record_type: type[tuple[Any, ...]],
    observation_type: type[tuple[Any, ...]],
    actions: Mapping[Any, str],  # enum number -> name (protobuf's enum ValueTypes are ints)
    verdicts: Mapping[Any, str],
    chain_domain: bytes,
    /,
) -> None: ...
def flat_rows(records: list[tuple[Any, ...]], leaves: list[bytes], /) -> list[object]: ...
def hash_pairs(pairs: bytes | bytearray | memoryview, /) -> bytes: ...
def read_access_batch(
    agent_id: str,
    client: str,
    first_seq: int,
    head: bytes,
    records: Sequence[_WireRecord],
    max_events: int,
    observe: bool,
    /,
) -> tuple[list[Any], list[Any] | None, list[Any], list[bytes], bytes] | None: ...
