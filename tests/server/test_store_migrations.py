"""Schema migrations: from empty, re-run, forward from an older schema, refusal of a newer one."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg
import pytest

from policies.model import Action
from server.access import Request, State
from server.store import SchemaTooNewError, Store, StoreError, migrations, open_store
from server.store.access import AccessStore
from tests.server.conftest import agent_row, append, records

LATEST = migrations.latest_version("sqlite")
TABLES = {
    "schema_version",
    "agents",
    "enrolment_tokens",
    "events",
    "agent_checkpoints",
    "server_checkpoints",
    "integrity_events",
    "agent_keys",
}


def tables(url: str) -> set[str]:
    if url.startswith("postgresql://"):
        with psycopg.connect(url) as conn:
            rows = conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            ).fetchall()
    else:
        with sqlite3.connect(url) as conn:
            rows = conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            ).fetchall()
    return {r[0] for r in rows}


def migration_files() -> int:
    """How many schema versions the migration directory holds, counted from the file names
    (independently of the loader, so a file the loader skipped is still counted)."""
    directory = Path(migrations.__file__).parent
    return len({p.name[:4] for p in directory.glob("[0-9][0-9][0-9][0-9]_*.sql")})


def test_empty_database_migrates_to_the_latest_schema(store_url: str) -> None:
    store = open_store(store_url, migrate=False)
    assert store.schema_version() == 0
    store.migrate()
    assert store.schema_version() == migration_files() == LATEST
    store.close()
    assert tables(store_url) >= TABLES  # other components add their own tables


def test_migrating_again_changes_nothing(store: Store, store_url: str) -> None:
    store.add_agent(agent_row())
    append(store, records("clinic-01", 0, 3))
    store.migrate()
    store.close()
    reopened = open_store(store_url)
    assert reopened.schema_version() == LATEST
    assert reopened.count_events() == 3
    reopened.close()


def test_older_schema_migrates_forward(
    store: Store, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.add_agent(agent_row())
    store.close()
    known = migrations.migrations

    def with_extra(dialect: migrations.Dialect) -> list[migrations.Migration]:
        extra = "CREATE TABLE incidents (id BIGINT PRIMARY KEY, note {bytes});\n"
        mapped = extra.replace("{bytes}", "BLOB" if dialect == "sqlite" else "BYTEA")
        return [*known(dialect), migrations.Migration(LATEST + 1, "incidents", mapped)]

    monkeypatch.setattr(migrations, "migrations", with_extra)
    upgraded = open_store(store_url)
    assert upgraded.schema_version() == LATEST + 1
    assert upgraded.get_agent("clinic-01") == agent_row()
    upgraded.close()
    assert "incidents" in tables(store_url)


def test_newer_schema_is_refused(store: Store, store_url: str) -> None:
    store.close()
    _raw(store_url, "INSERT INTO schema_version (version, name, applied_unix) VALUES (99, 'x', 0)")
    with pytest.raises(SchemaTooNewError, match=f"version 99, newer than the {LATEST}") as caught:
        open_store(store_url)
    assert "upgrade" in caught.value.hint


def test_failed_migration_leaves_the_schema_as_it_was(
    store: Store, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.close()
    known = migrations.migrations

    def broken(dialect: migrations.Dialect) -> list[migrations.Migration]:
        bad = "CREATE TABLE half_done (x BIGINT);\nTHIS IS NOT SQL;\n"
        return [*known(dialect), migrations.Migration(LATEST + 1, "broken", bad)]

    monkeypatch.setattr(migrations, "migrations", broken)
    with pytest.raises(StoreError):
        open_store(store_url)
    monkeypatch.undo()
    assert "half_done" not in tables(store_url)
    reopened = open_store(store_url)
    assert reopened.schema_version() == LATEST
    reopened.close()


def _raw(url: str, sql: str) -> None:
    if url.startswith("postgresql://"):
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql)
    else:
        with sqlite3.connect(url) as conn:
            conn.execute(sql)


# -- the migration files themselves (no database) ----------------------------------------------


def test_both_dialects_have_the_same_steps() -> None:
    sqlite_steps = migrations.migrations("sqlite")
    postgres_steps = migrations.migrations("postgres")
    assert [(m.version, m.name) for m in sqlite_steps] == [
        (m.version, m.name) for m in postgres_steps
    ]
    assert [m.version for m in sqlite_steps] == list(range(1, LATEST + 1))
    for step in (*sqlite_steps, *postgres_steps):
        assert "{" not in step.sql, f"unfilled placeholder in migration {step.name}"


def test_sqlite_script_splits_into_whole_statements() -> None:
    script = (
        "-- a comment; with a semicolon\n"
        "CREATE TABLE t (x BIGINT);\n"
        "CREATE TRIGGER t_guard BEFORE DELETE ON t BEGIN\n"
        "  SELECT RAISE(ABORT, 'evidence is append-only');\n"
        "END;\n"
    )
    statements = migrations.sqlite_statements(script)
    assert len(statements) == 2
    assert statements[1].startswith("CREATE TRIGGER")
    assert statements[1].endswith("END;")


def test_sqlite_script_ending_mid_statement_is_refused() -> None:
    with pytest.raises(StoreError, match="ends inside a statement"):
        migrations.sqlite_statements("CREATE TABLE t (x BIGINT)\n")


def test_requests_stored_before_the_creation_index_are_found_through_it(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    known = migrations.migrations
    monkeypatch.setattr(migrations, "migrations", lambda dialect: known(dialect)[:6])
    old = open_store(store_url)
    assert old.schema_version() == 6
    access = AccessStore(old)
    for i, created in enumerate((T0 - 90 * 86_400, T0, T0 + 3600)):
        access.add_request(_pending(f"jit-{i}", created))
    old.close()
    monkeypatch.undo()
    upgraded = open_store(store_url)
    assert upgraded.schema_version() >= 7
    found = AccessStore(upgraded).list_requests(client="clinic", touching=(T0, T0 + 86_400))
    assert [r.request.id for r in found] == ["jit-2", "jit-1"]
    upgraded.close()
    assert "access_requests_by_created" in indexes(store_url)


T0 = 1_700_000_000


def _pending(request_id: str, created: int) -> Request:
    return Request(
        id=request_id,
        client="clinic",
        technician="tech1",
        requester="tech1",
        area="records",
        actions=(Action.READ,),
        start_unix=0,
        end_unix=0,
        duration_seconds=3600,
        ticket="T-1",
        reason="printer",
        break_glass=False,
        state=State.PENDING,
        created_unix=created,
        pending_until_unix=created + 3600,
        approvals_needed=1,
        approver_kinds=("client_manager",),
        agreement_version="v1",
    )


def indexes(url: str) -> set[str]:
    if url.startswith("postgresql://"):
        with psycopg.connect(url) as conn:
            rows = conn.execute(
                "SELECT indexname FROM pg_indexes WHERE schemaname = 'public'"
            ).fetchall()
    else:
        with sqlite3.connect(url) as conn:
            rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'").fetchall()
    return {r[0] for r in rows}
