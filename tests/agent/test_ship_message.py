"""The shipper's batch message carries the journal batch exactly."""

from __future__ import annotations

from agent.ship import batch_message
from protos.evidence.chain import GENESIS, extend
from protos.wire import pb


def test_batch_message_carries_every_link_in_order() -> None:
    links = extend(GENESIS, 7, [b"event %d" % i for i in range(5)])
    message = batch_message(3, GENESIS, links, b"checkpoint note")
    again = pb.AgentMessage.FromString(message.SerializeToString())
    assert again.WhichOneof("msg") == "batch"
    batch = again.batch
    assert (batch.batch_id, batch.prev_hash, batch.checkpoint) == (3, GENESIS, b"checkpoint note")
    assert [(r.seq, r.event, r.chain_hash) for r in batch.records] == [
        (k.seq, k.event, k.hash) for k in links
    ]
