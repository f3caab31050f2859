"""Expiry: when a call finished and when its rows may go; which blobs inputs and outputs name.

The outputs stored before this revision have their blob ids copied out of their results here, so
that the blob collector, which reads only the new column, does not take a blob one of them uses.

Revision ID: 0004
"""

import sqlalchemy as sa
from alembic import op

from ember.proto import api_pb2

revision = "0004"
down_revision = "0003"

_BATCH = 1000


def upgrade() -> None:
    op.add_column("calls", sa.Column("finished_at", sa.Float))
    op.add_column("calls", sa.Column("expires_at", sa.Float))
    op.create_index("ix_calls_expires_at", "calls", ["expires_at", "id"])
    op.create_index("ix_calls_function_id", "calls", ["function_id", "id"])
    op.create_index(
        "ix_inputs_args_blob_id",
        "inputs",
        ["args_blob_id"],
        sqlite_where=sa.text("args_blob_id IS NOT NULL"),
        postgresql_where=sa.text("args_blob_id IS NOT NULL"),
    )
    op.add_column("outputs", sa.Column("result_blob_id", sa.String))
    op.create_index(
        "ix_outputs_result_blob_id",
        "outputs",
        ["result_blob_id"],
        sqlite_where=sa.text("result_blob_id IS NOT NULL"),
        postgresql_where=sa.text("result_blob_id IS NOT NULL"),
    )
    _copy_result_blob_ids()


def _copy_result_blob_ids() -> None:
    outputs = sa.table(
        "outputs",
        sa.column("seq", sa.Integer),
        sa.column("result", sa.LargeBinary),
        sa.column("result_blob_id", sa.String),
    )
    bind = op.get_bind()
    after = 0
    while True:
        rows = bind.execute(
            sa.select(outputs.c.seq, outputs.c.result)
            .where(outputs.c.seq > after)
            .order_by(outputs.c.seq)
            .limit(_BATCH)
        ).all()
        if not rows:
            return
        after = rows[-1].seq
        found = [
            {"row_seq": row.seq, "blob_id": blob_id}
            for row in rows
            if b"bl-" in row.result
            and (blob_id := api_pb2.Result.FromString(row.result).data.blob_id)
        ]
        if found:
            bind.execute(
                outputs.update()
                .where(outputs.c.seq == sa.bindparam("row_seq"))
                .values(result_blob_id=sa.bindparam("blob_id")),
                found,
            )


def downgrade() -> None:
    op.drop_index("ix_outputs_result_blob_id", "outputs")
    op.drop_column("outputs", "result_blob_id")
    op.drop_index("ix_inputs_args_blob_id", "inputs")
    op.drop_index("ix_calls_function_id", "calls")
    op.drop_index("ix_calls_expires_at", "calls")
    op.drop_column("calls", "expires_at")
    op.drop_column("calls", "finished_at")
