"""The inventory service's REST API: reserve and release stock, read a book's stock."""

from __future__ import annotations

from fastapi import APIRouter

from activities import get_stock, release_stock, reserve_stock
from activities.errors import (
    AlreadyCompensated,
    BookNotFound,
    OrderNotFound,
    ReservationShipped,
    StockUnavailable,
)
from contracts.commands import Compensation, OrderRef, ReserveStock, StockReservation, StockView
from services._kit import BookIdPath, DatabaseDep, error_responses

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


@router.get(
    "/{book_id}",
    response_model=StockView,
    responses=error_responses(BookNotFound),
    summary="A book's available and reserved units",
)
async def read_stock(book_id: BookIdPath, db: DatabaseDep) -> StockView:
    return await get_stock(db, book_id)
