"""Versioned schema migrations, applied in order and recorded in `schema_version`.

Adding a migration is one file: `NNNN_what.sql` next to this module, dialect-neutral SQL
in which `{bytes}` and `{serial_pk}` are filled in per dialect. Where SQLite and
PostgreSQL truly differ, `NNNN_what.sqlite.sql` / `NNNN_what.postgres.sql` replace the
neutral file for that dialect (a version must then have one per dialect or a neutral one).
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from importlib import resources
from typing import Literal

from server.store.base import StoreError

Dialect = Literal["sqlite", "postgres"]

_NAME = re.compile(
    r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+?)(?:\.(?P<dialect>sqlite|postgres))?\.sql$"
)

_TYPES: dict[Dialect, dict[str, str]] = {
    "sqlite": {"bytes": "BLOB", "serial_pk": "INTEGER PRIMARY KEY AUTOINCREMENT"},
    "postgres": {"bytes": "BYTEA", "serial_pk": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"},
}

SCHEMA_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_version (
    version BIGINT PRIMARY KEY,
    name TEXT NOT NULL,
    applied_unix BIGINT NOT NULL
)"""


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step for one dialect."""

    version: int
    name: str
    sql: str


def migrations(dialect: Dialect) -> list[Migration]:
    """Every migration for `dialect`, in version order; StoreError if the files disagree."""
    neutral: dict[int, tuple[str, str]] = {}
    specific: dict[int, tuple[str, str]] = {}
    for entry in resources.files(__package__).iterdir():
        match = _NAME.match(entry.name)
        if match is None:
            continue
        version = int(match["version"])
        target = neutral if match["dialect"] is None else specific
        if match["dialect"] not in (None, dialect):
            continue
        if version in target:
            raise StoreError(
                f"two migrations have version {version} ({entry.name} and {target[version][0]}),"
                " expected one version per file"
            )
        target[version] = (match["name"], entry.read_text(encoding="utf-8"))
    chosen = neutral | specific
    found = sorted(chosen)
    if found != list(range(1, len(found) + 1)):
        raise StoreError(f"migration versions are {found}, expected 1..{len(found)} with no gap")
    types = _TYPES[dialect]
    return [
        Migration(
            v,
            chosen[v][0],
            chosen[v][1]
            .replace("{bytes}", types["bytes"])
            .replace("{serial_pk}", types["serial_pk"]),
        )
        for v in found
    ]


def latest_version(dialect: Dialect) -> int:
    """The schema version this code knows."""
    return len(migrations(dialect))


def sqlite_statements(sql: str) -> list[str]:
    """Split a script into complete statements (triggers included), without SQL comments only."""
    statements: list[str] = []
    pending = ""
    for line in sql.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            if _has_code(pending):
                statements.append(pending.strip())
            pending = ""
    if _has_code(pending):
        raise StoreError(f"migration ends inside a statement: {pending.strip()[:80]!r}")
    return statements


def _has_code(chunk: str) -> bool:
    return any(line.strip() and not line.strip().startswith("--") for line in chunk.splitlines())
