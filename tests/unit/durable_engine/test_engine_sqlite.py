"""The engine on the SQL store over SQLite with a one-connection pool (embedded mode)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine_unit_kit import ORDER_STEPS, order
from sqlalchemy.ext.asyncio import create_async_engine

from contracts.examples import order_replies
from engine import Engine
from engine.adapters import SqlHistoryStore
from engine.adapters.memory_transport import current_request
from engine.testing import BusinessError, FakeServices, run_until_idle
from workflows import place_order


async def test_many_sagas_share_one_sqlite_connection_without_deadlock(tmp_path: Path) -> None:
    db = create_async_engine(
        f"sqlite+aiosqlite:///{tmp_path / 'embedded.db'}", pool_size=1, max_overflow=0
    )
    try:
        store = SqlHistoryStore(db)
        await store.create_tables()
        services = FakeServices(dict(ORDER_STEPS), reply=dict(order_replies("3.00")))
        transport = services.transport()
        engine = Engine(store, transport, owner_id="embedded")
        arrange = transport._handlers["shipping.arrange_shipping"]

        async def ship(payload: dict[str, Any]) -> dict[str, Any]:
            info = current_request()
            assert info is not None
            if info.headers["workflow_id"].endswith("7"):
                raise BusinessError("country not served")
            return await arrange(payload)

        transport._handlers["shipping.arrange_shipping"] = ship
        for n in range(20):
            await engine.start(place_order, order(f"o-{n}"), workflow_id=f"o-{n}")
        await run_until_idle(engine)
        statuses = {s.workflow_id: s.status for s in (await engine.list(limit=50)).sagas}
        assert statuses == {f"o-{n}": "FAILED" if n in (7, 17) else "COMPLETED" for n in range(20)}
        assert store.commits < store.writes  # appends of concurrent sagas were grouped
        # completed: start + one per step + finish; failed at step 4: start, 4 steps, 3
        # compensations, finish (the failure and the first compensation share a commit)
        assert store.writes == 18 * 7 + 2 * 9
    finally:
        await db.dispose()
