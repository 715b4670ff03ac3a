-- The audit console: people's password hashes, sign-in sessions (only a hash of each
-- session id is kept) and sign-in failures for rate limiting and lockout.

CREATE TABLE console_passwords (
    name TEXT PRIMARY KEY,
    hash TEXT NOT NULL,
    changed_unix BIGINT NOT NULL
);

CREATE TABLE console_sessions (
    id_hash {bytes} PRIMARY KEY,
    name TEXT NOT NULL,
    csrf TEXT NOT NULL,
    created_unix BIGINT NOT NULL,
    seen_unix BIGINT NOT NULL,
    address TEXT NOT NULL
);
CREATE INDEX console_sessions_by_name ON console_sessions (name);

-- One row per throttled key ("name:alice", "addr:192.0.2.7"): failures in the window.
CREATE TABLE console_signin_failures (
    throttle_key TEXT PRIMARY KEY,
    failures BIGINT NOT NULL,
    window_start_unix BIGINT NOT NULL,
    locked_until_unix BIGINT NOT NULL
);

-- Agents' lifecycle records (started, stopped, journal loss, gate incidents) are rare among
-- the access events; this partial index lets the health chart find them without a scan.
CREATE INDEX console_events_lifecycle ON events (agent_id, unix_nanos) WHERE kind <> 'access';

-- Technicians' accesses counted per UTC hour, rolled up from the events incrementally (each
-- agent's cursor is the next seq to count), so a monthly statement or heat map reads a few
-- thousand rows instead of scanning every event. NULL columns are stored as ''.
CREATE TABLE console_hourly (
    client TEXT NOT NULL,
    hour_unix BIGINT NOT NULL,
    technician TEXT NOT NULL,
    area TEXT NOT NULL,
    verdict TEXT NOT NULL,
    action TEXT NOT NULL,
    rule TEXT NOT NULL,
    events BIGINT NOT NULL,
    PRIMARY KEY (client, hour_unix, technician, area, verdict, action, rule)
);
CREATE TABLE console_hourly_cursors (
    agent_id TEXT PRIMARY KEY,
    next_seq BIGINT NOT NULL
);
