"""The payment service's REST API: take, cancel and refund an order's payment; top up a balance."""

from __future__ import annotations

from fastapi import APIRouter

from activities import (
    cancel_payment,
    get_payment,
    process_payment,
    refund_payment,
    request_id_for,
    top_up,
)
from activities.errors import (
    AlreadyCompensated,
    CustomerNotFound,
    NotFound,
    OrderNotFound,
    PaymentFailed,
)
from contracts.commands import (
    Compensation,
    OrderRef,
    PaymentView,
    ProcessPayment,
    ToppedUp,
    TopUp,
    TopUpBody,
)
from services._kit import (
    DatabaseDep,
    IdempotencyKeyHeader,
    OrderIdPath,
    error_responses,
    ledger_operation,
)

router = APIRouter(prefix="/payments", tags=["payments"])


@router.post(
    "/process",
    response_model=PaymentView,
    responses=error_responses(OrderNotFound, CustomerNotFound, PaymentFailed, AlreadyCompensated),
    summary="Debit the customer's balance (402 PaymentFailed when it is short)",
)
async def process(body: ProcessPayment, db: DatabaseDep) -> PaymentView:
    return await process_payment(db, body)


@router.post(
    "/cancel",
    response_model=Compensation,
    summary="Void an order's payment and credit the balance back (once)",
)
async def cancel(body: OrderRef, db: DatabaseDep) -> Compensation:
    return await cancel_payment(db, body)


@router.post(
    "/refund",
    response_model=Compensation,
    summary="Refund an order's captured payment (once)",
)
async def refund(body: OrderRef, db: DatabaseDep) -> Compensation:
    return await refund_payment(db, body)


@router.post(
    "/top-up",
    response_model=ToppedUp,
    summary="Add money to a customer's balance (once per Idempotency-Key)",
    **ledger_operation("money", CustomerNotFound),
)
async def top_up_balance(
    body: TopUpBody, db: DatabaseDep, idempotency_key: IdempotencyKeyHeader = None
) -> ToppedUp:
    command = TopUp(request_id=request_id_for("top-up", idempotency_key), **body.model_dump())
    return await top_up(db, command)


@router.get(
    "/{order_id}",
    response_model=PaymentView,
    responses=error_responses(NotFound),
    summary="An order's payment",
)
async def read_payment(order_id: OrderIdPath, db: DatabaseDep) -> PaymentView:
    return await get_payment(db, order_id)
