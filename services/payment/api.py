"""The payment service's REST API: take, cancel and refund an order's payment."""

from __future__ import annotations

from fastapi import APIRouter

from activities import cancel_payment, get_payment, process_payment, refund_payment
from activities.errors import (
    AlreadyCompensated,
    CustomerNotFound,
    NotFound,
    OrderNotFound,
    PaymentFailed,
)
from contracts.commands import Compensation, OrderRef, PaymentView, ProcessPayment
from services._kit import DatabaseDep, OrderIdPath, error_responses

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


@router.get(
    "/{order_id}",
    response_model=PaymentView,
    responses=error_responses(NotFound),
    summary="An order's payment",
)
async def read_payment(order_id: OrderIdPath, db: DatabaseDep) -> PaymentView:
    return await get_payment(db, order_id)
