"""The first tables: apps, functions, calls, inputs, outputs, workers, containers, logs.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "apps",
        sa.Column("id", sa.String, primary_key=True),
        sa.Column("name", sa.String, nullable=False, index=True),
        sa.Column("state", sa.Integer, nullable=False),
        sa.Column("version", sa.Integer, nullable=False, server_default="0"),
        sa.Column("source_blob_id", sa.String, nullable=False, server_default=""),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("stopped_at", sa.Float),
        sa.Column("last_heartbeat_at", sa.Float, nullable=False),
    )
    op.create_table(
        "functions",
        sa.Column("id", sa.String, primary_key=True),
        sa.Column("app_id", sa.String, sa.ForeignKey("apps.id"), nullable=False, index=True),
        sa.Column("name", sa.String, nullable=False),
        sa.Column("definition", sa.LargeBinary, nullable=False),
        sa.UniqueConstraint("app_id", "name"),
    )
    op.create_table(
        "calls",
        sa.Column("id", sa.String, primary_key=True),
        sa.Column("function_id", sa.String, sa.ForeignKey("functions.id"), nullable=False),
        sa.Column("kind", sa.Integer, nullable=False),
        sa.Column("num_inputs", sa.Integer, nullable=False, server_default="0"),
        sa.Column("inputs_complete", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("cancelled", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "inputs",
        sa.Column("id", sa.String, primary_key=True),
        sa.Column("call_id", sa.String, sa.ForeignKey("calls.id"), nullable=False),
        sa.Column("function_id", sa.String, nullable=False),
        sa.Column("idx", sa.Integer, nullable=False),
        sa.Column("args", sa.LargeBinary),
        sa.Column("args_blob_id", sa.String),
        sa.Column("state", sa.String, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("container_id", sa.String),
        sa.Column("lease_expires_at", sa.Float),
        sa.Column("available_at", sa.Float, nullable=False),
        sa.UniqueConstraint("call_id", "idx"),
    )
    op.create_index("ix_inputs_state", "inputs", ["state"])
    op.create_index("ix_inputs_container", "inputs", ["container_id"])
    op.create_table(
        "outputs",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("call_id", sa.String, nullable=False),
        sa.Column("input_id", sa.String, nullable=False),
        sa.Column("idx", sa.Integer, nullable=False),
        sa.Column("gen_index", sa.Integer, nullable=False),
        sa.Column("result", sa.LargeBinary, nullable=False),
        sa.UniqueConstraint("input_id", "gen_index"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_outputs_call_seq", "outputs", ["call_id", "seq"])
    op.create_table(
        "workers",
        sa.Column("id", sa.String, primary_key=True),
        sa.Column("hostname", sa.String, nullable=False),
        sa.Column("cpu", sa.Float, nullable=False),
        sa.Column("memory_mb", sa.Integer, nullable=False),
        sa.Column("registered_at", sa.Float, nullable=False),
        sa.Column("last_heartbeat_at", sa.Float, nullable=False),
    )
    op.create_table(
        "containers",
        sa.Column("id", sa.String, primary_key=True),
        sa.Column("app_id", sa.String, nullable=False),
        sa.Column("function_id", sa.String, nullable=False),
        sa.Column("worker_id", sa.String, nullable=False),
        sa.Column("state", sa.String, nullable=False),
        sa.Column("cpu", sa.Float, nullable=False),
        sa.Column("memory_mb", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("stopped_at", sa.Float),
        sa.Column("exit_reason", sa.String, nullable=False, server_default=""),
    )
    op.create_index("ix_containers_state", "containers", ["state"])
    op.create_table(
        "logs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("app_id", sa.String, nullable=False),
        sa.Column("function_name", sa.String, nullable=False),
        sa.Column("container_id", sa.String, nullable=False),
        sa.Column("fd", sa.Integer, nullable=False),
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("timestamp", sa.Float, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_logs_app", "logs", ["app_id", "id"])


def downgrade() -> None:
    for table in (
        "logs",
        "containers",
        "workers",
        "outputs",
        "inputs",
        "calls",
        "functions",
        "apps",
    ):
        op.drop_table(table)
