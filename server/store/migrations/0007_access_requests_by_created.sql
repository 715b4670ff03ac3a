-- The client access statement lists the requests that touched a month: made in it, or
-- active during it. Through access_requests_by_client (client, state) that visited every
-- request the client ever made. A request's window begins within days of its making and
-- lasts at most the ceiling of a grant (server/store/access.py: REQUEST_REACH), so the
-- requests touching a month were all made in a span a little wider than it: this index
-- finds them directly, and serves the requests page's newest-first list of one client.
CREATE INDEX access_requests_by_created ON access_requests (client, created_unix);
