"""server/store/access.py on SQLite and PostgreSQL (the `store` fixture runs both)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from policies.model import Action
from policies.schema import JIT_MAX_DURATION_CEILING
from server import access
from server.access import Approval, Change, Person, Request, Role, State
from server.store import Store, StoreConflictError
from server.store.access import REQUEST_REACH, AccessStore, _request_filter, ended_filter

T0 = 1_700_000_000


def request(rid: str = "jit-1", **changes: object) -> Request:
    base = Request(
        id=rid,
        client="clinic",
        technician="tech1",
        requester="tech1",
        area="records",
        actions=(Action.READ, Action.LIST),
        start_unix=0,
        end_unix=0,
        duration_seconds=7200,
        ticket="T-1",
        reason="printer",
        break_glass=False,
        state=State.PENDING,
        created_unix=T0,
        pending_until_unix=T0 + 3600,
        approvals_needed=1,
        approver_kinds=("client_manager",),
        agreement_version="v1",
        history=(Change("requested", "tech1", T0, "printer"),),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def approved(req: Request, at: int = T0 + 10) -> Request:
    return replace(
        req,
        state=State.APPROVED,
        start_unix=at,
        end_unix=at + 7200,
        approvals=(Approval("mgr", "client_manager", at),),
        history=(*req.history, Change("approval", "mgr", at), Change("approved", "mgr", at)),
    )


def test_people_round_trip_and_names_are_unique(store: Store) -> None:
    s = AccessStore(store)
    s.add_person(Person("tech1", Role.TECHNICIAN, technician="tech1"), T0)
    s.add_person(Person("mgr", Role.APPROVER, client="clinic"), T0)
    s.add_person(Person("other", Role.AUDITOR, client="elsewhere"), T0)
    assert s.get_person("mgr") == Person("mgr", Role.APPROVER, client="clinic")
    assert s.get_person("nobody") is None
    assert [p.name for p in s.list_people("clinic")] == ["mgr", "tech1"]
    with pytest.raises(StoreConflictError):
        s.add_person(Person("mgr", Role.ADMIN), T0)


def test_agreement_versions_are_kept_and_a_changed_version_refused(store: Store) -> None:
    s = AccessStore(store)
    row, new = s.add_agreement("clinic", "v1", "aa", b"one", at_unix=T0, by="admin")
    assert new
    assert (row.version, row.yaml) == ("v1", b"one")
    _, again = s.add_agreement("clinic", "v1", "aa", b"one", at_unix=T0 + 1, by="admin")
    assert not again
    with pytest.raises(StoreConflictError):
        s.add_agreement("clinic", "v1", "bb", b"other", at_unix=T0 + 2, by="admin")
    s.add_agreement("clinic", "v2", "cc", b"two", at_unix=T0 + 3, by="admin")
    current = s.current_agreement("clinic")
    assert current is not None
    assert current.version == "v2"
    assert s.agreement_heads() == {"clinic": current.id}
    assert [r.version for r in s.list_agreements()] == ["v1", "v2"]
    assert s.current_agreement("elsewhere") is None


def test_a_request_round_trips_with_history_and_approvals(store: Store) -> None:
    s = AccessStore(store)
    before = request()
    s.add_request(before)
    after = approved(before)
    s.save_request(before, after, signed_grant=b"signed")
    stored = s.get_request("jit-1")
    assert stored is not None
    assert stored.request == after
    assert stored.signed_grant == b"signed"
    assert stored.revocation is None


def test_a_stale_save_is_a_conflict(store: Store) -> None:
    s = AccessStore(store)
    before = request()
    s.add_request(before)
    s.save_request(before, approved(before))
    denied = replace(
        before, state=State.DENIED, history=(*before.history, Change("denied", "mgr", T0 + 20))
    )
    with pytest.raises(StoreConflictError):
        s.save_request(before, denied)  # someone approved it meanwhile
    stored = s.get_request("jit-1")
    assert stored is not None
    assert stored.request.state is State.APPROVED


def test_listing_due_live_and_revoked(store: Store) -> None:
    s = AccessStore(store)
    lapsing = request("jit-a")
    s.add_request(lapsing)
    live = request("jit-b", created_unix=T0 + 1)
    s.add_request(live)
    s.save_request(live, approved(live))
    gone = request("jit-c", created_unix=T0 + 2)
    s.add_request(gone)
    s.save_request(gone, approved(gone))
    revoked = access.revoke(approved(gone), Person("mgr", Role.APPROVER), "done", T0 + 30)
    s.save_request(approved(gone), revoked, revocation=b"rev")

    assert [r.request.id for r in s.live_grants("clinic", T0 + 100)] == ["jit-b"]
    assert [r.request.id for r in s.recent_revocations("clinic", T0 + 100)] == ["jit-c"]
    assert [r.request.id for r in s.due(T0 + 3600)] == ["jit-a"]
    assert {r.request.id for r in s.due(T0 + 10 + 7200)} == {"jit-a", "jit-b"}
    assert [r.request.id for r in s.list_requests(states=(State.PENDING,))] == ["jit-a"]
    assert [r.request.id for r in s.list_requests(client="clinic")] == ["jit-c", "jit-b", "jit-a"]
    assert s.list_requests(requester="someone-else") == []


def test_requests_touching_a_window_were_created_in_it_or_active_during_it(store: Store) -> None:
    s = AccessStore(store)
    lo, hi = T0 + 10_000, T0 + 20_000
    rows = {
        # created before the window, its grant active into it
        "active-into": request("active-into", start_unix=lo - 100, end_unix=lo + 1),
        # created before, its grant over exactly as the window begins
        "ended-at-start": request("ended-at-start", start_unix=lo - 100, end_unix=lo),
        # created before, its grant starting exactly as the window ends
        "starts-at-end": request("starts-at-end", start_unix=hi, end_unix=hi + 100),
        # created before, never started (denied, expired)
        "never-started": request("never-started", created_unix=lo - 1),
        "created-in": request("created-in", created_unix=lo),
        "created-at-end": request("created-at-end", created_unix=hi),
        "other-client": request("other-client", client="other", created_unix=lo + 1),
    }
    for req in rows.values():
        s.add_request(req)
    found = s.list_requests(client="clinic", touching=(lo, hi))
    assert [r.request.id for r in found] == ["created-in", "active-into"]  # newest first
    assert s.count_requests(client="clinic", touching=(lo, hi)) == 2
    assert s.count_requests(touching=(lo, hi)) == 3
    assert s.count_requests(client="clinic") == 6


def test_newer_requests_beyond_the_limit_do_not_hide_an_older_window(store: Store) -> None:
    s = AccessStore(store)
    older = request("older", created_unix=T0)
    s.add_request(older)
    s.save_request(older, approved(older))
    for i in range(12):
        s.add_request(request(f"newer-{i:02d}", created_unix=T0 + 86_400 + i))
    assert [r.request.id for r in s.list_requests(client="clinic", limit=5)][-1] == "newer-07"
    window = (T0, T0 + 3600)
    found = s.list_requests(client="clinic", touching=window, limit=5)
    assert [r.request.id for r in found] == ["older"]
    assert found[0].request.approvals == (Approval("mgr", "client_manager", T0 + 10),)


def test_a_grant_starting_as_late_and_lasting_as_long_as_allowed_still_touches_its_window(
    store: Store,
) -> None:
    s = AccessStore(store)
    start = T0 + int(access.MAX_LEAD.total_seconds())  # the latest start a request may ask for
    end = start + int(JIT_MAX_DURATION_CEILING.total_seconds())  # the longest grant
    made = request("far-ahead", created_unix=T0)
    s.add_request(made)
    s.save_request(made, replace(approved(made, at=T0 + 10), start_unix=start, end_unix=end))
    lo = end - 1
    assert lo - T0 <= REQUEST_REACH  # the reach the window's search is bounded by
    found = s.list_requests(client="clinic", touching=(lo, lo + 86_400))
    assert [r.request.id for r in found] == ["far-ahead"]
    assert s.count_requests(client="clinic", touching=(lo, lo + 86_400)) == 1


def _plan(s: AccessStore, store: Store, sql: str, params: list[object]) -> str:
    """The query plan of `sql` as text (PostgreSQL told not to prefer a scan of a tiny table)."""
    with s._tx(write=False) as cur:
        if store.dialect == "postgres":
            s._exec(cur, "SET LOCAL enable_seqscan = off")
            s._exec(cur, "EXPLAIN " + sql, params)
        else:
            s._exec(cur, "EXPLAIN QUERY PLAN " + sql, params)
        return "\n".join(str(r[-1]) for r in cur.fetchall())


def test_the_statements_window_is_searched_through_the_client_and_creation_index(
    store: Store,
) -> None:
    s = AccessStore(store)
    for i in range(20):
        s.add_request(request(f"r-{i:02d}", created_unix=T0 + i * 86_400))
    clause, params = _request_filter("clinic", None, (), (T0 + 86_400 * 5, T0 + 86_400 * 10))
    listing = f"SELECT id FROM access_requests{clause} ORDER BY created_unix DESC, id LIMIT 200"
    counting = f"SELECT COUNT(*) FROM access_requests{clause}"
    for sql in (listing, counting):
        plan = _plan(s, store, sql, params)
        # by client and creation, or (every request here being the one client's) by
        # creation alone (access_requests_newest): either way the window bounds the search
        assert "access_requests_by_created" in plan or "access_requests_newest" in plan, plan
        # the window bounds the index search itself, not a filter after it
        lines = plan.splitlines()
        if store.dialect == "postgres":
            assert any("Index Cond" in x and "created_unix >=" in x for x in lines), plan
        else:
            assert any("created_unix>? AND created_unix<?" in x for x in lines), plan


def _ended_world(s: AccessStore) -> dict[str, Request]:
    """Requests of two clients by two requesters, ended and live, some made at one instant."""
    made: dict[str, Request] = {}
    for i in range(14):
        client = "clinic" if i % 3 else "other"
        by = "tech1" if i % 2 else "tech2"
        created = T0 + (i // 2) * 100  # pairs made at the same second: the id breaks the tie
        req = request(f"r-{i:02d}", client=client, requester=by, created_unix=created)
        s.add_request(req)
        if i % 7 == 3:  # pending, or approved and still live at T0 + 5000: not ended
            if i == 10:
                s.save_request(req, approved(req, at=T0 + 3000))
        elif i % 4 == 0:  # approved, its window over by T0 + 5000
            s.save_request(req, approved(req, at=created))
        else:
            s.save_request(req, replace(req, state=State.DENIED))
        stored = s.get_request(req.id)
        assert stored is not None
        made[req.id] = stored.request
    return made


def _page_through(s: AccessStore, size: int, **scope: str) -> list[str]:
    seen: list[str] = []
    after = None
    for _ in range(30):
        page = s.ended_requests(now_unix=T0 + 5000, after=after, limit=size, **scope)
        seen += [r.request.id for r in page]
        if len(page) < size:
            return seen
        after = (page[-1].request.created_unix, page[-1].request.id)
    raise AssertionError("the pages did not end")


@pytest.mark.parametrize("size", [1, 3, 50])
@pytest.mark.parametrize("scope", [{}, {"client": "clinic"}, {"requester": "tech1"}])
def test_ended_requests_page_newest_first_each_once(
    store: Store, size: int, scope: dict[str, str]
) -> None:
    s = AccessStore(store)
    made = _ended_world(s)
    now = T0 + 5000
    ended = [
        r
        for r in made.values()
        if r.state in access.ENDED or (r.state is State.APPROVED and r.end_unix <= now)
    ]
    wanted = sorted(
        (r for r in ended if all(getattr(r, k) == v for k, v in scope.items())),
        key=lambda r: (r.created_unix, r.id),
        reverse=True,
    )
    assert len(wanted) >= 3
    assert _page_through(s, size, **scope) == [r.id for r in wanted]
    live = s.live_requests(now_unix=now, **scope)
    assert {r.request.id for r in live} == {
        r.id
        for r in made.values()
        if (r.is_live(now) or (r.state is State.PENDING and now < r.pending_until_unix))
        and all(getattr(r, k) == v for k, v in scope.items())
    }  # r-03 pending past its deadline (not yet expired by the sweep) is neither


@pytest.mark.parametrize(
    ("scope", "index"),
    [
        ({}, "access_requests_newest"),
        ({"client": "clinic"}, "access_requests_by_created"),
        ({"requester": "tech1"}, "access_requests_by_requester"),
    ],
)
def test_ended_requests_are_walked_down_an_index_from_the_cursor(
    store: Store, scope: dict[str, str], index: str
) -> None:
    s = AccessStore(store)
    _ended_world(s)
    client, requester = scope.get("client"), scope.get("requester")
    clause, params = ended_filter(client, requester, T0 + 5000, (T0 + 300, "r-07"))
    sql = f"SELECT id FROM access_requests{clause} ORDER BY created_unix DESC, id DESC LIMIT 51"
    plan = _plan(s, store, sql, params)
    assert index in plan, plan
    if store.dialect == "sqlite":  # type: ignore[attr-defined]
        assert "TEMP B-TREE" not in plan or index == "access_requests_by_created", plan
