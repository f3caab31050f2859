"""Inputs count the times their host failed under them: such a run does not count against the
function's retries, but the count is bounded.

Revision ID: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    op.add_column(
        "inputs", sa.Column("host_losses", sa.Integer, nullable=False, server_default="0")
    )


def downgrade() -> None:
    op.drop_column("inputs", "host_losses")
