"""The inventory service's REST API: reserve and release stock, restock a book, read its stock."""

from __future__ import annotations

from fastapi import APIRouter

from activities import get_stock, release_stock, request_id_for, reserve_stock, restock
from activities.errors import (
    AlreadyCompensated,
    BookNotFound,
    OrderNotFound,
    ReservationShipped,
    StockUnavailable,
)
from contracts.commands import (
    Compensation,
    OrderRef,
    ReserveStock,
    Restock,
    RestockBody,
    Restocked,
    StockReservation,
    StockView,
)
from services._kit import (
    BookIdPath,
    DatabaseDep,
    IdempotencyKeyHeader,
    error_responses,
    ledger_operation,
)

router = APIRouter(prefix="/inventory", tags=["inventory"])


@router.post(
    "/reserve",
    response_model=StockReservation,
    responses=error_responses(OrderNotFound, BookNotFound, StockUnavailable, AlreadyCompensated),
    summary="Reserve every item of an order, or none (409 StockUnavailable)",
)
async def reserve(body: ReserveStock, db: DatabaseDep) -> StockReservation:
    return await reserve_stock(db, body)


@router.post(
    "/release",
    response_model=Compensation,
    responses=error_responses(ReservationShipped),
    summary="Put an order's reserved units back (once; a no-op when nothing is reserved)",
)
async def release(body: OrderRef, db: DatabaseDep) -> Compensation:
    return await release_stock(db, body)


@router.post(
    "/{book_id}/restock",
    response_model=Restocked,
    summary="Add units to a book's available stock (once per Idempotency-Key)",
    **ledger_operation("stock", BookNotFound),
)
async def restock_book(
    book_id: BookIdPath,
    body: RestockBody,
    db: DatabaseDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Restocked:
    command = Restock(
        request_id=request_id_for("restock", idempotency_key),
        book_id=book_id,
        quantity=body.quantity,
    )
    return await restock(db, command)


@router.get(
    "/{book_id}",
    response_model=StockView,
    responses=error_responses(BookNotFound),
    summary="A book's available and reserved units",
)
async def read_stock(book_id: BookIdPath, db: DatabaseDep) -> StockView:
    return await get_stock(db, book_id)
