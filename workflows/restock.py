"""A second, small saga: restock a book from a supplier (the README's "Write your own saga").

Two operations of its own, declared the way :mod:`contracts.catalogue` declares the order's:
buy the books from the supplier (undone by cancelling the purchase), then receive them into
stock. No CloudMart service answers them; the tests run it against fake services, and a
deployment would bind them in its services as :mod:`activities.registry` binds the order's.
"""

from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel, Field

from contracts.catalogue import Operation
from engine import RetryPolicy, WorkflowContext, workflow

__all__ = ["CANCEL_PURCHASE", "PURCHASE_BOOKS", "RECEIVE_BOOKS", "Restock", "restock"]


class Restock(BaseModel):
    restock_id: str
    book_id: int = Field(ge=1)
    quantity: int = Field(ge=1)
    supplier: str


class RestockRef(BaseModel):
    restock_id: str


class Purchase(BaseModel):
    restock_id: str
    cost: Decimal


class Received(BaseModel):
    restock_id: str
    book_id: int
    available: int


class Cancelled(BaseModel):
    restock_id: str
    undone: bool


CANCEL_PURCHASE = Operation("supplier.cancel_purchase", RestockRef, Cancelled)
PURCHASE_BOOKS = Operation(
    "supplier.purchase_books", Restock, Purchase, CANCEL_PURCHASE, milestone="PURCHASED"
)
RECEIVE_BOOKS = Operation("inventory.receive_books", Restock, Received, milestone="RECEIVED")

SUPPLIER_RETRY = RetryPolicy(initial_interval=0.5, max_attempts=3)


@workflow(name="restock")
async def restock(ctx: WorkflowContext, command: Restock) -> Received:
    """Buy ``quantity`` of ``book_id`` from ``supplier``, then take them into stock; if the
    stock refuses them, the purchase is cancelled."""
    await ctx.step(PURCHASE_BOOKS, command, retry=SUPPLIER_RETRY)
    return await ctx.step(RECEIVE_BOOKS, command)
