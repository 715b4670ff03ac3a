-- Agents, enrolment tokens, the evidence itself, checkpoints and integrity findings.
-- Dialect-neutral SQL; {bytes} and {serial_pk} are filled in per dialect (see __init__.py).

CREATE TABLE agents (
    agent_id TEXT PRIMARY KEY,
    client TEXT NOT NULL,
    public_key {bytes} NOT NULL,
    cert_fingerprint TEXT NOT NULL,
    hostname TEXT NOT NULL,
    enrolled_unix BIGINT NOT NULL,
    revoked_unix BIGINT,
    next_seq BIGINT NOT NULL,
    head_hash {bytes} NOT NULL,
    last_checkpoint {bytes},
    last_seen_unix BIGINT,
    last_heartbeat {bytes}
);
CREATE INDEX agents_by_client ON agents (client);

-- Only the hash of an enrolment token is kept; used_unix makes it single use.
CREATE TABLE enrolment_tokens (
    token_hash {bytes} PRIMARY KEY,
    client TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    expires_unix BIGINT NOT NULL,
    used_unix BIGINT
);

-- One row per event: the agent's signed bytes verbatim, its chain hash, the RFC 6962 leaf
-- hash the server's log commits to, and the columns the console filters on.
CREATE TABLE events (
    agent_id TEXT NOT NULL REFERENCES agents (agent_id),
    seq BIGINT NOT NULL,
    event {bytes} NOT NULL,
    chain_hash {bytes} NOT NULL,
    leaf_hash {bytes} NOT NULL,
    client TEXT NOT NULL,
    unix_nanos BIGINT NOT NULL,
    kind TEXT NOT NULL,
    technician TEXT,
    account TEXT,
    area TEXT,
    action TEXT,
    verdict TEXT,
    rule TEXT,
    path TEXT,
    PRIMARY KEY (agent_id, seq)
);
CREATE INDEX events_by_time ON events (unix_nanos);
CREATE INDEX events_by_client ON events (client, unix_nanos);
CREATE INDEX events_by_technician ON events (technician, unix_nanos) WHERE technician IS NOT NULL;
CREATE INDEX events_by_area ON events (area, unix_nanos) WHERE area IS NOT NULL;
CREATE INDEX events_by_verdict ON events (verdict, unix_nanos) WHERE verdict IS NOT NULL;

-- The agent's own signed checkpoint notes, and the server's notes over its log, by size.
CREATE TABLE agent_checkpoints (
    agent_id TEXT NOT NULL REFERENCES agents (agent_id),
    size BIGINT NOT NULL,
    note {bytes} NOT NULL,
    PRIMARY KEY (agent_id, size)
);
CREATE TABLE server_checkpoints (
    agent_id TEXT NOT NULL REFERENCES agents (agent_id),
    size BIGINT NOT NULL,
    note {bytes} NOT NULL,
    PRIMARY KEY (agent_id, size)
);

CREATE TABLE integrity_events (
    id {serial_pk},
    agent_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL,
    at_unix BIGINT NOT NULL
);
CREATE INDEX integrity_events_by_agent ON integrity_events (agent_id, id);
