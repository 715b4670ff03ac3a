"""Possible breaches end to end: a real server (SQLite and PostgreSQL), a real enrolled agent
gating with fanotify, the technician's real opens, the incidents read back with
`custodes incidents list --json` — across a server killed and restarted in the middle.
"""

from __future__ import annotations

import datetime as dt
import os
import pwd
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.agent.conftest import TECH, accounts  # noqa: F401 - the session fixture
from tests.e2e.incident_world import (
    BILLING_PER_FILE,
    BULK_FILES,
    RECORDS_PER_FILE,
    IncidentWorld,
    by_rule,
    incident_world,
)
from tests.e2e.jit_world import until
from tests.server.conftest import Cluster, fresh_database, pg_cluster  # noqa: F401 - fixture

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(
        os.geteuid() != 0 or not sys.platform.startswith("linux"),
        reason="needs root and Linux fanotify",
    ),
]

SETTLE_S = 2.0  # four detector ticks: long enough for a duplicate to show if one were made


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def world(
    request: pytest.FixtureRequest,
    accounts: dict[str, pwd.struct_passwd],  # noqa: F811
) -> Iterator[IncidentWorld]:
    if request.param == "sqlite":
        with incident_world(accounts[TECH]) as w:
            yield w
        return
    cluster: Cluster = request.getfixturevalue("pg_cluster")
    with fresh_database(cluster) as url, incident_world(accounts[TECH], url) as w:
        yield w


def when(text: object) -> dt.datetime:
    return dt.datetime.fromisoformat(str(text))


def incident_with(world: IncidentWorld, rule: str, evidence: int) -> bool:
    found = by_rule(world.incidents()).get(rule, [])
    return bool(found) and int(found[0]["evidence_events"]) >= evidence


def test_out_of_scope_and_bulk_read_raise_one_incident_each_across_a_restart(
    world: IncidentWorld,
) -> None:
    # Before the restart: two denied opens of records, four in-scope reads of billing (not
    # yet more than the agreement's threshold of distinct files).
    assert world.open_as_tech(*world.files("records", 0, 2)) == ["EPERM"] * 2
    assert world.open_as_tech(*world.files("billing", 0, 4)) == ["ok"] * 4
    until(lambda: incident_with(world, "access_denied", 2), "the access_denied incident")
    before = world.incidents()
    assert [i["rule"] for i in before] == ["access_denied"]
    denied_id = before[0]["id"]

    # The server is killed (no graceful shutdown) and started again on the same store.
    world.server.kill()
    world.server.start()

    # After: three more denials and four more reads: eight distinct billing files within the
    # window, which fires only if the reads before the restart were remembered.
    assert world.open_as_tech(*world.files("records", 2, 3)) == ["EPERM"] * 3
    assert world.open_as_tech(*world.files("billing", 4, 4)) == ["ok"] * 4
    until(
        lambda: incident_with(world, "access_denied", 5) and incident_with(world, "bulk_read", 8),
        "the grown access_denied and the bulk_read incidents",
        timeout=60,
    )
    time.sleep(SETTLE_S)
    after = by_rule(world.incidents())
    assert sorted(after) == ["access_denied", "bulk_read"]
    assert [len(v) for v in after.values()] == [1, 1], "one incident per situation"

    denied: dict[str, Any] = after["access_denied"][0]
    assert denied["id"] == denied_id  # the same incident, grown, not a second one
    assert denied["evidence_events"] == 5
    assert denied["files"] == 5
    assert denied["individuals_affected"] == 5 * RECORDS_PER_FILE
    assert denied["areas"] == "records"
    assert denied["information_affected"] == "contact; health"
    assert denied["technician"] == "tech1"
    assert denied["state"] == "open"

    bulk: dict[str, Any] = after["bulk_read"][0]
    assert bulk["files"] == 8
    assert bulk["individuals_affected"] == 8 * BILLING_PER_FILE
    assert bulk["information_affected"] == "medicare"
    assert f"threshold {BULK_FILES}" in bulk["description"]

    for inc in (denied, bulk):  # s 26WH: the assessment is due 30 days after awareness
        assert when(inc["due"]) - when(inc["aware"]) == dt.timedelta(days=30)
        assert abs(when(inc["aware"]).timestamp() - time.time()) < 600
        assert inc["overdue"] is False
    logs = "".join(p.read_text(errors="replace") for p in world.server.data.glob("server-*.log"))
    for failure in ("detect_failed", "detector_tick_failed", "detector_tick_crashed"):
        assert failure not in logs
    assert logs.count('"incident_opened"') == 2  # once each, across both server processes
