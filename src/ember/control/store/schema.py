"""The tables of the control plane, as SQLAlchemy Core metadata.

This is the current shape, used to build queries. The migrations in `migrations/versions/` build
the same shape step by step; `tests/unit/control/store/test_migrations.py` checks they agree.

Times are float seconds since the epoch (read from the injected clock). Ids are short strings
with a prefix that names the kind: `ap-`, `fu-`, `fc-`, `in-`, `ta-` (container), `wk-`.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

apps = sa.Table(
    "apps",
    metadata,
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("name", sa.String, nullable=False, index=True),
    sa.Column("state", sa.Integer, nullable=False),  # proto AppState
    sa.Column("version", sa.Integer, nullable=False, server_default="0"),
    sa.Column("source_blob_id", sa.String, nullable=False, server_default=""),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("stopped_at", sa.Float),
    sa.Column("last_heartbeat_at", sa.Float, nullable=False),
    # Made by the client for each `app.run()`, so that a retried AppCreate finds its app.
    sa.Column("client_key", sa.String),
    sa.Index("ix_apps_client_key", "client_key", unique=True),
)

functions = sa.Table(
    "functions",
    metadata,
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("app_id", sa.String, sa.ForeignKey("apps.id"), nullable=False, index=True),
    sa.Column("name", sa.String, nullable=False),
    sa.Column("definition", sa.LargeBinary, nullable=False),  # proto FunctionDefinition
    sa.UniqueConstraint("app_id", "name"),
)

calls = sa.Table(
    "calls",
    metadata,
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("function_id", sa.String, sa.ForeignKey("functions.id"), nullable=False),
    sa.Column("kind", sa.Integer, nullable=False),  # proto CallKind
    sa.Column("num_inputs", sa.Integer, nullable=False, server_default="0"),
    sa.Column("inputs_complete", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("cancelled", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_at", sa.Float, nullable=False),
    # Set by the expiry loop (`ember.control.expiry`) once nothing is left to run: when the call
    # finished, and when its rows may be deleted. Both NULL while it runs; a late input clears them.
    sa.Column("finished_at", sa.Float),
    sa.Column("expires_at", sa.Float),
    # With the id: the loop pages through unfinished calls (expires_at NULL) in index order.
    sa.Index("ix_calls_expires_at", "expires_at", "id"),
    # The calls of an app that stopped, found through its functions, paged by id.
    sa.Index("ix_calls_function_id", "function_id", "id"),
)

# Input states.
QUEUED, LEASED, DONE, CANCELLED = "queued", "leased", "done", "cancelled"

inputs = sa.Table(
    "inputs",
    metadata,
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("call_id", sa.String, sa.ForeignKey("calls.id"), nullable=False),
    sa.Column("function_id", sa.String, nullable=False),
    sa.Column("idx", sa.Integer, nullable=False),
    sa.Column("args", sa.LargeBinary),
    sa.Column("args_blob_id", sa.String),
    sa.Column("state", sa.String, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    # Runs lost because their host failed (not counted in `attempts`, but bounded).
    sa.Column("host_losses", sa.Integer, nullable=False, server_default="0"),
    sa.Column("container_id", sa.String),
    sa.Column("lease_expires_at", sa.Float),
    sa.Column("available_at", sa.Float, nullable=False),
    sa.UniqueConstraint("call_id", "idx"),
    sa.Index("ix_inputs_state", "state"),
    sa.Index("ix_inputs_container", "container_id"),
    # Which blobs live inputs still name (most inputs carry their arguments inline: not indexed).
    sa.Index(
        "ix_inputs_args_blob_id",
        "args_blob_id",
        sqlite_where=sa.text("args_blob_id IS NOT NULL"),
        postgresql_where=sa.text("args_blob_id IS NOT NULL"),
    ),
)

outputs = sa.Table(
    "outputs",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("call_id", sa.String, nullable=False),
    sa.Column("input_id", sa.String, nullable=False),
    sa.Column("idx", sa.Integer, nullable=False),
    sa.Column("gen_index", sa.Integer, nullable=False),
    sa.Column("result", sa.LargeBinary, nullable=False),  # proto Result
    # The blob the result's payload is in, if any: copied out of `result` so that the blob
    # collector finds the blobs outputs use without parsing every result.
    sa.Column("result_blob_id", sa.String),
    # One output per input (and per yielded item): a result reported twice is stored once.
    sa.UniqueConstraint("input_id", "gen_index"),
    sa.Index("ix_outputs_call_seq", "call_id", "seq"),
    sa.Index(
        "ix_outputs_result_blob_id",
        "result_blob_id",
        sqlite_where=sa.text("result_blob_id IS NOT NULL"),
        postgresql_where=sa.text("result_blob_id IS NOT NULL"),
    ),
    sqlite_autoincrement=True,
)

workers = sa.Table(
    "workers",
    metadata,
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("hostname", sa.String, nullable=False),
    sa.Column("cpu", sa.Float, nullable=False),
    sa.Column("memory_mb", sa.Integer, nullable=False),
    sa.Column("registered_at", sa.Float, nullable=False),
    sa.Column("last_heartbeat_at", sa.Float, nullable=False),
)

# Container states.
STARTING, RUNNING, STOPPING, STOPPED = "starting", "running", "stopping", "stopped"

containers = sa.Table(
    "containers",
    metadata,
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
    sa.Index("ix_containers_state", "state"),
)

logs = sa.Table(
    "logs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("app_id", sa.String, nullable=False),
    sa.Column("function_name", sa.String, nullable=False),
    sa.Column("container_id", sa.String, nullable=False),
    sa.Column("fd", sa.Integer, nullable=False),
    sa.Column("data", sa.Text, nullable=False),
    sa.Column("timestamp", sa.Float, nullable=False),
    sa.Index("ix_logs_app", "app_id", "id"),
    sqlite_autoincrement=True,
)

images = sa.Table(
    "images",
    metadata,
    sa.Column("id", sa.String, primary_key=True),  # `im-`: derived from the manifest's bytes
    sa.Column("parent_id", sa.String, nullable=False, server_default=""),
    sa.Column("step", sa.String, nullable=False),  # a readable description of its last step
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("files", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

# A step's cache key (its parent's key and its own definition) -> the image it built.
image_steps = sa.Table(
    "image_steps",
    metadata,
    sa.Column("cache_key", sa.String, primary_key=True),
    sa.Column("image_id", sa.String, sa.ForeignKey("images.id"), nullable=False, index=True),
)
