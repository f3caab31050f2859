"""What the expiry has still to delete, read straight from the calls table."""

import sqlalchemy as sa

from ember.control.store import Store, schema


async def expired_calls(store: Store, now: float) -> list[str]:
    """The calls whose rows may go by `now`, soonest first."""
    c = schema.calls.c
    async with store.engine.connect() as conn:
        rows = await conn.execute(sa.select(c.id).where(c.expires_at <= now).order_by(c.expires_at))
        return list(rows.scalars())
