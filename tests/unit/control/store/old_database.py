"""A database as an earlier version of ember left it: migrated only up to a revision."""

import contextlib
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from ember.control.store import sqlite_url
from ember.control.store.engine import MIGRATIONS_DIR


@contextlib.contextmanager
def database_at(path: Path, revision: str) -> Iterator[sa.Connection]:
    """A new SQLite database at `path`, migrated up to `revision`; the block writes what such a
    version stored (one transaction), and `Store.open(sqlite_url(path))` migrates the rest."""
    engine = sa.create_engine(sqlite_url(path))
    try:
        with engine.begin() as conn:
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS_DIR))
            config.attributes["connection"] = conn
            command.upgrade(config, revision)
            yield conn
    finally:
        engine.dispose()
