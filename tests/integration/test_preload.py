"""``cloudmart bench --preload N`` on a real deployment (MariaDB, RabbitMQ or Redis): N finished
sagas written in bulk, whole (every row ``cloudmart check`` reads agrees over the whole
database), under ids a run that follows does not collide with, and a second preload adds to
the first."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from processes import Deployment, deployed
from shop import sync_engine

from cloudmart.bench.mix import HISTORY

pytestmark = [pytest.mark.mysql, pytest.mark.rabbitmq, pytest.mark.redis, pytest.mark.slow]

PORTS = {"orchestration": 31400, "choreography": 31500}
MIX = "stock=0.1,payment=0.1,shipping=0.1"
RICH = 9_999_999_999  # what the seed fills the history's customer up to


def _bench(system: Deployment, pattern: str, out: Path) -> dict[str, Any]:
    entry = "orchestrator" if pattern == "orchestration" else "order"
    system.cli(
        "bench", "--url", system.url(entry), "--pattern", pattern, "--sagas", "12",
        "--concurrency", "4", "--mix", MIX, "--preload", "300", "--out", str(out),
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def _counts(engine: sa.Engine) -> dict[str, Any]:
    with engine.connect() as conn:

        def one(sql: str) -> Any:
            return conn.execute(sa.text(sql)).scalar()

        history = f"customer_id = {HISTORY.customer}"
        return {
            "orders": dict(
                conn.execute(sa.text("SELECT status, COUNT(*) FROM orders GROUP BY status")).all()
            ),
            "sagas": one("SELECT COUNT(*) FROM saga_instances"),
            "sagas with history": one("SELECT COUNT(DISTINCT saga_id) FROM saga_step_logs"),
            "paid": one(f"SELECT COUNT(*) FROM payments WHERE status = 'COMPLETED' AND {history}"),
            "shipped": one(
                "SELECT COUNT(*) FROM shipments s JOIN orders o ON o.order_id = s.order_id "
                f"WHERE s.status = 'ARRANGED' AND o.{history}"
            ),
            "consumed": one(
                "SELECT COUNT(*) FROM stock_reservations WHERE status = 'CONSUMED' "
                f"AND book_id BETWEEN {HISTORY.books[0]} AND {HISTORY.books[-1]}"
            ),
            "balance": one(f"SELECT balance FROM customers WHERE {history}"),
            "unpublished": one(
                "SELECT COUNT(*) FROM outbox x JOIN orders o ON o.order_id = x.order_id "
                f"WHERE x.published_at IS NULL AND o.{history}"
            ),
        }


@pytest.mark.parametrize("pattern", ["orchestration", "choreography"])
def test_a_preload_writes_whole_sagas_that_every_invariant_holds_over(
    pattern: str, tmp_path: Path
) -> None:
    with deployed(
        pattern, f"cloudmart_test_preload_{pattern}", tmp_path, base_port=PORTS[pattern]
    ) as system:
        engine = sync_engine(system.database_url)
        try:
            first = _bench(system, pattern, tmp_path / "first.json")
            # 300 copies in the mix's shares (30 of each failure), of 3 templates of each kind,
            # then the run's 12 (9 completing): all of them ended as meant, and checked.
            assert first["preload"]["sagas"] == 300 and first["preload"]["templates"] == 12
            assert first["preload"]["copy_seconds"] > 0
            assert (first["completed"], first["failed"], first["errors"]) == (9, 3, 0)
            assert first["unexpected"] == 0 and first["check"]["ok"] is True
            held = _counts(engine)
            assert held["orders"] == {"COMPLETED": 210 + 3 + 9, "CANCELLED": 90 + 9 + 3}
            orchestrated = 324 if pattern == "orchestration" else 0
            assert held["sagas"] == held["sagas with history"] == orchestrated
            # Every completed copy was paid from the history's customer and shipped from its
            # books, and the customer's balance is what the seed gave less what they paid.
            assert held["paid"] == held["shipped"] == held["consumed"] == 210 + 3
            assert held["balance"] == RICH - 213
            assert held["unpublished"] == 0  # a copy's events are never relayed
            done = system.cli("check")  # the whole database, not the run's orders
            assert "every invariant holds" in done.stdout

            second = _bench(system, pattern, tmp_path / "second.json")
            assert (second["completed"], second["errors"]) == (9, 0)
            assert second["check"]["ok"] is True
            again = _counts(engine)
            assert again["orders"] == {"COMPLETED": 2 * 222, "CANCELLED": 2 * 102}
            assert again["sagas"] == again["sagas with history"] == 2 * orchestrated
            # The seed filled the balance up again before the second preload's templates.
            assert again["balance"] == RICH - 213
            assert "every invariant holds" in system.cli("check").stdout
        finally:
            engine.dispose()
