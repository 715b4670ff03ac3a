"""The local grants file and the book that turns it into applied/expired/revoked records."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.grants import GrantBook, GrantsFileError, parse_grants, read_grants_file

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def entry(**over: object) -> dict[str, object]:
    e: dict[str, object] = {
        "id": "g-1",
        "technician": "tech1",
        "area": "records",
        "actions": ["read", "list"],
        "start": T0.isoformat(),
        "end": (T0 + timedelta(hours=1)).isoformat(),
        "ticket": "HGP-1234",
    }
    e.update(over)
    return e


def data(*entries: dict[str, object]) -> bytes:
    return json.dumps(list(entries)).encode()


def test_a_valid_grant_is_parsed() -> None:
    gf = parse_grants(data(entry()))
    assert not gf.refused
    (g,) = gf.grants
    assert g.id == "g-1"
    assert g.end - g.start == timedelta(hours=1)


@pytest.mark.parametrize(
    ("over", "needle"),
    [
        ({"actions": ["peek"]}, "unknown action"),
        ({"start": "2026-03-02T09:00:00"}, "no time zone"),
        ({"end": "tomorrow"}, "not an ISO 8601"),
        ({"end": T0.isoformat()}, "not after start"),
        ({"technician": ""}, "technician"),
        ({"colour": "blue"}, "unknown field"),
        ({"actions": []}, "no actions"),
        ({"break_glass": "yes"}, "break_glass"),
    ],
)
def test_bad_entries_are_refused_one_by_one(over: dict[str, object], needle: str) -> None:
    gf = parse_grants(data(entry(id="good"), entry(**over)))
    assert [g.id for g in gf.grants] == ["good"]
    (refused,) = gf.refused
    assert needle in refused.reason


def test_duplicate_ids_are_refused() -> None:
    gf = parse_grants(data(entry(), entry()))
    assert len(gf.grants) == 1
    assert "more than once" in gf.refused[0].reason


@pytest.mark.parametrize("raw", [b"{}", b"not json", b'"x"'])
def test_a_file_that_is_not_a_list_is_refused(raw: bytes) -> None:
    with pytest.raises(GrantsFileError):
        parse_grants(raw)


def test_missing_file_means_no_grants(tmp_path: Path) -> None:
    gf = read_grants_file(tmp_path / "grants.json")
    assert gf.grants == ()
    assert gf.refused == ()


def test_a_file_others_can_write_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "grants.json"
    p.write_bytes(data(entry()))
    p.chmod(0o666)
    with pytest.raises(GrantsFileError, match="mode 0666"):
        read_grants_file(p)
    p.chmod(0o644)
    assert len(read_grants_file(p).grants) == 1


def test_book_applies_expires_and_revokes() -> None:
    book = GrantBook(["records"], ["tech1"])
    gf = parse_grants(data(entry(), entry(id="g-2")))
    active, recs = book.update(gf, T0)
    assert [g.id for g in active] == ["g-1", "g-2"]
    assert [(r.kind, r.grant_id) for r in recs] == [("applied", "g-1"), ("applied", "g-2")]
    active, recs = book.update(gf, T0 + timedelta(minutes=5))
    assert recs == []  # nothing changed, nothing journaled again
    active, recs = book.update(parse_grants(data(entry())), T0 + timedelta(minutes=6))
    assert [(r.kind, r.grant_id) for r in recs] == [("revoked", "g-2")]
    active, recs = book.update(parse_grants(data(entry())), T0 + timedelta(hours=1))
    assert active == ()
    assert [(r.kind, r.grant_id) for r in recs] == [("expired", "g-1")]
    _, recs = book.update(parse_grants(data(entry())), T0 + timedelta(hours=2))
    assert recs == []


def test_book_refuses_grants_the_agreement_does_not_know_once() -> None:
    book = GrantBook(["records"], ["tech1"])
    gf = parse_grants(data(entry(area="payroll"), entry(id="g-2", technician="mallory")))
    active, recs = book.update(gf, T0)
    assert active == ()
    assert [r.kind for r in recs] == ["refused", "refused"]
    assert "payroll" in recs[0].reason
    assert "mallory" in recs[1].reason
    _, again = book.update(gf, T0)
    assert again == []
