"""The mix: which share of the orders fails at which step, and the order bodies that make them
fail there (SPEC §4)."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Catalogue:
    """The customers and books a bench's orders name: one rich customer and ten well-stocked
    books that every saga can complete with, one customer with nothing, one book out of
    stock (:mod:`cloudmart.bench.catalogue` adds them)."""

    label: str
    customer: int
    broke_customer: int
    books: tuple[int, ...]
    sold_out_book: int


BENCH = Catalogue("Bench", 900_001, 900_002, tuple(range(900_001, 900_011)), 900_011)
"""The live run's catalogue."""
HISTORY = Catalogue("History", 910_001, 910_002, tuple(range(910_001, 910_011)), 910_011)
"""The preloaded sagas' own (:mod:`cloudmart.bench.preload`), so a history never moves the
balance or the stock the live run reads."""

BENCH_CUSTOMER = BENCH.customer
BROKE_CUSTOMER = BENCH.broke_customer
BENCH_BOOKS = list(BENCH.books)
SOLD_OUT_BOOK = BENCH.sold_out_book
ADDRESS = {
    "name": "Bench",
    "line1": "1-1",
    "city": "Tokyo",
    "postal_code": "100-0001",
    "country": "JP",
}
FAILURES = ("stock", "payment", "shipping")
"""The steps a ``mix`` can make an order fail at, in saga order."""


def parse_mix(text: str | None) -> dict[str, float]:
    """``"stock=0.1,payment=0.1"`` → ``{"stock": 0.1, "payment": 0.1}``.

    Raises ValueError for an unknown step, a share outside [0, 1] or shares summing above 1.
    """
    mix: dict[str, float] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in FAILURES:
            raise ValueError(f"mix entries are STEP=SHARE with STEP in {', '.join(FAILURES)}")
        share = float(value)
        if not 0 <= share <= 1:
            raise ValueError(f"the share of {name} must be between 0 and 1, not {share}")
        mix[name] = share
    if sum(mix.values()) > 1 + 1e-9:
        raise ValueError("the shares of the mix add up to more than 1")
    return mix


def plan(sagas: int, mix: Mapping[str, float]) -> list[str]:
    """What each saga is meant to do, ``"ok"`` or the step it fails at: ``round(share ×
    sagas)`` of each failure, spread over the run in a fixed pseudo-random order."""
    kinds: list[str] = []
    for name in FAILURES:
        kinds += [name] * round(mix.get(name, 0.0) * sagas)
    kinds = kinds[:sagas]
    kinds += ["ok"] * (sagas - len(kinds))
    random.Random(sagas).shuffle(kinds)
    return kinds


def order_body(i: int, kind: str, catalogue: Catalogue = BENCH) -> dict[str, Any]:
    """The order body of saga ``i`` meant to end as ``kind`` (see :func:`plan`)."""
    shelf = catalogue.books
    book = catalogue.sold_out_book if kind == "stock" else shelf[i % len(shelf)]
    return {
        "customer_id": catalogue.broke_customer if kind == "payment" else catalogue.customer,
        "items": [{"book_id": book, "quantity": 1}],
        "shipping_address": {**ADDRESS, "country": "US" if kind == "shipping" else "JP"},
    }
