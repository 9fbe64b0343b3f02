"""The domain's tables, defined once in SQLAlchemy Core.

This metadata is the single source of truth for the schema: ``init.sql`` is generated from it
(see :mod:`cloudmart.schema`, pinned by a test) and the embedded SQLite database is created from
it. Money is ``DECIMAL``; CHECK constraints are a backstop behind the activities' conditional
updates. Timestamps are written by the application, so both dialects behave alike.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

metadata = sa.MetaData()

MYSQL_TABLE_ARGS: dict[str, Any] = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
}

ORDER_STATUSES = ("PENDING", "COMPLETED", "CANCELLED")
PAYMENT_STATUSES = ("COMPLETED", "FAILED", "CANCELLED", "REFUNDED")
SHIPMENT_STATUSES = ("ARRANGED", "CANCELLED", "FAILED")
RESERVATION_STATUSES = ("RESERVED", "RELEASED", "CONSUMED")

Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
Money = sa.Numeric(12, 2)
OrderId = sa.String(64)
LongText = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")


def _serial_key() -> sa.Column[int]:
    """A table's own autoincrement ``id``: 64-bit, but INTEGER on SQLite, where only an INTEGER
    PRIMARY KEY is the rowid that autoincrements."""
    return sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    )


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


customers = sa.Table(
    "customers",
    metadata,
    sa.Column("customer_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("email", sa.String(320), nullable=False, unique=True),
    sa.Column("balance", Money, nullable=False),
    sa.CheckConstraint("balance >= 0", name="ck_customers_balance"),
    **MYSQL_TABLE_ARGS,
)

books = sa.Table(
    "books",
    metadata,
    sa.Column("book_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("title", sa.String(500), nullable=False),
    sa.Column("price", Money, nullable=False),
    sa.CheckConstraint("price >= 0", name="ck_books_price"),
    **MYSQL_TABLE_ARGS,
)

inventory = sa.Table(
    "inventory",
    metadata,
    sa.Column(
        "book_id", sa.Integer, sa.ForeignKey("books.book_id"), primary_key=True, autoincrement=False
    ),
    sa.Column("available", sa.Integer, nullable=False),
    sa.Column("reserved", sa.Integer, nullable=False),
    sa.CheckConstraint("available >= 0", name="ck_inventory_available"),
    sa.CheckConstraint("reserved >= 0", name="ck_inventory_reserved"),
    **MYSQL_TABLE_ARGS,
)

orders = sa.Table(
    "orders",
    metadata,
    sa.Column("order_id", OrderId, primary_key=True),
    sa.Column("customer_id", sa.Integer, sa.ForeignKey("customers.customer_id"), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("total_amount", Money, nullable=False),
    sa.Column("shipping_address", LongText, nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    sa.CheckConstraint(_in("status", ORDER_STATUSES), name="ck_orders_status"),
    sa.CheckConstraint("total_amount >= 0", name="ck_orders_total"),
    sa.Index("ix_orders_status_created", "status", "created_at"),
    **MYSQL_TABLE_ARGS,
)

order_items = sa.Table(
    "order_items",
    metadata,
    sa.Column("order_id", OrderId, sa.ForeignKey("orders.order_id"), primary_key=True),
    sa.Column("book_id", sa.Integer, sa.ForeignKey("books.book_id"), primary_key=True),
    sa.Column("quantity", sa.Integer, nullable=False),
    sa.Column("unit_price", Money, nullable=False),
    sa.CheckConstraint("quantity > 0", name="ck_order_items_quantity"),
    **MYSQL_TABLE_ARGS,
)

stock_reservations = sa.Table(
    "stock_reservations",
    metadata,
    sa.Column("order_id", OrderId, sa.ForeignKey("orders.order_id"), primary_key=True),
    sa.Column("book_id", sa.Integer, sa.ForeignKey("books.book_id"), primary_key=True),
    sa.Column("quantity", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    sa.CheckConstraint("quantity > 0", name="ck_stock_reservations_quantity"),
    sa.CheckConstraint(_in("status", RESERVATION_STATUSES), name="ck_stock_reservations_status"),
    **MYSQL_TABLE_ARGS,
)

payments = sa.Table(
    "payments",
    metadata,
    sa.Column("order_id", OrderId, sa.ForeignKey("orders.order_id"), primary_key=True),
    sa.Column("customer_id", sa.Integer, sa.ForeignKey("customers.customer_id"), nullable=False),
    sa.Column("amount", Money, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    sa.CheckConstraint("amount >= 0", name="ck_payments_amount"),
    sa.CheckConstraint(_in("status", PAYMENT_STATUSES), name="ck_payments_status"),
    # The fraud screening's sum of a customer's payments taken in the last 24 hours, read from
    # this index alone: the window's entries, however many payments the customer made before
    # it (with the foreign key's index on customer_id alone it read every one of them).
    sa.Index("ix_payments_screening", "customer_id", "status", "created_at", "amount"),
    **MYSQL_TABLE_ARGS,
)

shipments = sa.Table(
    "shipments",
    metadata,
    sa.Column("order_id", OrderId, sa.ForeignKey("orders.order_id"), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("country", sa.String(2), nullable=False),
    sa.Column("address", LongText, nullable=False),
    sa.Column("tracking_number", sa.String(64), nullable=True),
    sa.Column("reason", sa.String(500), nullable=True),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    sa.CheckConstraint(_in("status", SHIPMENT_STATUSES), name="ck_shipments_status"),
    **MYSQL_TABLE_ARGS,
)

# Processed operations: one row per (order id, operation), written in the same transaction as
# the operation's effect. A repeat reads its outcome back; a compensation that finds no row for
# its forward operation writes a tombstone there, so the late forward operation does nothing.
inbox = sa.Table(
    "inbox",
    metadata,
    sa.Column("message_key", sa.String(191), primary_key=True),
    sa.Column("order_id", OrderId, nullable=False),
    sa.Column("operation", sa.String(64), nullable=False),
    sa.Column("outcome", LongText, nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Index("ix_inbox_order", "order_id"),
    **MYSQL_TABLE_ARGS,
)

# Events a service caused, written in the transaction that caused them and relayed afterwards.
outbox = sa.Table(
    "outbox",
    metadata,
    _serial_key(),
    sa.Column("event_id", sa.String(36), nullable=False, unique=True),
    sa.Column("order_id", OrderId, nullable=False),
    sa.Column("sequence", sa.Integer, nullable=False),
    sa.Column("topic", sa.String(100), nullable=False),
    sa.Column("event_type", sa.String(64), nullable=False),
    sa.Column("payload", LongText, nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("published_at", Timestamp, nullable=True),
    # A relay reads the ids of the unpublished rows of its own event types through this index,
    # then locks those rows by primary key (choreography_pattern.relay).
    sa.Index("ix_outbox_unpublished", "published_at", "event_type", "id"),
    sa.Index("ix_outbox_order_seq", "order_id", "sequence"),
    **MYSQL_TABLE_ARGS,
)

# Choreography: events a service has processed (its inbox of event ids). Written in the same
# transaction as the event's effect when it has one, so a redelivered event is skipped.
processed_events = sa.Table(
    "processed_events",
    metadata,
    sa.Column("service", sa.String(32), primary_key=True),
    sa.Column("event_id", sa.String(36), primary_key=True),
    sa.Column("order_id", OrderId, nullable=False),
    sa.Column("event_type", sa.String(64), nullable=False),
    sa.Column("processed_at", Timestamp, nullable=False),
    **MYSQL_TABLE_ARGS,
)

# Choreography: the events the order service has seen for each order, in the order it saw
# them (GET /orders/{id} lists them; the order's COMPLETED/CANCELLED decision reads them).
order_events = sa.Table(
    "order_events",
    metadata,
    _serial_key(),
    sa.Column("event_id", sa.String(36), nullable=False, unique=True),
    sa.Column("order_id", OrderId, nullable=False),
    sa.Column("event_type", sa.String(64), nullable=False),
    sa.Column("producer", sa.String(32), nullable=False),
    sa.Column("sequence", sa.Integer, nullable=False),
    sa.Column("occurred_at", Timestamp, nullable=False),
    sa.Column("received_at", Timestamp, nullable=False),
    sa.Index("ix_order_events_order", "order_id", "id"),
    **MYSQL_TABLE_ARGS,
)

# Choreography: which of shipping's two prerequisites (stock reserved, payment completed) it
# has seen per order, updated in the transaction that records the event as processed.
shipping_prerequisites = sa.Table(
    "shipping_prerequisites",
    metadata,
    sa.Column("order_id", OrderId, primary_key=True),
    sa.Column("stock_reserved", sa.Boolean, nullable=False),
    sa.Column("payment_completed", sa.Boolean, nullable=False),
    sa.Column("shipping_address", LongText, nullable=True),
    sa.Column("updated_at", Timestamp, nullable=False),
    **MYSQL_TABLE_ARGS,
)

# The ledger: every movement of money and stock, appended in the transaction of the operation
# that made it (never updated, never deleted by the application). An account is a customer's
# ``balance`` or one of a book's buckets (``available``, ``reserved``, ``shipped``); the sum of
# an account's deltas is what its row must hold, which ``cloudmart check`` proves (rule
# ``ledger``). A row inserted directly opens its account with what it holds then: a trigger
# (see :func:`cloudmart.schema.ledger_triggers`) writes the ``opening`` entries. ``order_id``
# is the order of the operation, or for a restock or top-up the request's id, as in ``inbox``;
# NULL for an opening. The index covers the check's grouped sum.
LEDGER_ACCOUNTS = ("customer", "book")
LEDGER_BUCKETS = ("balance", "available", "reserved", "shipped")
OPENING = "opening"

ledger_entries = sa.Table(
    "ledger_entries",
    metadata,
    _serial_key(),
    sa.Column("account", sa.String(16), nullable=False),
    sa.Column("account_id", sa.Integer, nullable=False),
    sa.Column("bucket", sa.String(16), nullable=False),
    sa.Column("delta", sa.Numeric(14, 2), nullable=False),
    sa.Column("order_id", OrderId, nullable=True),
    sa.Column("operation", sa.String(64), nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.CheckConstraint(_in("account", LEDGER_ACCOUNTS), name="ck_ledger_account"),
    sa.CheckConstraint(_in("bucket", LEDGER_BUCKETS), name="ck_ledger_bucket"),
    sa.Index("ix_ledger_account", "account", "account_id", "bucket", "delta"),
    sa.Index("ix_ledger_order", "order_id"),
    **MYSQL_TABLE_ARGS,
)
