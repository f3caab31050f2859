"""Apps remember the key their client made, so that a retried AppCreate finds its app.

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.add_column("apps", sa.Column("client_key", sa.String))
    op.create_index("ix_apps_client_key", "apps", ["client_key"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_apps_client_key", "apps")
    op.drop_column("apps", "client_key")
