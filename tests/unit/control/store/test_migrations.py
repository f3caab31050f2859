"""The migrations build exactly the tables in `schema.py`, once."""

import logging

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from ember.control.store import Store, schema, sqlite_url
from ember.proto import api_pb2
from tests.unit.control.store.old_database import database_at


@pytest.fixture
async def migrated_url(tmp_path) -> str:
    url = sqlite_url(tmp_path / "ember.db")
    store = await Store.open(url)
    await store.close()
    return url


def inspect_tables(url: str) -> dict[str, dict[str, object]]:
    """Per table: its columns, primary key, indexes, unique constraints and foreign keys."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            return {
                name: {
                    "columns": {c["name"]: c["nullable"] for c in inspector.get_columns(name)},
                    "primary_key": inspector.get_pk_constraint(name)["constrained_columns"],
                    "indexes": {
                        (i["name"], tuple(i["column_names"])) for i in inspector.get_indexes(name)
                    },
                    "unique": {
                        tuple(u["column_names"]) for u in inspector.get_unique_constraints(name)
                    },
                    "foreign_keys": {
                        (tuple(f["constrained_columns"]), f["referred_table"])
                        for f in inspector.get_foreign_keys(name)
                    },
                }
                for name in inspector.get_table_names()
                if name != "alembic_version"
            }
    finally:
        engine.dispose()


def declared_tables() -> dict[str, dict[str, object]]:
    return {
        table.name: {
            "columns": {c.name: c.nullable for c in table.columns},
            "primary_key": [c.name for c in table.primary_key.columns],
            "indexes": {(i.name, tuple(c.name for c in i.columns)) for i in table.indexes},
            "unique": {
                tuple(c.name for c in u.columns)
                for u in table.constraints
                if isinstance(u, sa.UniqueConstraint)
            },
            "foreign_keys": {((f.parent.name,), f.column.table.name) for f in table.foreign_keys},
        }
        for table in schema.metadata.sorted_tables
    }


def test_migrated_database_matches_schema_metadata(migrated_url: str) -> None:
    engine = sa.create_engine(migrated_url)
    try:
        with engine.connect() as conn:
            differences = compare_metadata(MigrationContext.configure(conn), schema.metadata)
    finally:
        engine.dispose()
    assert differences == []


def test_migrated_tables_have_the_declared_columns_keys_and_indexes(migrated_url: str) -> None:
    assert inspect_tables(migrated_url) == declared_tables()


async def test_first_open_runs_every_migration_and_second_open_runs_none(
    tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    url = sqlite_url(tmp_path / "ember.db")
    with caplog.at_level(logging.INFO, logger="alembic.runtime.migration"):
        store = await Store.open(url)
        await store.close()
        first = [r.getMessage() for r in caplog.records if "Running upgrade" in r.getMessage()]
        caplog.clear()
        store = await Store.open(url)
        await store.close()
        second = [r.getMessage() for r in caplog.records if "Running upgrade" in r.getMessage()]
    assert [message.split("->")[1].split(",")[0].strip() for message in first] == [
        "0001",
        "0002",
        "0003",
        "0004",
        "0005",
    ]
    assert second == []


async def test_reopening_keeps_the_data(tmp_path) -> None:
    url = sqlite_url(tmp_path / "ember.db")
    store = await Store.open(url)
    app_id = await store.apps.create("keep", api_pb2.APP_STATE_DETACHED, 5.0)
    await store.close()

    store = await Store.open(url)
    try:
        app = await store.apps.get(app_id)
    finally:
        await store.close()
    assert (app.name, app.state, app.created_at) == ("keep", api_pb2.APP_STATE_DETACHED, 5.0)


async def test_a_database_of_the_first_version_is_upgraded_with_its_data(tmp_path) -> None:
    url = sqlite_url(tmp_path / "old.db")
    with database_at(tmp_path / "old.db", "0001") as conn:
        conn.execute(
            sa.text(
                "INSERT INTO apps (id, name, state, created_at, last_heartbeat_at)"
                " VALUES ('ap-old', 'old', 3, 1.0, 1.0)"
            )
        )
    store = await Store.open(url)
    try:
        assert (await store.apps.get("ap-old")).name == "old"
        assert await store.apps.create("new", api_pb2.APP_STATE_EPHEMERAL, 2.0, "key-1") == (
            await store.apps.create("new", api_pb2.APP_STATE_EPHEMERAL, 3.0, "key-1")
        )
    finally:
        await store.close()
