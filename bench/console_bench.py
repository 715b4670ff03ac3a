"""Console page response times with many stored events, on SQLite and PostgreSQL.

Run: .venv/bin/python bench/console_bench.py [EVENTS]   (default 1,000,000)

For each store: a real `custodes server run --console` over a database holding EVENTS
access events of one client (30 days, 3 technicians, 2 agents, ~3% denials) written with
the store's own `append_batch` (as ingest stores a verified batch, 5,000 per batch). An
MSP auditor signs in over HTTPS and each page is fetched RUNS times; p50 and p99 of the
full HTTP round trip. Baseline: the sign-in page (no database work) in the same run.
PostgreSQL runs when an initdb binary exists (tests/server/conftest.py's throwaway cluster).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server.store import open_store  # noqa: E402
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
TECHS = ("tech1", "tech2", "tech3")


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
    finally:
        store.close()
    return time.perf_counter() - started


def timings(http: Http, path: str) -> tuple[float, float]:
    """p50 and p99 in milliseconds of RUNS fetches of `path`."""
    samples = []
    for _ in range(RUNS):
        t = time.perf_counter()
        reply = http.get(path)
        samples.append((time.perf_counter() - t) * 1000)
        assert reply.status == 200, (path, reply.status, reply.text[:300])
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.99))]


def run(name: str, database: str | None, events: int) -> list[tuple[str, str, float, float]]:
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
        make_people(server.data, {"auditor": ["--role", "auditor"]})  # --database is recorded
        now = time.time()
        seconds = fill(database or str(server.data / "custodes.db"), events, now)
        print(f"{name}: stored {events:,} events in {seconds:.0f} s", flush=True)
        server.start()
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
        ]
        out = []
        for label, path in pages:
            timings(http, path)  # warm
            p50, p99 = timings(http, path)
            out.append((name, label, p50, p99))
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


def main() -> None:
    events = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    rows = run("sqlite", None, events)
    with postgres() as url:
        if url is not None:
            rows += run("postgres", url, events)
        else:
            print("postgres: no initdb on this machine; skipped")
    print(
        f"\nconsole pages with {events:,} stored events, {RUNS} fetches each (HTTPS, "
        "full round trip)"
    )
    print(f"{'store':10} {'page':32} {'p50 ms':>8} {'p99 ms':>8} {'p50/baseline':>13}")
    base = {r[0]: r[2] for r in rows if "baseline" in r[1]}
    for store, label, p50, p99 in rows:
        print(f"{store:10} {label:32} {p50:8.1f} {p99:8.1f} {p50 / base[store]:13.1f}")


if __name__ == "__main__":
    main()
