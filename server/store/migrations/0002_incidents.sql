-- Possible-breach incidents, their evidence links, audit trail, the detector's rule state
-- and cursors, and notification deliveries. Dialect-neutral ({serial_pk} per dialect).
-- Table names carry an ndb_ (Notifiable Data Breaches) or detect_/notify_ prefix.

CREATE TABLE ndb_incidents (
    id {serial_pk},
    dedup_key TEXT NOT NULL,
    rule TEXT NOT NULL,
    client TEXT NOT NULL,
    subject TEXT NOT NULL,
    summary TEXT NOT NULL,
    technician TEXT,
    agent_id TEXT,
    state TEXT NOT NULL,
    aware_unix DOUBLE PRECISION NOT NULL,
    first_unix DOUBLE PRECISION NOT NULL,
    last_unix DOUBLE PRECISION NOT NULL,
    areas TEXT NOT NULL,
    kinds TEXT NOT NULL,
    files BIGINT NOT NULL,
    individuals BIGINT NOT NULL,
    evidence_count BIGINT NOT NULL,
    assessment TEXT NOT NULL
);
CREATE INDEX ndb_incidents_by_key ON ndb_incidents (dedup_key, last_unix);
CREATE INDEX ndb_incidents_by_client ON ndb_incidents (client, id);
CREATE INDEX ndb_incidents_by_state ON ndb_incidents (state, aware_unix);

-- The stored events (agent_id, seq) each incident rests on.
CREATE TABLE ndb_evidence (
    incident_id BIGINT NOT NULL REFERENCES ndb_incidents (id),
    agent_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    PRIMARY KEY (incident_id, agent_id, seq)
);

-- Distinct sensitive files per incident, with the agreement's per-file estimate.
CREATE TABLE ndb_files (
    incident_id BIGINT NOT NULL REFERENCES ndb_incidents (id),
    agent_id TEXT NOT NULL,
    path TEXT NOT NULL,
    area TEXT NOT NULL,
    individuals BIGINT NOT NULL,
    PRIMARY KEY (incident_id, agent_id, path)
);

CREATE TABLE ndb_audit (
    id {serial_pk},
    incident_id BIGINT NOT NULL REFERENCES ndb_incidents (id),
    at_unix DOUBLE PRECISION NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX ndb_audit_by_incident ON ndb_audit (incident_id, id);

-- The detector's explicit rule state (key -> JSON) and how far it has read each agent.
CREATE TABLE detect_state (
    state_key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE detect_cursors (
    agent_id TEXT PRIMARY KEY,
    next_seq BIGINT NOT NULL
);

-- Webhook and email deliveries: one row per (incident, event, channel, target).
CREATE TABLE notify_deliveries (
    id {serial_pk},
    incident_id BIGINT NOT NULL REFERENCES ndb_incidents (id),
    event TEXT NOT NULL,
    channel TEXT NOT NULL,
    target TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    next_attempt_unix DOUBLE PRECISION NOT NULL,
    last_error TEXT NOT NULL,
    created_unix DOUBLE PRECISION NOT NULL,
    sent_unix DOUBLE PRECISION,
    UNIQUE (incident_id, event, channel, target)
);
CREATE INDEX notify_deliveries_due ON notify_deliveries (state, next_attempt_unix);
