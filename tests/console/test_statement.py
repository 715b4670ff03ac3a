"""The client access statement's numbers come from the hourly rollup, summed in the database;
its lists are bounded and say what they leave out; its PDF is laid out by pdf.py."""

from __future__ import annotations

import datetime as dt
import io
import itertools
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fpdf import FPDF
from pypdf import PdfReader

from policies.model import Action
from server.access import Change, Person, Request, Role, State
from server.console import pdf, statement
from server.console.views import NANOS, Sources
from server.detect.model import FileTouched, Finding
from server.store import Store
from server.store.access import AccessStore
from server.store.console import ConsoleStore
from server.store.incidents import IncidentStore
from server.store.rollup import HourlyRollup
from tests.console.world import access_record, add_agent, append
from tests.server.conftest import pg_cluster, store, store_url  # noqa: F401 - fixtures

SYDNEY = ZoneInfo("Australia/Sydney")
AUDITOR = Person("auditor", Role.AUDITOR)
# 2026-03-31 13:00 UTC is 1 April 00:00 in Sydney (daylight time, +11).
APRIL_UTC = int(dt.datetime(2026, 3, 31, 13, tzinfo=dt.UTC).timestamp())


def test_day_starts_follow_the_zone_across_daylight_saving() -> None:
    start, end = statement.month_bounds("2026-04", SYDNEY)
    starts = statement.day_starts(start, end)
    assert len(starts) == 31  # 30 days and the end of the last
    lengths = {b - a for a, b in itertools.pairwise(starts)}
    assert lengths == {86400, 90000}  # 5 April is 25 hours long (daylight time ends)
    assert starts[5] - starts[4] == 90000
    assert starts[0] == APRIL_UTC


def _store_month(s: Store) -> None:
    """Events of one agent in April 2026 (Sydney): tech1 reads on 1 and 6 April, tech2 is
    denied three times on 2 April, a service account is denied once."""
    add_agent(s, "clinic-01", "clinic")
    hour = 3600 * NANOS
    first = APRIL_UTC * NANOS
    rows = [
        access_record("clinic-01", "clinic", 0, first, technician="tech1", path="/r/a.pdf"),
        access_record("clinic-01", "clinic", 1, first + hour, technician="tech1", path="/r/b"),
        access_record(
            "clinic-01",
            "clinic",
            2,
            first + 24 * hour,
            technician=None,
            path="/r/svc",
            verdict="deny",
            rule="out_of_scope",
        ),
    ]
    rows += [
        access_record(
            "clinic-01",
            "clinic",
            3 + i,
            first + 25 * hour + i * NANOS,
            technician="tech2",
            path=f"/r/denied-{i}.pdf",
            verdict="deny",
            rule="out_of_scope",
        )
        for i in range(3)
    ]
    # 6 April 00:30 Sydney (standard time, +10): 5 April had 25 hours.
    rows.append(
        access_record(
            "clinic-01",
            "clinic",
            6,
            first + (5 * 24 + 1) * hour + 1800 * NANOS,
            technician="tech1",
            path="/r/c.pdf",
        )
    )
    append(s, "clinic-01", rows, 0)


def test_rollup_counts_are_summed_per_technician_area_and_local_day(store: Store) -> None:  # noqa: F811
    _store_month(store)
    console = HourlyRollup(store)
    assert console.backlog() == 7
    assert console.roll_up() == 7
    assert console.backlog("clinic") == 0
    start, end = statement.month_bounds("2026-04", SYDNEY)
    lo, hi = int(start.timestamp()) * NANOS, int(end.timestamp()) * NANOS
    summary = console.access_summary("clinic", lo, hi)
    assert [(a.technician, a.verdict, a.count) for a in summary] == [
        ("tech1", "allow", 3),
        ("tech2", "deny", 3),
    ]
    assert summary[0].first_hour_unix == APRIL_UTC
    days = console.daily_counts("clinic", statement.day_starts(start, end))
    assert days == {("tech1", 0): 2, ("tech2", 1): 3, ("tech1", 5): 1}


def test_roll_up_is_bounded_and_the_backlog_says_what_is_left(store: Store) -> None:  # noqa: F811
    _store_month(store)
    console = ConsoleStore(store).rollup  # the console store reaches its rollup
    assert console.roll_up(max_rows=3, chunk=2) == 3
    assert console.backlog("clinic") == 4
    assert console.backlog("another-client") == 0
    assert console.roll_up(max_rows=100, chunk=2) == 4
    assert console.backlog() == 0


