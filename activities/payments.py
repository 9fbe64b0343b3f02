"""Payment operations: a customer's balance only moves through conditional updates.

``balance - amount`` is applied only ``WHERE balance >= amount``, so no interleaving of
concurrent payments can take a balance below zero; each order has one payment row whose
status moves COMPLETED → CANCELLED/REFUNDED at most once, and only that move credits back.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from activities._inbox import Emit, Later, now, run_compensation, run_once
from activities._ledger import balance_moved
from activities.db import Database
from activities.errors import (
    CustomerNotFound,
    DomainError,
    FraudSuspected,
    IdempotencyKeyReused,
    InvalidCommand,
    NotFound,
    PaymentFailed,
)
from activities.orders import order_status, require_found
from activities.tables import customers, payments
from contracts.commands import (
    Compensation,
    OrderRef,
    OrderScreened,
    PaymentView,
    ProcessPayment,
    ScreenOrder,
    ToppedUp,
    TopUp,
)
from prepared_sql import Prepared, run_together

# The forward path runs them for every order (see prepared_sql).
_DEBIT = Prepared(
    customers.update()
    .where(
        customers.c.customer_id == sa.bindparam("customer"),
        customers.c.balance >= sa.bindparam("amount"),
    )
    .values(balance=customers.c.balance - sa.bindparam("amount"))
)
_INSERT_PAYMENT = Prepared(payments.insert())
_CREDIT = Prepared(
    customers.update()
    .where(customers.c.customer_id == sa.bindparam("customer"))
    .values(balance=customers.c.balance + sa.bindparam("amount"))
)


async def process_payment(
    db: Database, cmd: ProcessPayment, *, emit: Emit | None = None
) -> PaymentView:
    """Debit the order's amount from the customer's balance; PaymentFailed when it is short.

    A failed payment leaves a FAILED payment row and the balance untouched.
    """

    async def effect(conn: AsyncConnection, later: Later) -> PaymentView | DomainError:
        # The order's check and the debit, in one round trip.
        found, debited = await run_together(
            conn,
            [
                order_status(cmd.order_id),
                (_DEBIT, {"customer": cmd.customer_id, "amount": cmd.amount}),
            ],
        )
        require_found(found, cmd.order_id)
        refusal: DomainError | None = None
        if debited.matched != 1:
            balance = await conn.scalar(
                sa.select(customers.c.balance).where(customers.c.customer_id == cmd.customer_id)
            )
            if balance is None:
                raise CustomerNotFound(
                    f"customer {cmd.customer_id} does not exist", customer_id=cmd.customer_id
                )
            refusal = PaymentFailed(
                f"balance {balance} is less than {cmd.amount}",
                order_id=cmd.order_id,
                balance=str(balance),
                amount=str(cmd.amount),
            )
        status = "FAILED" if refusal else "COMPLETED"
        if refusal is None:  # the debit's entry goes with the outcome, in its packet
            later.add(
                balance_moved(
                    cmd.customer_id,
                    -cmd.amount,
                    order_id=cmd.order_id,
                    operation="process_payment",
                )
            )
        stamp = now()
        later.add(
            (
                _INSERT_PAYMENT,
                {
                    "order_id": cmd.order_id,
                    "customer_id": cmd.customer_id,
                    "amount": cmd.amount,
                    "status": status,
                    "created_at": stamp,
                    "updated_at": stamp,
                },
            )
        )
        return refusal or PaymentView(
            order_id=cmd.order_id,
            customer_id=cmd.customer_id,
            amount=cmd.amount,
            status="COMPLETED",
        )

    return await run_once(db, cmd.order_id, "process_payment", PaymentView, effect, emit)


# What one customer may pay in any 24 hours: a screened order that would take them past it is
# refused as suspected fraud.
DAILY_LIMIT = Decimal("30000.00")
SCREENING_WINDOW = timedelta(hours=24)


async def screen_order(db: Database, cmd: ScreenOrder) -> OrderScreened:
    """Screen an order before its payment: FraudSuspected when the customer's payments taken
    (COMPLETED) in the last 24 hours, other orders', plus this ``amount`` pass
    :data:`DAILY_LIMIT`. Read-only: it takes, holds and records nothing, so a repeat is judged
    afresh and there is nothing to compensate.
    """
    async with db.engine.connect() as conn:
        paid = await conn.scalar(
            sa.select(sa.func.coalesce(sa.func.sum(payments.c.amount), 0)).where(
                payments.c.customer_id == cmd.customer_id,
                payments.c.status == "COMPLETED",
                payments.c.created_at >= now() - SCREENING_WINDOW,
                payments.c.order_id != cmd.order_id,
            )
        )
    paid_recently = Decimal(str(paid))
    if paid_recently + cmd.amount > DAILY_LIMIT:
        raise FraudSuspected(
            f"customer {cmd.customer_id} paid {paid_recently} in the last 24 hours; "
            f"{cmd.amount} more passes the daily limit of {DAILY_LIMIT}",
            order_id=cmd.order_id,
            customer_id=cmd.customer_id,
            amount=str(cmd.amount),
            paid_recently=str(paid_recently),
            daily_limit=str(DAILY_LIMIT),
        )
    return OrderScreened(
        order_id=cmd.order_id,
        customer_id=cmd.customer_id,
        amount=cmd.amount,
        paid_recently=paid_recently,
        daily_limit=DAILY_LIMIT,
    )


async def _credit_back(
    conn: AsyncConnection, order_id: str, operation: str, new_status: str
) -> Compensation:
    """Move a COMPLETED payment to ``new_status`` and credit its amount back, exactly once."""
    row = (
        await conn.execute(
            sa.select(payments.c.customer_id, payments.c.amount).where(
                payments.c.order_id == order_id, payments.c.status == "COMPLETED"
            )
        )
    ).one_or_none()
    if row is None:
        return Compensation(order_id=order_id, operation=operation, undone=False)
    moved = await conn.execute(
        payments.update()
        .where(payments.c.order_id == order_id, payments.c.status == "COMPLETED")
        .values(status=new_status, updated_at=now())
    )
    if moved.rowcount != 1:  # pragma: no cover - the inbox key already serialises compensations
        return Compensation(order_id=order_id, operation=operation, undone=False)
    # The credit and its ledger entry, in one round trip.
    await run_together(
        conn,
        [
            (_CREDIT, {"customer": row.customer_id, "amount": row.amount}),
            balance_moved(
                row.customer_id, Decimal(row.amount), order_id=order_id, operation=operation
            ),
        ],
    )
    return Compensation(
        order_id=order_id, operation=operation, undone=True, amount=Decimal(row.amount)
    )


async def _compensate(
    db: Database, cmd: OrderRef, operation: str, new_status: str, emit: Emit | None
) -> Compensation:
    async def effect(conn: AsyncConnection, took_effect: bool) -> Compensation:
        if not took_effect:
            return Compensation(order_id=cmd.order_id, operation=operation, undone=False)
        return await _credit_back(conn, cmd.order_id, operation, new_status)

    return await run_compensation(db, cmd.order_id, operation, "process_payment", effect, emit)


async def cancel_payment(db: Database, cmd: OrderRef, *, emit: Emit | None = None) -> Compensation:
    """Compensate process_payment: the charge is voided (CANCELLED) and the balance restored."""
    return await _compensate(db, cmd, "cancel_payment", "CANCELLED", emit)


async def refund_payment(db: Database, cmd: OrderRef, *, emit: Emit | None = None) -> Compensation:
    """Compensate a captured payment after a later failure: money back (REFUNDED)."""
    return await _compensate(db, cmd, "refund_payment", "REFUNDED", emit)


# The largest balance the column holds (DECIMAL(12, 2)).
MAX_BALANCE = Decimal("9999999999.99")
_TOP_UP = Prepared(
    customers.update()
    .where(
        customers.c.customer_id == sa.bindparam("customer"),
        customers.c.balance <= sa.bindparam("room"),
    )
    .values(balance=customers.c.balance + sa.bindparam("amount"))
)
_BALANCE_OF = Prepared(
    sa.select(customers.c.balance).where(customers.c.customer_id == sa.bindparam("customer"))
)


async def top_up(db: Database, cmd: TopUp, *, emit: Emit | None = None) -> ToppedUp:
    """Add ``amount`` to a customer's balance, once per ``request_id``: the operation that
    brings money in (the ledger records it; ``cloudmart check`` names money that appears any
    other way). CustomerNotFound for an unknown customer; IdempotencyKeyReused when the request
    id was used for another top-up.
    """

    async def effect(conn: AsyncConnection, later: Later) -> ToppedUp:
        # The credit and the read of the balance it leaves, in one round trip.
        added, balance = await run_together(
            conn,
            [
                (
                    _TOP_UP,
                    {
                        "customer": cmd.customer_id,
                        "amount": cmd.amount,
                        "room": MAX_BALANCE - cmd.amount,
                    },
                ),
                (_BALANCE_OF, {"customer": cmd.customer_id}),
            ],
        )
        if not balance.rows:
            raise CustomerNotFound(
                f"customer {cmd.customer_id} does not exist", customer_id=cmd.customer_id
            )
        now_holds = Decimal(str(balance.rows[0][0]))
        if added.matched != 1:
            raise InvalidCommand(
                f"customer {cmd.customer_id}: a balance of {now_holds} leaves no room for "
                f"{cmd.amount}",
                customer_id=cmd.customer_id,
            )
        later.add(
            balance_moved(cmd.customer_id, cmd.amount, order_id=cmd.request_id, operation="top_up")
        )
        return ToppedUp(
            request_id=cmd.request_id,
            customer_id=cmd.customer_id,
            amount=cmd.amount,
            balance=now_holds,
        )

    done = await run_once(db, cmd.request_id, "top_up", ToppedUp, effect, emit)
    if (done.customer_id, done.amount) != (cmd.customer_id, cmd.amount):
        raise IdempotencyKeyReused(
            "this Idempotency-Key was used with a different top-up", request_id=cmd.request_id
        )
    return done


async def get_payment(db: Database, order_id: str) -> PaymentView:
    """The order's payment; NotFound when it has none."""
    async with db.engine.connect() as conn:
        row = (
            await conn.execute(sa.select(payments).where(payments.c.order_id == order_id))
        ).one_or_none()
    if row is None:
        raise NotFound(f"no payment for order {order_id}", order_id=order_id)
    return PaymentView(
        order_id=row.order_id, customer_id=row.customer_id, amount=row.amount, status=row.status
    )
