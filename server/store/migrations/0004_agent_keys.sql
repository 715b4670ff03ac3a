-- The agent's forward-secure signing keys, one row per epoch the server has learnt.
-- Epoch 0 is agents.public_key (enrolled); a later epoch is learnt when a checkpoint signed
-- by the previous key covers its KeyRotated event (announced_seq), and signs from
-- valid_from (that checkpoint's size). The agent's current key is its highest epoch.
CREATE TABLE agent_keys (
    agent_id TEXT NOT NULL REFERENCES agents (agent_id),
    epoch BIGINT NOT NULL,
    public_key {bytes} NOT NULL,
    valid_from BIGINT NOT NULL,
    announced_seq BIGINT NOT NULL,
    PRIMARY KEY (agent_id, epoch)
);

-- Ingest cost: every index is one more b-tree write per event, and the events table is the
-- hot path (issue 4 asks 50k events/s). Area names are per client and a verdict has three
-- values, so both filters are served by events_by_client (client, unix_nanos) plus a row
-- filter; technician (MSP-wide) and time keep their own indexes.
DROP INDEX events_by_area;
DROP INDEX events_by_verdict;
