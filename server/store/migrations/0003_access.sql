-- Just-in-time access: people (identities with a role), agreement versions pushed to agents,
-- access requests with their approvals and every state change. Dialect-neutral SQL.

-- A person enrolled with a person certificate. client NULL: an MSP-wide person.
-- technician: the agreement technician id this person is (technicians only).
CREATE TABLE people (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    client TEXT,
    technician TEXT,
    created_unix BIGINT NOT NULL,
    removed_unix BIGINT
);

-- Every agreement version applied for a client; the highest id per client is current.
CREATE TABLE agreements (
    id {serial_pk},
    client TEXT NOT NULL,
    version TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    yaml {bytes} NOT NULL,
    applied_unix BIGINT NOT NULL,
    applied_by TEXT NOT NULL
);
CREATE UNIQUE INDEX agreements_by_version ON agreements (client, version);
CREATE INDEX agreements_by_client ON agreements (client, id);

-- A request, and once approved (or break-glass) the grant it became (same id).
CREATE TABLE access_requests (
    id TEXT PRIMARY KEY,
    client TEXT NOT NULL,
    technician TEXT NOT NULL,
    requester TEXT NOT NULL,
    area TEXT NOT NULL,
    actions TEXT NOT NULL,
    start_unix BIGINT NOT NULL,
    end_unix BIGINT NOT NULL,
    duration_seconds BIGINT NOT NULL,
    ticket TEXT NOT NULL,
    reason TEXT NOT NULL,
    break_glass INTEGER NOT NULL,
    state TEXT NOT NULL,
    created_unix BIGINT NOT NULL,
    pending_until_unix BIGINT NOT NULL,
    approvals_needed INTEGER NOT NULL,
    approver_roles TEXT NOT NULL,
    agreement_version TEXT NOT NULL,
    signed_grant {bytes},
    revocation {bytes}
);
CREATE INDEX access_requests_by_client ON access_requests (client, state);
CREATE INDEX access_requests_by_state ON access_requests (state, end_unix);

CREATE TABLE access_approvals (
    request_id TEXT NOT NULL REFERENCES access_requests (id),
    approver TEXT NOT NULL,
    role TEXT NOT NULL,
    at_unix BIGINT NOT NULL,
    PRIMARY KEY (request_id, approver)
);

-- The audit trail: requested, approved (by whom), denied, cancelled, revoked, expired.
CREATE TABLE access_history (
    id {serial_pk},
    request_id TEXT NOT NULL REFERENCES access_requests (id),
    state TEXT NOT NULL,
    by_person TEXT NOT NULL,
    at_unix BIGINT NOT NULL,
    why TEXT NOT NULL
);
CREATE INDEX access_history_by_request ON access_history (request_id, id);