def test_denials_are_technicians_only_oldest_first_and_limited(store: Store) -> None:  # noqa: F811
    _store_month(store)
    console = ConsoleStore(store)
    start, end = statement.month_bounds("2026-04", SYDNEY)
    lo, hi = int(start.timestamp()) * NANOS, int(end.timestamp()) * NANOS
    found = console.denials("clinic", lo, hi, 2)
    assert [d.path for d in found] == ["/r/denied-0.pdf", "/r/denied-1.pdf"]
    assert {d.technician for d in found} == {"tech2"}
    assert console.denials("clinic", hi, hi + NANOS, 10) == []


@pytest.fixture
def sources(store: Store) -> Sources:  # noqa: F811
    return Sources(store, AccessStore(store), IncidentStore(store), ConsoleStore(store), b"k" * 32)


def test_statement_lists_the_first_denials_and_links_every_one(
    sources: Sources, monkeypatch: pytest.MonkeyPatch
) -> None:
    _store_month(sources.store)
    monkeypatch.setattr(statement, "MAX_DENIALS", 2)
    s = statement.build(sources, AUDITOR, "clinic", "2026-04", APRIL_UTC)  # no agreement: UTC
    assert s.uncounted == 0
    assert s.denials_total == 3
    assert [d.path for d in s.denials] == ["/r/denied-0.pdf", "/r/denied-1.pdf"]
    assert s.denials_export == (
        "/events.csv?client=clinic&decision=deny&from=2026-04-01T00%3A00&to=2026-05-01T00%3A00"
    )
    text = _pdf_text(pdf.render(s))
    assert "The first 2 of 3 denials are listed" in text


def test_statement_states_events_it_has_not_counted_yet(
    sources: Sources, monkeypatch: pytest.MonkeyPatch
) -> None:
    _store_month(sources.store)
    monkeypatch.setattr(statement, "MAX_ROLL_UP", 5)
    s = statement.build(sources, AUDITOR, "clinic", "2026-03", APRIL_UTC)
    assert s.uncounted == 2
    assert "2 event(s) stored in the last moments were not counted yet" in _pdf_text(pdf.render(s))
    assert statement.build(sources, AUDITOR, "clinic", "2026-03", APRIL_UTC).uncounted == 0


def test_statement_lists_the_first_incidents_and_counts_every_one(
    sources: Sources, monkeypatch: pytest.MonkeyPatch
) -> None:
    _store_month(sources.store)
    findings = [
        Finding(
            rule="denied_out_of_scope",
            client="clinic",
            subject=f"tech{i}",
            at_unix=APRIL_UTC + 86400 + 3600 * i,
            summary=f"tech{i} was denied",
            area="records",
            technician=f"tech{i}",
            agent_id="clinic-01",
            evidence=(("clinic-01", 3 + i),),
            files=(FileTouched("clinic-01", f"/r/denied-{i}.pdf", "records", 1),),
            kinds=("health",),
        )
        for i in range(3)
    ]
    for f in findings:  # one commit each, at its own time: three incidents
        sources.incidents.commit(
            [f], now=f.at_unix, window_s=60, state_rows={}, cursors={}, entities={}
        )
    monkeypatch.setattr(statement, "MAX_INCIDENTS", 2)
    s = statement.build(sources, AUDITOR, "clinic", "2026-04", APRIL_UTC)
    assert s.incidents_total == 3
    assert [i.summary for i in s.incidents] == ["tech0 was denied", "tech1 was denied"]
    assert "The first 2 of 3 incidents are listed" in _pdf_text(pdf.render(s))
    assert statement.build(sources, AUDITOR, "clinic", "2026-05", APRIL_UTC).incidents_total == 0


def _request(rid: str, created: int, start: int = 0, end: int = 0) -> Request:
    """A request of tech1 created at `created`; approved when it has a window."""
    return Request(
        id=rid,
        client="clinic",
        technician="tech1",
        requester="tech1",
        area="records",
        actions=(Action.READ,),
        start_unix=start,
        end_unix=end,
        duration_seconds=3600,
        ticket=f"T-{rid}",
        reason="restore a letter",
        break_glass=False,
        state=State.APPROVED if start else State.PENDING,
        created_unix=created,
        pending_until_unix=created + 3600,
        approvals_needed=1,
        approver_kinds=("client_manager",),
        agreement_version="v1",
        history=(Change("requested", "tech1", created, "restore a letter"),),
    )


