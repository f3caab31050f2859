"""The few statements whose spelling differs between SQLite and PostgreSQL."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from ember.control.store.engine import Connection


def insert_ignore(conn: Connection, table: sa.Table) -> sa.Insert:
    """INSERT that skips rows whose unique key exists already."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table).on_conflict_do_nothing()
