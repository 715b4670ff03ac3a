"""Console page response times with many stored events, on SQLite and PostgreSQL.

Run: .venv/bin/python bench/console_bench.py [EVENTS] [--stores sqlite,postgres]
[--incidents N] [--runs N] (default 1,000,000 events, both stores, 40 warm fetches)

For each store: a real `custodes server run --console` over a database holding EVENTS
access events of one client (30 days, 3 technicians, 2 agents, ~3% denials) written with
the store's own `append_batch` (as ingest stores a verified batch, 5,000 per batch), and
REQUESTS just-in-time requests. The server's detector first catches up on the stored
events (raising the incidents the incidents page and the register show), and the console
counts them into its hourly rollup in the background; the bench waits for both (both
hold the database thread while they work), then an MSP auditor signs in over HTTPS and
fetches each page once cold (printed on its own; a console without the background rollup
counts the month in its first statement) and RUNS times warm; p50 and p99 of the full
HTTP round trip. Baseline: the sign-in page (no database work) in the same run.
--incidents N stores N more incidents (five years, 200 clients, mostly closed) before the
server starts, and prints the server's peak RSS before and after the incidents page and
the breach register (a full export, streamed) are fetched.
--queries: instead of the server, the console's reads on the database thread alone (no
HTTP), each against what the same page read before in the same run, back to back: an
incident's evidence (300 events: one query per event before, one join now), the incidents
page's decided total (the IN over six states before; the partial index now, exact and
bounded at views.DECIDED_COUNTED as the page shows it), and the
requests page (the newest 500 requests before, a keyset page of 50 now), over
--incidents (default 100,000) incidents and --requests (default 30,000) requests; medians
of --runs runs.
PostgreSQL runs when an initdb binary exists (tests/server/conftest.py's throwaway
cluster). The load average is printed at the start and end of each store's run, since
the figures move with whatever else the machine runs.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from policies.model import Action  # noqa: E402
from server.access import ENDED, Change, Draft, Person, Role, create  # noqa: E402
from server.access import State as AccessState  # noqa: E402
from server.access_service import Agreements  # noqa: E402
from server.console import views  # noqa: E402
from server.detect.model import Finding  # noqa: E402
from server.incidents import assessment  # noqa: E402
from server.incidents.model import Incident, State  # noqa: E402
from server.store import Store, open_store  # noqa: E402
from server.store.access import _INSERT_REQUEST, AccessStore  # noqa: E402
from server.store.console import ConsoleStore  # noqa: E402
from server.store.incidents import IncidentStore  # noqa: E402
from tests.console.conftest import Http  # noqa: E402
from tests.console.world import (  # noqa: E402
    AGREEMENT,
    CLINIC,
    ConsoleServer,
    access_record,
    add_agent,
    append,
    make_people,
)
from tests.server.conftest import find_initdb, fresh_database, start_cluster  # noqa: E402
from tests.server.test_ingest_harness import cli  # noqa: E402

RUNS = 40
BATCH = 5000
REQUESTS = 300
TECHS = ("tech1", "tech2", "tech3")
DETECT_WAIT_S = 900.0
INCIDENT_CLIENTS = 200


def fill(url: str, events: int, now: float) -> float:
    """Store `events` events; returns the seconds it took."""
    store = open_store(url)
    started = time.perf_counter()
    try:
        agents = ("clinic-a", "clinic-b")
        for a in agents:
            add_agent(store, a, CLINIC)
        span = 30 * 86400 * 10**9
        start = int((now - 30 * 86400) * 1e9)
        per_agent = events // len(agents)
        step = span // max(per_agent, 1)
        for a in agents:
            seq = 0
            while seq < per_agent:
                n = min(BATCH, per_agent - seq)
                batch = [
                    access_record(
                        a,
                        CLINIC,
                        s,
                        start + s * step,
                        technician=TECHS[s % 3],
                        path=f"/srv/clinic/records/patient-{s % 20000}.pdf",
                        verdict="deny" if s % 31 == 0 else "allow",
                        rule="out_of_scope" if s % 31 == 0 else "in_scope",
                    )
                    for s in range(seq, seq + n)
                ]
                append(store, a, batch, seq)
                seq += n
        requests(store, now)
    finally:
        store.close()
    return time.perf_counter() - started


def requests(store: Store, now: float) -> None:
    """REQUESTS just-in-time requests by tech1 over the month (the requests page, the
    statement's grants)."""
    access = AccessStore(store)
    compiled = Agreements(access).current(CLINIC)
    person = access.get_person("tech1")
    assert person is not None
    for i in range(REQUESTS):
        at = int(now - 30 * 86400 + i * (30 * 86400 // REQUESTS))
        draft = Draft(CLINIC, "records", (Action.READ,), 3600, f"INC-{5000 + i}", "bench")
        access.add_request(create(f"jit-bench{i:04d}", draft, person, compiled, at))


def seed_incidents(url: str, count: int, now: float) -> None:
    """COUNT more incidents over five years, across INCIDENT_CLIENTS clients (CLINIC among
    them), 2% undecided, the rest decided and closed with a full assessment: written
    straight into ndb_incidents as the detector and the assessment steps leave them."""
    inc = Incident(
        0, "bulk_read", CLINIC, "tech1", "", "tech1 read 60 files within 10 minutes", now, 0, 0
    )
    inc, _ = assessment.assess(
        inc,
        "privacy officer",
        now,
        factors=dict.fromkeys(("kinds", "persons", "harm"), "recorded in the bench"),
        containment=[("technician's session reviewed with the MSP", now)],
    )
    decided, _ = assessment.decide(inc, "privacy officer", now, State.NOT_ELIGIBLE, ["no harm"])
    closed, _ = assessment.close(decided, "privacy officer", now, "reviewed; nothing disclosed")
    shapes = [(State.OPEN.value, json.dumps(inc.assessment_json()))] + [
        (State.CLOSED.value, json.dumps(closed.assessment_json()))
    ] * 49
    store = open_store(url)
    try:
        incidents = IncidentStore(store)
        start = now - 5 * 365 * 86400
        for first in range(0, count, BATCH):
            rows = []
            for i in range(first, min(count, first + BATCH)):
                state, shape = shapes[i % len(shapes)]
                aware = start + (now - start) * i / count
                client = CLINIC if i % 7 == 0 else f"client-{i % INCIDENT_CLIENTS:03d}"
                rows.append(
                    (
                        f"bulk_read|{client}|tech{i}|",
                        "bulk_read",
                        client,
                        f"tech{i % 40}",
                        f"tech{i % 40} read {50 + i % 30} distinct sensitive files",
                        f"tech{i % 40}",
                        "clinic-a",
                        state,
                        aware,
                        aware - 600,
                        aware - 5,
                        '["records"]',
                        '["health", "contact"]',
                        60,
                        60,
                        60,
                        shape,
                    )
                )
            with incidents._tx(write=True) as cur:
                incidents._many(
                    cur,
                    "INSERT INTO ndb_incidents (dedup_key, rule, client, subject, summary,"
                    " technician, agent_id, state, aware_unix, first_unix, last_unix, areas,"
                    " kinds, files, individuals, evidence_count, assessment)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
    finally:
        store.close()


def seed_requests(url: str, count: int, now: float) -> None:
    """COUNT requests over a year, by 40 technicians across 20 clients (CLINIC among them):
    nearly all ended (denied, expired, revoked), 20 pending and 20 live grants among the
    newest, written in transactions of BATCH requests as `add_request` writes each."""
    store = open_store(url)
    try:
        access = AccessStore(store)
        person = access.get_person("tech1")
        assert person is not None
        compiled = Agreements(access).current(CLINIC)
        draft = Draft(CLINIC, "records", (Action.READ,), 3600, "INC-1", "bench")
        base = create("jit-template", draft, person, compiled, int(now))
        ended = (AccessState.DENIED, AccessState.EXPIRED, AccessState.REVOKED)
        start = int(now) - 365 * 86400
        for first in range(0, count, BATCH):
            rows = []
            for i in range(first, min(count, first + BATCH)):
                made = start + (int(now) - 3600 - start) * i // count
                newest = count - i
                state = ended[i % 3]
                window = (made + 60, made + 3660)
                if newest <= 20:
                    state, window = AccessState.PENDING, (0, 0)
                    made = int(now) - newest * 60
                elif newest <= 40:
                    state, window = AccessState.APPROVED, (int(now) - 60, int(now) + 3600)
                tech = f"tech{i % 40}"
                rows.append(
                    dataclasses.replace(
                        base,
                        id=f"jit-b{i:07d}",
                        client=CLINIC if i % 20 == 0 else f"client-{i % 20:02d}",
                        technician=tech,
                        requester=tech,
                        created_unix=made,
                        pending_until_unix=made + 86400,
                        start_unix=window[0],
                        end_unix=window[1],
                        state=state,
                        history=(Change("requested", tech, made, "bench"),)
                        + (
                            ()
                            if state is AccessState.PENDING
                            else (Change(state, "pm", made + 60, "bench"),)
                        ),
                    )
                )
            with access._tx(write=True) as cur:
                for req in rows:
                    access._exec(cur, _INSERT_REQUEST, access._row(req, None, None))
                    access._children(cur, req, 0, 0)
    finally:
        store.close()


def seed_evidence(url: str, now: float, links: int = 300) -> int:
    """An incident resting on `links` stored events (of two agents); its id."""
    store = open_store(url)
    try:
        refs = []
        for agent in ("ev-a", "ev-b"):
            add_agent(store, agent, CLINIC)
            n = links // 2
            start = int((now - 3600) * 1e9)
            batch = [
                access_record(
                    agent,
                    CLINIC,
                    s,
                    start + s * 10**6,
                    technician="tech1",
                    path=f"/srv/clinic/records/patient-{s}.pdf",
                    verdict="deny",
                    rule="out_of_scope",
                )
                for s in range(n)
            ]
            append(store, agent, batch, 0)
            refs += [(agent, s) for s in range(n)]
        finding = Finding(
            "denied_out_of_scope", CLINIC, "tech1", now, "bench", evidence=tuple(refs)
        )
        [change] = IncidentStore(store).commit(
            [finding], now=now, window_s=60, state_rows={}, cursors={}, entities={}
        )
        return change.incident.id
    finally:
        store.close()


def _old_requests_page(src: views.Sources, viewer: Person, now: int) -> views.RequestPage:
    """The requests page as it was read before: the newest 500, sorted out in Python."""
    requester = viewer.name if viewer.role is Role.TECHNICIAN else None
    rows = src.access.list_requests(client=viewer.client, requester=requester, limit=500)
    reqs = [r.request for r in rows if viewer.serves(r.request.client)]
    pending = [r for r in reqs if r.state is AccessState.PENDING and now < r.pending_until_unix]
    active = [r for r in reqs if r.is_live(now)]
    ended = [
        r
        for r in reqs
        if r.state in ENDED or (r.state is AccessState.APPROVED and not r.is_live(now))
    ]
    pending.sort(key=lambda r: r.created_unix)
    return views.RequestPage(
        [views.request_line(src, viewer, r, now) for r in pending],
        [views.request_line(src, viewer, r, now) for r in active],
        [views.request_line(src, viewer, r, now) for r in ended[:100]],
    )


def _median_ms(fn: Callable[[], object], runs: int) -> float:
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    return statistics.median(samples)


def measure_queries(
    name: str, url: str, incidents: int, requests_n: int, runs: int
) -> list[tuple[str, str, float, float]]:
    """(store, read, before ms, after ms) of each changed read, medians, alternated."""
    now = time.time()
    store = open_store(url)
    try:
        yaml = AGREEMENT.format(client=CLINIC, name="Harbour Clinic", root="/srv/clinic")
        AccessStore(store).add_agreement(
            CLINIC, "v1", "bench", yaml.encode(), at_unix=int(now), by="bench"
        )
        AccessStore(store).add_person(Person("tech1", Role.TECHNICIAN, technician="tech1"), 0)
    finally:
        store.close()
    seed_incidents(url, incidents, now)
    seed_requests(url, requests_n, now)
    incident_id = seed_evidence(url, now)
    store = open_store(url)
    try:
        # PostgreSQL as autovacuum leaves the tables (statistics, the visibility map an
        # index-only scan needs); SQLite as the server runs it, without ANALYZE.
        if name == "postgres":
            with store._lock:  # type: ignore[attr-defined]
                for table in ("ndb_incidents", "access_requests", "access_history", "events"):
                    store._conn.execute(f"VACUUM ANALYZE {table}")  # type: ignore[attr-defined]
        src = views.Sources(
            store, AccessStore(store), IncidentStore(store), ConsoleStore(store), b"k" * 32
        )
        auditor = Person("auditor", Role.AUDITOR)
        decided = views.QUEUE_STATES["decided"]
        marks = ", ".join("?" * len(decided))

        def evidence_before() -> object:
            page = src.for_page()
            out = []
            for agent_id, seq in page.incidents.evidence(incident_id, limit=300):
                out += page.store.records(agent_id, seq, seq + 1)
            return out

        def evidence_after() -> object:
            return src.for_page().incidents.evidence_records(incident_id, limit=300)

        def decided_before() -> object:
            with src.console._tx(write=False) as cur:
                src.console._exec(
                    cur, f"SELECT COUNT(*) FROM ndb_incidents WHERE state IN ({marks})", decided
                )
                return cur.fetchone()[0]

        def decided_exact() -> object:
            return src.console.count_incidents(None, decided)

        def decided_shown() -> object:
            return src.console.count_incidents(None, decided, up_to=views.DECIDED_COUNTED)

        assert evidence_before() == evidence_after()
        assert len(evidence_after()) == 300  # type: ignore[arg-type]
        assert decided_before() == decided_exact()
        first = views.requests_page(src.for_page(), auditor, int(now))
        third = views.RequestCursor.parse(
            views.requests_page(
                src.for_page(), auditor, int(now), after=views.RequestCursor.parse(first.next)
            ).next
        )
        pairs = [
            ("incident page: 300 evidence events", evidence_before, evidence_after),
            ("incidents page: decided, exact (index)", decided_before, decided_exact),
            ("incidents page: decided, as shown", decided_before, decided_shown),
            (
                "requests page (MSP-wide), page 1",
                lambda: _old_requests_page(src.for_page(), auditor, int(now)),
                lambda: views.requests_page(src.for_page(), auditor, int(now)),
            ),
            (
                "requests page (MSP-wide), page 3",
                lambda: _old_requests_page(src.for_page(), auditor, int(now)),
                lambda: views.requests_page(src.for_page(), auditor, int(now), after=third),
            ),
            (
                f"requests page ({CLINIC})",
                lambda: _old_requests_page(
                    src.for_page(), Person("pm", Role.APPROVER, client=CLINIC), int(now)
                ),
                lambda: views.requests_page(
                    src.for_page(), Person("pm", Role.APPROVER, client=CLINIC), int(now)
                ),
            ),
        ]
        out = []
        for label, before, after in pairs:
            before(), after()  # warm
            b: list[float] = []
            a: list[float] = []
            for _ in range(4):  # alternated, so both see the same load
                b.append(_median_ms(before, max(3, runs // 4)))
                a.append(_median_ms(after, max(3, runs // 4)))
            out.append((name, label, statistics.median(b), statistics.median(a)))
        return out
    finally:
        store.close()


def peak_rss_kib(pid: int) -> int:
    """The process's peak resident set (VmHWM), KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def wait_for_detection(url: str, events: int) -> float:
    """Seconds until the server's detector has read every stored event (DETECT_WAIT_S at
    most): its catch-up holds the database thread, and pages fetched meanwhile wait."""
    started = time.perf_counter()
    store = open_store(url, migrate=False)
    try:
        incidents = IncidentStore(store)
        while time.perf_counter() - started < DETECT_WAIT_S:
            _, cursors = incidents.detector_state()
            if sum(cursors.values()) >= events:
                return time.perf_counter() - started
            time.sleep(1.0)
    finally:
        store.close()
    raise AssertionError(f"the detector did not catch up within {DETECT_WAIT_S:.0f} s")


def wait_for_rollup(url: str) -> str:
    """Until the console's background rollup has counted every stored event (the steady
    state beside ingest); a console without one (older code) counts in the first statement."""
    store = open_store(url, migrate=False)
    try:
        console = ConsoleStore(store)
        backlog = getattr(getattr(console, "rollup", console), "backlog", None)
        if backlog is None:
            return "no background rollup"
        started = time.perf_counter()
        while time.perf_counter() - started < DETECT_WAIT_S:
            if backlog() == 0:
                return f"rollup caught up in {time.perf_counter() - started:.0f} s"
            time.sleep(0.5)
    finally:
        store.close()
    raise AssertionError(f"the rollup did not catch up within {DETECT_WAIT_S:.0f} s")


def load() -> str:
    """The 1-minute load average, for the figures' context."""
    return f"{os.getloadavg()[0]:.2f}"


def fetch(http: Http, path: str) -> float:
    """Milliseconds of one fetch of `path` (which must answer 200)."""
    t = time.perf_counter()
    reply = http.get(path)
    ms = (time.perf_counter() - t) * 1000
    assert reply.status == 200, (path, reply.status, reply.text[:300])
    return ms


def timings(http: Http, path: str, runs: int = RUNS) -> tuple[float, float]:
    """p50 and p99 in milliseconds of `runs` fetches of `path`."""
    samples = sorted(fetch(http, path) for _ in range(runs))
    return statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.99))]


Row = tuple[str, str, float, float, float]


def run(name: str, database: str | None, events: int, incidents: int, runs: int) -> list[Row]:
    base = Path(tempfile.mkdtemp(prefix="cbench-"))
    server = ConsoleServer(base / "server", database=database)
    try:
        server.init()
        agreement = base / "a.yaml"
        agreement.write_text(
            AGREEMENT.format(client=CLINIC, name="Harbour Clinic", root="/srv/clinic")
        )
        extra = ["--database", database] if database else []
        cli("server", "agreement", "apply", str(agreement), "--data", str(server.data), *extra)
        people = {"auditor": ["--role", "auditor"], "tech1": ["--role", "technician"]}
        make_people(server.data, people)  # --database is recorded
        now = time.time()
        url = database or str(server.data / "custodes.db")
        seconds = fill(url, events, now)
        print(f"{name}: stored {events:,} events in {seconds:.0f} s", flush=True)
        if incidents:
            started = time.perf_counter()
            seed_incidents(url, incidents, now)
            took = time.perf_counter() - started
            print(f"{name}: stored {incidents:,} more incidents in {took:.0f} s", flush=True)
        server.start()
        waited = wait_for_detection(url, events)
        rolled = wait_for_rollup(url)
        print(f"{name}: detector caught up in {waited:.0f} s, {rolled}; load {load()}", flush=True)
        http = Http(server.console_url)
        assert http.sign_in("auditor").status == 303
        month = dt.datetime.fromtimestamp(now, ZoneInfo("Australia/Sydney")).strftime("%Y-%m")
        pages = [
            ("sign-in page (baseline)", "/signin"),
            ("overview", "/"),
            (
                "events search (tech + deny)",
                f"/events?client={CLINIC}&technician=tech2&decision=deny",
            ),
            ("events, all, page 1", f"/events?client={CLINIC}"),
            ("monthly statement (HTML)", f"/statement?client={CLINIC}&month={month}"),
            ("monthly statement (PDF)", f"/statement.pdf?client={CLINIC}&month={month}"),
            ("incidents", "/incidents"),
            ("breach register (CSV)", "/incidents/register.csv"),
            ("access requests", "/requests"),
            ("agent health", "/agents/clinic-a"),
        ]
        out = []
        for label, path in pages:
            pid = server.proc.pid if server.proc else 0
            before = peak_rss_kib(pid)
            cold = fetch(http, path)
            for _ in range(3):
                fetch(http, path)
            p50, p99 = timings(http, path, runs)
            out.append((name, label, cold, p50, p99))
            if path.startswith("/incidents"):
                after = peak_rss_kib(pid)
                print(
                    f"{name}: server peak RSS {before / 1024:.0f} MiB before {label}, "
                    f"{after / 1024:.0f} MiB after {runs + 4} fetches",
                    flush=True,
                )
        print(f"{name}: measured; load {load()}", flush=True)
        return out
    finally:
        server.kill()
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def postgres() -> Iterator[str | None]:
    initdb = find_initdb()
    if initdb is None:
        yield None
        return
    cluster = start_cluster(initdb, fsync=False)
    try:
        with fresh_database(cluster) as url:
            yield url
    finally:
        cluster.stop()


def queries_main(stores: list[str], incidents: int, requests_n: int, runs: int) -> None:
    """--queries: each changed read against the old one, on each store."""
    print(f"load at start {load()}", flush=True)
    rows: list[tuple[str, str, float, float]] = []
    if "sqlite" in stores:
        base = Path(tempfile.mkdtemp(prefix="cbench-q-"))
        try:
            rows += measure_queries("sqlite", str(base / "q.db"), incidents, requests_n, runs)
        finally:
            shutil.rmtree(base, ignore_errors=True)
    if "postgres" in stores:
        with postgres() as url:
            if url is not None:
                rows += measure_queries("postgres", url, incidents, requests_n, runs)
            else:
                print("postgres: no initdb on this machine; skipped")
    print(f"load at end {load()}")
    print(
        f"\nconsole reads with {incidents:,} incidents, {requests_n:,} requests "
        f"(medians of 4 alternated rounds of {max(3, runs // 4)} runs; ms)"
    )
    print(f"{'store':10} {'read':38} {'before':>8} {'after':>8} {'ratio':>7}")
    for store, label, before, after in rows:
        print(f"{store:10} {label:38} {before:8.2f} {after:8.2f} {before / after:7.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("events", type=int, nargs="?", default=1_000_000)
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument(
        "--incidents",
        type=int,
        default=0,
        help="store this many more incidents (five years, 200 clients) before the server starts",
    )
    parser.add_argument("--runs", type=int, default=RUNS, help=f"warm fetches (default {RUNS})")
    parser.add_argument(
        "--queries",
        action="store_true",
        help="time the console's changed reads against the old ones (no server)",
    )
    parser.add_argument("--requests", type=int, default=30_000, help="requests for --queries")
    args = parser.parse_args()
    if args.queries:
        queries_main(args.stores.split(","), args.incidents or 100_000, args.requests, args.runs)
        return
    events = args.events
    stores = args.stores.split(",")
    print(f"load at start {load()}", flush=True)
    rows: list[Row] = []
    if "sqlite" in stores:
        rows += run("sqlite", None, events, args.incidents, args.runs)
    if "postgres" in stores:
        with postgres() as url:
            if url is not None:
                rows += run("postgres", url, events, args.incidents, args.runs)
            else:
                print("postgres: no initdb on this machine; skipped")
    print(
        f"\nconsole pages with {events:,} stored events, {args.incidents:,} more incidents, "
        f"{args.runs} warm fetches each (HTTPS, "
        "full round trip); cold: the first fetch"
    )
    print(
        f"{'store':10} {'page':32} {'cold ms':>8} {'p50 ms':>8} {'p99 ms':>8} {'p50/baseline':>13}"
    )
    base = {r[0]: r[3] for r in rows if "baseline" in r[1]}
    for store, label, cold, p50, p99 in rows:
        print(f"{store:10} {label:32} {cold:8.1f} {p50:8.1f} {p99:8.1f} {p50 / base[store]:13.1f}")


if __name__ == "__main__":
    main()
