"""Built images, and the cache of build steps that made them.

Revision ID: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.create_table(
        "images",
        sa.Column("id", sa.String, primary_key=True),
        sa.Column("parent_id", sa.String, nullable=False, server_default=""),
        sa.Column("step", sa.String, nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("files", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "image_steps",
        sa.Column("cache_key", sa.String, primary_key=True),
        sa.Column("image_id", sa.String, sa.ForeignKey("images.id"), nullable=False),
    )
    op.create_index("ix_image_steps_image_id", "image_steps", ["image_id"])


def downgrade() -> None:
    op.drop_index("ix_image_steps_image_id", "image_steps")
    op.drop_table("image_steps")
    op.drop_table("images")
