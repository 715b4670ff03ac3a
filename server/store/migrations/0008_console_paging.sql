-- The incidents page says how many incidents are decided. Nearly all are, and counting them
-- through the state index (or the table) read every one: 36 ms on PostgreSQL at 100k. This
-- partial index holds the decided ones alone, so the count is one index-only scan of a
-- small index; its condition is spelt as the query spells it (server/store/console.py,
-- DECIDED), since a planner matches a partial index only by the same literal terms.
CREATE INDEX ndb_incidents_decided ON ndb_incidents (client, state)
    WHERE state NOT IN ('assessing', 'open');
-- The requests page lists ended requests newest first, 50 a page, by keyset on
-- (created_unix, id): for MSP-wide people over every client, for a technician their own.
-- (One client's come through access_requests_by_created.)
CREATE INDEX access_requests_newest ON access_requests (created_unix, id);
CREATE INDEX access_requests_by_requester ON access_requests (requester, created_unix, id);
