"""Built images and the build-step cache: which step (by cache key) made which image."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from ember.control.store import schema
from ember.control.store.engine import Engine


@dataclass(frozen=True)
class ImageRecord:
    image_id: str
    parent_id: str
    step: str
    size_bytes: int
    files: int
    created_at: float


_COLUMNS = (
    schema.images.c.id,
    schema.images.c.parent_id,
    schema.images.c.step,
    schema.images.c.size_bytes,
    schema.images.c.files,
    schema.images.c.created_at,
)


class ImageStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def cached(self, cache_key: str) -> str | None:
        """The image a step with this cache key built, if it still exists."""
        async with self._engine.connect() as conn:
            result = await conn.execute(
                sa.select(schema.image_steps.c.image_id).where(
                    schema.image_steps.c.cache_key == cache_key
                )
            )
            return result.scalar()

    async def add(self, record: ImageRecord, cache_key: str) -> None:
        """Remember a built image and the step that built it (again, after a forced build)."""
        async with self._engine.begin() as conn:
            exists = (
                await conn.execute(
                    sa.select(schema.images.c.id).where(schema.images.c.id == record.image_id)
                )
            ).scalar()
            if exists is None:
                await conn.execute(
                    schema.images.insert().values(
                        id=record.image_id,
                        parent_id=record.parent_id,
                        step=record.step,
                        size_bytes=record.size_bytes,
                        files=record.files,
                        created_at=record.created_at,
                    )
                )
            await conn.execute(
                schema.image_steps.delete().where(schema.image_steps.c.cache_key == cache_key)
            )
            await conn.execute(
                schema.image_steps.insert().values(cache_key=cache_key, image_id=record.image_id)
            )

    async def get(self, image_id: str) -> ImageRecord | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(sa.select(*_COLUMNS).where(schema.images.c.id == image_id))
            ).first()
        return ImageRecord(*row) if row else None

    async def list(self) -> list[ImageRecord]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(sa.select(*_COLUMNS).order_by(schema.images.c.created_at))
            return [ImageRecord(*row) for row in rows]

    async def delete(self, image_id: str) -> bool:
        """Forget the image and the cache entries that lead to it; False if it was unknown."""
        async with self._engine.begin() as conn:
            await conn.execute(
                schema.image_steps.delete().where(schema.image_steps.c.image_id == image_id)
            )
            result = await conn.execute(
                schema.images.delete().where(schema.images.c.id == image_id)
            )
            return bool(result.rowcount)