def test_statement_lists_a_months_grants_however_many_newer_requests_follow(
    sources: Sources, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More newer requests than the statement lists must not push an older month's out."""
    monkeypatch.setattr(statement, "MAX_GRANTS", 3)
    april = int(dt.datetime(2026, 4, 1, tzinfo=dt.UTC).timestamp())  # no agreement: UTC
    may = int(dt.datetime(2026, 5, 1, tzinfo=dt.UTC).timestamp())
    # Created in March, its grant active into April; and one requested in April.
    sources.access.add_request(_request("jit-march", april - 7200, april - 3600, april + 3600))
    sources.access.add_request(_request("jit-april", april + 86400))
    for i in range(10):
        sources.access.add_request(_request(f"jit-may-{i}", may + 60 * i))
    in_april = statement.build(sources, AUDITOR, "clinic", "2026-04", may + 3600)
    assert in_april.grants_total == 2
    assert [g.id for g in in_april.grants] == ["jit-april", "jit-march"]
    assert in_april.grants[1].window != "never started"
    in_may = statement.build(sources, AUDITOR, "clinic", "2026-05", may + 3600)
    assert in_may.grants_total == 10
    assert [g.id for g in in_may.grants] == ["jit-may-9", "jit-may-8", "jit-may-7"]
    assert statement.build(sources, AUDITOR, "clinic", "2026-03", may).grants_total == 1


# -- the PDF -------------------------------------------------------------------------------


def _pdf_text(body: bytes) -> str:
    return "\n".join(p.extract_text() for p in PdfReader(io.BytesIO(body)).pages)


def _fonts(body: bytes) -> set[str]:
    names = set()
    for page in PdfReader(io.BytesIO(body)).pages:
        resources: Any = page["/Resources"]
        for font in resources["/Font"].values():
            names.add(str(font.get_object()["/BaseFont"]))
    return names


@pytest.fixture
def measure() -> pdf._Measure:
    doc = FPDF()
    doc.add_page()
    doc.set_font("Helvetica", size=8)
    return pdf._Measure(doc)


@pytest.mark.parametrize(
    "text",
    [
        "/srv/clinic/records/patients/0042/Tran_Mei_Lin_referral_letter_2026.pdf",
        "a reason written at length by a technician who wanted the approver to understand",
        "x" * 120,
        "",
    ],
)
def test_wrapped_lines_fit_their_column_and_keep_every_character(
    measure: pdf._Measure, text: str
) -> None:
    lines = pdf._wrap(text, 40.0, measure)
    assert all(measure(line) <= 40.0 for line in lines)
    assert "".join(lines).replace(" ", "") == text.replace(" ", "")


def test_a_long_path_breaks_after_a_slash(measure: pdf._Measure) -> None:
    lines = pdf._wrap("/srv/clinic/records/patients/0042/referral.pdf", 30.0, measure)
    assert len(lines) > 1
    assert all(line.endswith("/") for line in lines[:-1])


def _statement(name: str, denials: int) -> statement.Statement:
    row = statement.StatementDenial(
        "02 Apr 10:00:00", "tech2", "records", "read", "/srv/r/denied.pdf", "out_of_scope"
    )
    return statement.Statement(
        "clinic",
        name,
        "2026-04",
        "April 2026",
        "Australia/Sydney",
        "today",
        [
            statement.AccessRow(
                "tech2",
                "records",
                "read",
                "deny",
                "out_of_scope",
                denials,
                "02 Apr 10:00",
                "02 Apr 10:59",
            )
        ],
        ["tech2"],
        ["02"],
        {("tech2", "02"): denials},
        [],
        [row] * denials,
        denials,
        [],
        [],
    )


def test_western_text_uses_the_built_in_helvetica() -> None:
    body = pdf.render(_statement("Harbour Clinic \u2013 Surry Hills", 3))
    assert _fonts(body) == {"/Helvetica", "/Helvetica-Bold"}
    assert "Harbour Clinic \u2013 Surry Hills" in _pdf_text(body)


def test_other_scripts_embed_dejavu() -> None:
    if not (pdf.FONT_DIR / "DejaVuSans.ttf").exists():
        pytest.skip("DejaVu Sans is not installed (Debian package fonts-dejavu-core)")
    body = pdf.render(_statement("Phòng khám Nguyễn", 3))
    assert all("DejaVu" in f for f in _fonts(body))
    assert "Phòng khám Nguyễn" in _pdf_text(body)


def test_a_long_table_repeats_its_header_on_every_page() -> None:
    reader = PdfReader(io.BytesIO(pdf.render(_statement("Harbour Clinic", 200))))
    assert len(reader.pages) > 2
    for page in reader.pages[1:]:
        assert "When Technician Area Action Path Rule" in " ".join(page.extract_text().split())
