"""The console's hourly rollup: technicians' access events counted per UTC hour.

The statement sums a month from `console_hourly` instead of counting a million events. Each
agent's events are counted from a cursor (`console_hourly_cursors`) on, by primary key, a
chunk per transaction, the cursor advanced in the same transaction: several servers on one
database count every event once. Shares the evidence store's connection and transactions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from server.store.sql import StorePart

HOUR_NANOS = 3_600 * 1_000_000_000
ROLL_CHUNK = 20_000  # events counted per transaction: ~60 ms of the database thread


@dataclass(frozen=True, slots=True)
class AccessSummary:
    """A month's accesses of one (technician, area, action, verdict, rule), from the rollup."""

    technician: str
    area: str
    action: str
    verdict: str
    rule: str
    count: int
    first_hour_unix: int
    last_hour_unix: int


class HourlyRollup(StorePart):
    """Counts of access events per hour in the evidence store's database, and their sums."""

    needs = "the console's rollup needs"

    def roll_up(self, max_rows: int = 2_000_000, chunk: int = ROLL_CHUNK) -> int:
        """Count new access events into the hourly rollup; how many events were counted.

        Each agent's events are read by primary key from its cursor on, grouped per hour,
        added to `console_hourly`, and the cursor advanced in the same transaction, only if
        no other server advanced it meanwhile (otherwise nothing is written). At most
        `max_rows` events, `chunk` per transaction.
        """
        counted = 0
        for agent_id, _, next_seq, cursor in self._behind():
            first = cursor
            while first < next_seq and counted < max_rows:
                end = min(next_seq, first + chunk, first + max_rows - counted)
                self._roll_agent(agent_id, first, end)
                counted += end - first
                first = end
        return counted

    def backlog(self, client: str | None = None) -> int:
        """Stored events (of `client`'s agents, or all) not yet counted into the rollup."""
        return sum(
            next_seq - cursor
            for _, agent_client, next_seq, cursor in self._behind()
            if client in (None, agent_client)
        )

    def _behind(self) -> list[tuple[str, str, int, int]]:
        """(agent_id, client, next_seq, rollup cursor) of each agent with uncounted events."""
        with self._tx(write=False) as cur:
            self._exec(
                cur,
                "SELECT a.agent_id, a.client, a.next_seq, COALESCE(c.next_seq, 0) FROM agents a"
                " LEFT JOIN console_hourly_cursors c ON c.agent_id = a.agent_id"
                " WHERE a.next_seq > COALESCE(c.next_seq, 0)",
            )
            return [(str(r[0]), str(r[1]), int(r[2]), int(r[3])) for r in cur.fetchall()]

    def _roll_agent(self, agent_id: str, first: int, end: int) -> None:
        with self._tx(write=True) as cur:
            self._exec(
                cur,
                "INSERT INTO console_hourly_cursors (agent_id, next_seq) VALUES (?, 0)"
                " ON CONFLICT (agent_id) DO NOTHING",
                (agent_id,),
            )
            self._exec(
                cur,
                "UPDATE console_hourly_cursors SET next_seq = ?"
                " WHERE agent_id = ? AND next_seq = ?",
                (end, agent_id, first),
            )
            if cur.rowcount != 1:
                return  # another server counted this range
            self._exec(
                cur,
                f"SELECT client, unix_nanos / {HOUR_NANOS} AS h, COALESCE(technician, ''),"  # noqa: S608
                " COALESCE(area, ''), COALESCE(verdict, ''), COALESCE(action, ''),"
                " COALESCE(rule, ''), COUNT(*) FROM events"
                " WHERE agent_id = ? AND seq >= ? AND seq < ? AND kind = 'access'"
                " AND technician IS NOT NULL AND technician <> ''"
                " GROUP BY client, h, technician, area, verdict, action, rule",
                (agent_id, first, end),
            )
            rows = cur.fetchall()
            for r in rows:
                self._exec(
                    cur,
                    "INSERT INTO console_hourly"
                    " (client, hour_unix, technician, area, verdict, action, rule, events)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT"
                    " (client, hour_unix, technician, area, verdict, action, rule)"
                    " DO UPDATE SET events = console_hourly.events + excluded.events",
                    (r[0], int(r[1]) * 3600, r[2], r[3], r[4], r[5], r[6], int(r[7])),
                )

    def _hours(self, since_nanos: int, until_nanos: int) -> tuple[int, int]:
        return since_nanos // HOUR_NANOS * 3600, -(-until_nanos // HOUR_NANOS) * 3600

    def access_summary(
        self, client: str, since_nanos: int, until_nanos: int
    ) -> list[AccessSummary]:
        """Technicians' accesses to areas per (technician, area, action, verdict, rule), with
        the first and last hour, from the rollup (call `roll_up` first for the newest)."""
        lo, hi = self._hours(since_nanos, until_nanos)
        with self._tx(write=False) as cur:
            self._exec(
                cur,
                "SELECT technician, area, action, verdict, rule, SUM(events), MIN(hour_unix),"
                " MAX(hour_unix) FROM console_hourly"
                " WHERE client = ? AND hour_unix >= ? AND hour_unix < ? AND area <> ''"
                " GROUP BY technician, area, action, verdict, rule"
                " ORDER BY technician, area, action, verdict, rule",
                (client, lo, hi),
            )
            return [
                AccessSummary(r[0], r[1], r[2], r[3], r[4], int(r[5]), int(r[6]), int(r[7]))
                for r in cur.fetchall()
            ]

    def daily_counts(self, client: str, starts: Sequence[int]) -> dict[tuple[str, int], int]:
        """(technician, day index) → accesses to areas, for the days that begin at the unix
        times `starts` (ascending; the last one ends the last day): local days, whatever
        the zone's offsets, counted in the database from the rollup."""
        if len(starts) < 2:
            return {}
        # Fixed integers, never input: the CASE is built from ints only.
        day = " ".join(f"WHEN hour_unix < {int(b)} THEN {i}" for i, b in enumerate(starts[1:]))
        with self._tx(write=False) as cur:
            self._exec(
                cur,
                f"SELECT technician, CASE {day} END AS d, SUM(events)"  # noqa: S608
                " FROM console_hourly WHERE client = ? AND hour_unix >= ? AND hour_unix < ?"
                " AND area <> '' GROUP BY technician, d",
                (client, int(starts[0]) // 3600 * 3600, int(starts[-1])),
            )
            return {(str(r[0]), int(r[1])): int(r[2]) for r in cur.fetchall()}
