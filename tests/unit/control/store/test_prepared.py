"""Prepared statements run on SQLite's cursor as SQLAlchemy would run them: in the caller's
transaction, with the caller's and the statement's own values, the bind types' conversions, and
returned rows in the order of the parameters."""

from decimal import Decimal

import pytest
import sqlalchemy as sa

from ember.control.store import Store
from ember.control.store.engine import Prepared

metadata = sa.MetaData()
things = sa.Table(
    "things",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String, nullable=False),
    sa.Column("weight", sa.Float, nullable=False),
    sa.Column("kept", sa.Boolean, nullable=False),
    sa.Column("kind", sa.String, nullable=False, server_default="plain"),
)
_t = things.c

INSERT = Prepared.of(
    things.insert()
    .values(name=sa.bindparam("name"), weight=sa.bindparam("weight"), kept=sa.bindparam("kept"))
    .returning(_t.seq, _t.name, _t.kept)
)
# A statement with a value of its own ('plain'), besides the caller's.
RENAME_PLAIN = Prepared.of(
    things.update()
    .where(_t.name == sa.bindparam("old"), _t.kind == "plain")
    .values(name=sa.bindparam("new"))
)


@pytest.fixture
async def table(store: Store) -> Store:
    async with store.engine.begin() as conn:
        await conn.execute(sa.schema.CreateTable(things))
    return store


async def rows(store: Store) -> list[tuple[object, ...]]:
    async with store.engine.connect() as conn:
        result = await conn.execute(sa.select(_t.name, _t.weight, _t.kept).order_by(_t.seq))
        return [tuple(row) for row in result]


async def test_rows_come_back_in_the_order_of_the_parameters(table: Store) -> None:
    names = ["c", "a", "b"]
    async with table.engine.begin() as conn:
        ran = await conn.run(INSERT, [{"name": n, "weight": 1.0, "kept": True} for n in names])
    assert [name for _seq, name, _kept in ran.rows] == names
    assert [seq for seq, _name, _kept in ran.rows] == [1, 2, 3]
    assert ran.rowcount == 3


async def test_values_are_converted_as_their_column_types_say(table: Store) -> None:
    async with table.engine.begin() as conn:
        # The driver cannot store a Decimal; SQLAlchemy's Float makes it a float first.
        ran = await conn.run(INSERT, {"name": "a", "weight": Decimal("2.5"), "kept": False})
    assert ran.rows == [(1, "a", False)]
    assert ran.rows[0][2] is False  # SQLite's 0, read as the Boolean column it is
    assert await rows(table) == [("a", 2.5, False)]


async def test_the_statements_own_values_are_used_beside_the_callers(table: Store) -> None:
    async with table.engine.begin() as conn:
        await conn.run(INSERT, {"name": "a", "weight": 1.0, "kept": True})
        await conn.execute(things.insert(), {"name": "b", "weight": 1.0, "kept": True, "kind": "x"})
        one = await conn.run(RENAME_PLAIN, {"old": "a", "new": "A"})
        none = await conn.run(RENAME_PLAIN, {"old": "b", "new": "B"})
    assert (one.rowcount, none.rowcount) == (1, 0)
    assert [name for name, _w, _k in await rows(table)] == ["A", "b"]


async def test_a_prepared_write_is_part_of_the_callers_transaction(table: Store) -> None:
    with pytest.raises(RuntimeError):
        async with table.engine.begin() as conn:
            await conn.run(INSERT, {"name": "a", "weight": 1.0, "kept": True})
            raise RuntimeError("undo")
    assert await rows(table) == []
    async with table.engine.begin() as conn:
        await conn.run(INSERT, {"name": "b", "weight": 1.0, "kept": True})
        await conn.execute(things.insert(), {"name": "c", "weight": 1.0, "kept": True})
    assert [name for name, _w, _k in await rows(table)] == ["b", "c"]


async def test_a_statement_that_expands_a_list_is_refused(table: Store) -> None:
    expanding = Prepared.of(
        things.delete().where(_t.name.in_(sa.bindparam("names", expanding=True)))
    )
    async with table.engine.begin() as conn:
        with pytest.raises(TypeError, match="cannot expand 'names'"):
            await conn.run(expanding, {"names": ["a"]})


async def test_a_parameter_left_out_is_an_error_not_a_null(table: Store) -> None:
    async with table.engine.begin() as conn:
        with pytest.raises(KeyError, match="'weight'"):
            await conn.run(INSERT, {"name": "a", "kept": True})
