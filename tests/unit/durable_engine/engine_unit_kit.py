"""Shared builders for the engine unit tests (in-memory store and transport, fake clock)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from contracts import catalogue as ops
from contracts.examples import ADDRESS, ORDER_STEPS, order_replies
from engine import Engine
from engine.adapters import InMemoryHistoryStore, InMemoryTransport
from engine.clock import FakeClock
from engine.errors import StoreUnavailable
from engine.history import Event
from engine.testing import FakeServices

FORWARD = list(ORDER_STEPS)
# The services a rig answers for: the order saga's, and the screening of a large order.
SERVED = {**ORDER_STEPS, ops.SCREEN_ORDER.name: None}


def order(order_id: str = "o-1", **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "order_id": order_id,
        "customer_id": 1,
        "items": [{"book_id": 1, "quantity": 2}],
        "shipping_address": ADDRESS.model_dump(exclude_none=True),
    }
    data.update(changes)
    return data


@dataclasses.dataclass
class Rig:
    clock: FakeClock
    store: InMemoryHistoryStore
    services: FakeServices
    transport: InMemoryTransport
    engine: Engine
    projections: list[tuple[str, str, bool]]  # (workflow-less saga_id, status, needs_operator)

    def statuses(self, saga_id: str) -> list[str]:
        seen: list[str] = []
        for sid, status, _ in self.projections:
            if sid == saga_id and (not seen or seen[-1] != status):
                seen.append(status)
        return seen

    def new_engine(self, owner_id: str, **kwargs: Any) -> Engine:
        return Engine(self.store, self.transport, clock=self.clock, owner_id=owner_id, **kwargs)


class CrashAfter:
    """Raise StoreUnavailable right after the n-th successful commit (the write is durable)."""

    def __init__(self, n: int | None) -> None:
        self.n = n
        self.count = 0
        self.crashed = False

    def __call__(self, saga_id: str, events: Sequence[Event]) -> None:
        self.count += 1
        if self.n is not None and self.count == self.n:
            self.crashed = True
            raise StoreUnavailable("simulated crash after commit")


def rig(
    *,
    steps: dict[str, str | None] | None = None,
    crash: CrashAfter | None = None,
    total: str = "12.50",
    **engine_kwargs: Any,
) -> Rig:
    """An engine on the memory store and fake services whose orders come to ``total``."""
    clock = FakeClock()
    services = FakeServices(dict(steps or SERVED), reply=dict(order_replies(total)))
    projections: list[tuple[str, str, bool]] = []
    store = InMemoryHistoryStore()

    def after_commit(saga_id: str, events: Sequence[Event]) -> None:
        row = store._rows[saga_id]
        projections.append((saga_id, row.status, row.needs_operator))
        if crash is not None:
            crash(saga_id, events)

    store.after_commit = after_commit
    transport = services.transport(clock)
    engine_kwargs.setdefault("owner_id", "unit-a")
    engine = Engine(store, transport, clock=clock, **engine_kwargs)
    return Rig(clock, store, services, transport, engine, projections)
