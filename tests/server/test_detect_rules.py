"""The pure rule core: thresholds at their edges, grants, and the serialisable state."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from server.detect.model import Observation
from server.detect.rules import ClientView, Rules
from server.detect.state import RuleState
from tests.server.scenarios.harness import agreement

NANOS = 1_000_000_000
T0 = 1_748_908_800 * NANOS  # 2025-06-03 10:00 Australia/Sydney (a Tuesday)
VIEW = ClientView.of(agreement("harbourside-gp"))  # bulk read: more than 50 files in 10 min


def read(
    i: int, *, at: int | None = None, tech: str = "akaur", rule: str = "in_scope"
) -> Observation:
    return Observation(
        agent_id="hgp-01",
        seq=i,
        client="harbourside-gp",
        unix_nanos=T0 + i * NANOS if at is None else at,
        kind="access",
        technician=tech,
        area="database-backups",
        action="read",
        verdict="allow",
        rule=rule,
        path=f"/srv/backups/bestpractice/f{i}.bak",
    )


def rules(state: RuleState | None = None) -> Rules:
    return Rules({"harbourside-gp": VIEW}, state or RuleState())


def test_exactly_the_threshold_does_not_fire_one_more_does() -> None:
    r = rules()
    assert [f for i in range(50) for f in r.evaluate(read(i))] == []
    (finding,) = r.evaluate(read(50))
    assert finding.rule == "bulk_read"
    assert len(finding.files) == 51
    assert sum(f.individuals for f in finding.files) == 51 * 12000


def test_rereading_one_file_is_not_a_bulk_read() -> None:
    r = rules()
    for i in range(200):
        obs = read(i)
        again = Observation(
            obs.agent_id,
            obs.seq,
            obs.client,
            obs.unix_nanos,
            obs.kind,
            technician=obs.technician,
            area=obs.area,
            action="read",
            verdict="allow",
            rule="in_scope",
            path="/srv/backups/bestpractice/one.bak",
        )
        assert r.evaluate(again) == []


def test_files_older_than_the_window_fall_out() -> None:
    r = rules()
    for i in range(50):
        assert r.evaluate(read(i, at=T0 + i * 13 * NANOS)) == []  # 50 files over ~11 minutes
    assert r.evaluate(read(50, at=T0 + 50 * 13 * NANOS)) == []


def test_an_applied_grant_covers_reads_until_it_expires() -> None:
    r = rules()
    grant = Observation(
        "hgp-01",
        0,
        "harbourside-gp",
        T0,
        "grant",
        technician="akaur",
        area="database-backups",
        grant_id="g-1",
        grant_kind="applied",
    )
    r.evaluate(grant)
    assert [f for i in range(1, 80) for f in r.evaluate(read(i))] == []
    r.evaluate(grant._replace(grant_kind="expired"))
    fired = [f for i in range(100, 160) for f in r.evaluate(read(i))]
    assert fired
    assert fired[0].rule == "bulk_read"


def test_state_survives_a_round_trip_mid_window() -> None:
    first = rules()
    for i in range(30):
        first.evaluate(read(i))
    rows = {k: v for k, v in first.state.take_dirty().items() if v is not None}
    second = rules(RuleState.load(rows))
    assert [f for i in range(30, 50) for f in second.evaluate(read(i))] == []
    assert second.evaluate(read(50))[0].rule == "bulk_read"


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["akaur", "jsmith", "tnguyen"]),
            st.integers(0, 40),  # file number
            st.integers(0, 30),  # seconds since the previous read
            st.booleans(),  # a grant event instead of a read
        ),
        max_size=120,
    ),
    st.integers(0, 120),
)
def test_saving_and_loading_at_any_point_changes_no_finding(
    steps: list[tuple[str, int, int, bool]], cut: int
) -> None:
    """Two runs over the same stream, one restarted from saved state at `cut`: same findings."""
    stream: list[Observation] = []
    at = T0
    for n, (tech, file_no, gap, grant) in enumerate(steps):
        at += gap * NANOS
        if grant:
            stream.append(
                Observation(
                    "hgp-01",
                    n,
                    "harbourside-gp",
                    at,
                    "grant",
                    technician=tech,
                    area="database-backups",
                    grant_id=f"g{file_no % 3}",
                    grant_kind="applied" if file_no % 2 else "expired",
                )
            )
        else:
            stream.append(
                Observation(
                    "hgp-01",
                    n,
                    "harbourside-gp",
                    at,
                    "access",
                    technician=tech,
                    area="database-backups",
                    action="read",
                    verdict="allow",
                    rule="in_scope",
                    path=f"/srv/backups/bestpractice/{file_no}.bak",
                )
            )
    straight = rules()
    expected = [f for obs in stream for f in straight.evaluate(obs)]
    first = rules()
    got = [f for obs in stream[:cut] for f in first.evaluate(obs)]
    saved = {k: v for k, v in first.state.take_dirty().items() if v is not None}
    second = rules(RuleState.load(saved))
    got += [f for obs in stream[cut:] for f in second.evaluate(obs)]
    assert got == expected
    assert RuleState.load(second.state.snapshot()).snapshot() == second.state.snapshot()
