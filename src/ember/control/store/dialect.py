"""The few statements whose spelling differs between SQLite and PostgreSQL."""

from __future__ import annotations

import functools

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from ember.control.store.engine import Connection


def insert_ignore(conn: Connection, table: sa.Table) -> sa.Insert:
    """INSERT that skips rows whose unique key exists already. The statement is made once per
    dialect and table: run it with parameters, so SQLAlchemy reuses its compiled form."""
    return insert_ignore_for(conn.dialect.name, table)


@functools.cache
def insert_ignore_for(dialect_name: str, table: sa.Table) -> sa.Insert:
    dialect = postgresql if dialect_name == "postgresql" else sqlite
    return dialect.insert(table).on_conflict_do_nothing()
