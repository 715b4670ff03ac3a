-- The client access statement lists a month's denied technician accesses, oldest first.
-- Denials are a few percent of the events: through events_by_client (client, unix_nanos)
-- that query visited every event of the month until it had found its page (a row lookup
-- each, since verdict is not in that index). A partial index over the denials alone finds
-- them directly, in order, and costs ingest one index write per denial, none per allow.
CREATE INDEX console_events_denied ON events (client, unix_nanos, agent_id, seq)
    WHERE verdict = 'deny';
