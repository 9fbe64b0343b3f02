"""Record the corpus of order-saga histories that CI replays against today's code.

``python tests/unit/durable_engine/record_corpus.py [SCENARIO ...]`` (from the project's root)
writes one history file per scenario (all of them, or those named) into ``corpus/``, run on the
in-memory engine with the fake services. Re-record only on purpose: the files are what sagas in
flight look like to the next deploy, and ``test_engine_corpus.py`` fails when today's code can
no longer replay one. Record a new scenario by naming it, so the others stay as they were
recorded (the order saga's v1 recorded all but the ``V2`` ones).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[2]))  # tests/, as pytest has it

from engine_unit_kit import CrashAfter, order, rig

from contracts import catalogue as ops
from contracts.commands import CreateOrder, OrderPlaced, ProcessPayment
from engine import WorkflowContext, workflow
from engine.adapters.memory_transport import Fault
from engine.replay import history_file
from engine.testing import run_until_idle
from workflows import place_order, place_order_declarative

CORPUS = Path(__file__).parent / "corpus"


@workflow(name="place_order")
async def place_order_changed(ctx: WorkflowContext, order: CreateOrder) -> OrderPlaced:
    """A deploy gone wrong: stock is no longer reserved before payment (it parks the saga)."""
    created = await ctx.step(ops.CREATE_ORDER, order)
    await ctx.step(
        ops.PROCESS_PAYMENT,
        ProcessPayment(
            order_id=order.order_id, customer_id=order.customer_id, amount=created.total_amount
        ),
    )
    raise AssertionError("never reached: the history diverges at position 1")


# Recorded by the order saga's v2: an order large enough to be screened for fraud.
V2 = ("screened", "fraud_refused")


async def scenario(name: str) -> dict[str, Any]:
    r = rig(
        crash=CrashAfter(3) if name in ("crash_recovered", "parked_then_resumed") else None,
        total="12000.00" if name in V2 else "12.50",
    )
    definition = place_order_declarative if name == "declarative" else place_order
    refused = {
        "stock_refused": "inventory.reserve_stock",
        "payment_refused": "payment.process_payment",
        "shipping_refused": "shipping.arrange_shipping",
        "fraud_refused": "payment.screen_order",
    }
    if name in refused:
        r.services.refuse.add(refused[name])
    if name == "retried":
        r.transport.inject("payment.process_payment", Fault("transient", times=2))
        r.transport.inject("order.complete_order", Fault("drop_reply", times=1))
    if name == "cancelled":  # while the payment is being taken
        pay = r.transport._handlers["payment.process_payment"]

        async def cancelled_meanwhile(payload: dict[str, Any]) -> dict[str, Any]:
            await r.engine.cancel(f"corpus-{name}")
            return await pay(payload)

        r.transport._handlers["payment.process_payment"] = cancelled_meanwhile
    await r.engine.start(definition, order(f"corpus-{name}"), workflow_id=f"corpus-{name}")
    await run_until_idle(r.engine, recover=name not in ("crash_recovered", "parked_then_resumed"))
    driver = r.engine
    if name == "crash_recovered":
        r.clock.advance(60)
        driver = r.new_engine("successor", workflows=[place_order])
        await run_until_idle(driver)
    if name == "parked_then_resumed":
        r.clock.advance(60)
        await run_until_idle(r.new_engine("bad-deploy", workflows=[place_order_changed]))
        driver = r.new_engine("fixed-deploy", workflows=[place_order])
        await driver.resume(f"corpus-{name}", reason="place_order redeployed")
        await run_until_idle(driver)
    return history_file(f"corpus-{name}", await driver.history(f"corpus-{name}"))


SCENARIOS = (
    "completed",
    "declarative",
    "stock_refused",
    "payment_refused",
    "shipping_refused",
    "cancelled",
    "retried",
    "crash_recovered",
    "parked_then_resumed",
    *V2,
)


async def main(
    record: Callable[[str], Awaitable[dict[str, Any]]] = scenario,
    names: Sequence[str] = SCENARIOS,
) -> None:
    unknown = set(names) - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"no scenario named {', '.join(sorted(unknown))}")
    CORPUS.mkdir(exist_ok=True)
    for name in names:
        data = await record(name)
        (CORPUS / f"{name}.json").write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        print(f"{name}: {len(data['events'])} events")


if __name__ == "__main__":
    asyncio.run(main(names=sys.argv[1:] or SCENARIOS))
