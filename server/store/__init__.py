"""The server's evidence store: SQLite (embedded default) or PostgreSQL (shared), one schema."""

from __future__ import annotations

from pathlib import Path

from server.store.base import (
    AgentKeyRow,
    AgentRow,
    EventCursor,
    IntegrityRow,
    SchemaTooNewError,
    Store,
    StoreConflictError,
    StoredRecord,
    StoreError,
    TokenRow,
)

__all__ = [
    "AgentKeyRow",
    "AgentRow",
    "EventCursor",
    "IntegrityRow",
    "SchemaTooNewError",
    "Store",
    "StoreConflictError",
    "StoreError",
    "StoredRecord",
    "TokenRow",
    "open_store",
]

_POSTGRES_SCHEMES = ("postgresql://", "postgres://")
_SQLITE_SCHEME = "sqlite:///"


def open_store(url_or_path: str | Path, *, migrate: bool = True) -> Store:
    """Open the store named by a PostgreSQL URL, `sqlite:///PATH`, or a plain file path.

    Applies pending migrations unless `migrate=False`. Raises StoreError if it cannot open,
    SchemaTooNewError if the database was written by a newer Custodes.
    """
    target = str(url_or_path)
    store: Store
    if target.startswith(_POSTGRES_SCHEMES):
        from server.store.postgres import PostgresStore  # noqa: PLC0415 - psycopg only when used

        store = PostgresStore(target)
    else:
        path = target.removeprefix(_SQLITE_SCHEME) if target.startswith(_SQLITE_SCHEME) else target
        from server.store.sqlite import SqliteStore  # noqa: PLC0415 - symmetric with postgres

        store = SqliteStore(Path(path))
    if migrate:
        try:
            store.migrate()
        except BaseException:
            store.close()
            raise
    return store
