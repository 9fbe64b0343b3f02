"""The engine's two tables, in SQLAlchemy Core, on a metadata of their own.

``saga_instances`` is the projection (one row per saga, rewritten by every history append in
the same transaction, guarded by ``version``/``owner``/``next_seq``); ``saga_step_logs`` is the
append-only history, ``(saga_id, seq)`` its primary key. Timestamps are naive UTC written by the
application. Runs unchanged on MySQL 8.0, MariaDB 10.11 and SQLite.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

__all__ = ["metadata", "saga_instances", "saga_step_logs"]

metadata = sa.MetaData()

_TABLE_ARGS: dict[str, Any] = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
}
Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
LongText = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")

saga_instances = sa.Table(
    "saga_instances",
    metadata,
    sa.Column("saga_id", sa.String(36), primary_key=True),
    # The engine's workflow_id: the business key (the order id), unique.
    sa.Column("order_id", sa.String(64), nullable=False, unique=True),
    sa.Column("workflow_name", sa.String(100), nullable=False),
    # STARTED, ORDER_CREATED, STOCK_RESERVED, PAYMENT_COMPLETED, SHIPPING_ARRANGED, COMPLETED,
    # COMPENSATION_STARTED, FAILED; PARKED = nondeterminism, waits for an operator.
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("current_step", sa.String(100), nullable=True),
    sa.Column("input", LongText, nullable=False),
    sa.Column("result", LongText, nullable=True),
    sa.Column("failure_reason", LongText, nullable=True),
    sa.Column("owner", sa.String(100), nullable=True),
    sa.Column("lease_expires_at", Timestamp, nullable=True),
    sa.Column("version", sa.Integer, nullable=False),  # fencing: +1 per lease acquisition
    sa.Column("next_seq", sa.Integer, nullable=False),
    sa.Column("needs_operator", sa.Boolean, nullable=False),
    sa.Column("cancel_requested", sa.Boolean, nullable=False),
    sa.Column("compensation_attempts", sa.Integer, nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    sa.Column("failed_step", sa.String(100), nullable=True),
    # The pivot step completed: a cancel or compensate is refused from here on.
    sa.Column("past_pivot", sa.Boolean, nullable=False, server_default=sa.false()),
    # An operator's action (retry, resume, compensate, cancel of a parked saga) waiting for the
    # saga's driver, as JSON; its id is what the driver's append clears.
    sa.Column("operator_request_id", sa.String(36), nullable=True),
    sa.Column("operator_request", LongText, nullable=True),
    sa.Index("ix_saga_instances_recovery", "status", "lease_expires_at"),
    # The listing (newest first, keyset on created_at then saga_id, which InnoDB appends to
    # every secondary index) by each filter an operator reaches for; the order id prefix uses
    # the unique index.
    sa.Index("ix_saga_instances_status_created", "status", "created_at"),
    sa.Index("ix_saga_instances_created", "created_at"),
    # Also what counts the sagas flagged for an operator.
    sa.Index("ix_saga_instances_operator_created", "needs_operator", "created_at"),
    sa.Index("ix_saga_instances_workflow_created", "workflow_name", "created_at"),
    sa.Index("ix_saga_instances_failed_step_created", "failed_step", "created_at"),
    **_TABLE_ARGS,
)

saga_step_logs = sa.Table(
    "saga_step_logs",
    metadata,
    sa.Column("saga_id", sa.String(36), primary_key=True, autoincrement=False),
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("event_type", sa.String(40), nullable=False),
    sa.Column("position", sa.Integer, nullable=True),
    sa.Column("step_name", sa.String(100), nullable=True),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("payload", LongText, nullable=True),
    sa.Column("owner", sa.String(100), nullable=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    **_TABLE_ARGS,
)
