"""The engine's observer, as the orchestrator wires it: the order saga on the in-memory engine
moves the Prometheus counters of what happened, and only those; commands carry the order id."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from durable_engine.engine_unit_kit import order
from prometheus_client import CollectorRegistry

import services._kit.logging as kit_logging
from contracts.examples import ORDER_STEPS, order_replies
from engine import Engine
from engine.adapters import InMemoryHistoryStore
from engine.adapters.memory_transport import Fault, current_request
from engine.clock import FakeClock
from engine.observer import NO_FAILED_STEP, NullObserver, SagaObserver
from engine.testing import FakeServices, run_until_idle
from orchestration_pattern.metrics import PrometheusSagaObserver
from services._kit import Settings, configure_logging
from services._kit.app import LATENCY_BUCKETS
from workflows.order_saga import place_order

WORKFLOW = "place_order"


class Rig:
    def __init__(self, services: FakeServices, **engine_kwargs: Any) -> None:
        self.registry = CollectorRegistry()
        self.observer = PrometheusSagaObserver(self.registry, buckets=LATENCY_BUCKETS)
        clock = FakeClock()
        self.services = services
        self.transport = services.transport(clock)
        self.engine = Engine(
            InMemoryHistoryStore(),
            self.transport,
            clock=clock,
            owner_id="metrics-unit",
            observer=self.observer,
            **engine_kwargs,
        )
        self.observer.track_running(lambda: self.engine.running, lambda: self.engine.waiting)

    def value(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    async def run(self, order_id: str) -> str:
        await self.engine.start(place_order, order(order_id), workflow_id=order_id)
        await run_until_idle(self.engine)
        return (await self.engine.status(order_id)).status


def services(**changes: Any) -> FakeServices:
    return FakeServices(dict(ORDER_STEPS), reply=dict(order_replies("12.50")), **changes)


def test_the_prometheus_observer_and_the_null_observer_fit_the_protocol() -> None:
    observers: list[SagaObserver] = [
        NullObserver(),
        PrometheusSagaObserver(CollectorRegistry(), buckets=LATENCY_BUCKETS),
    ]
    for observer in observers:
        observer.saga_started(WORKFLOW)
        observer.saga_finished(WORKFLOW, "COMPLETED", NO_FAILED_STEP)
    assert isinstance(Engine(InMemoryHistoryStore(), services().transport()).observer, NullObserver)


async def test_a_completed_saga_counts_one_start_one_completion_and_every_step_once() -> None:
    rig = Rig(services())

    assert await rig.run("o-ok") == "COMPLETED"

    assert rig.value("cloudmart_saga_started_total", workflow=WORKFLOW) == 1
    finished = {"workflow": WORKFLOW, "status": "COMPLETED", "failed_step": "none"}
    assert rig.value("cloudmart_saga_finished_total", **finished) == 1
    for step in ORDER_STEPS:
        assert rig.value("cloudmart_step_attempts_total", step=step, outcome="completed") == 1
        assert rig.value("cloudmart_step_duration_seconds_count", step=step) == 1
    assert rig.value("cloudmart_sagas_running") == 0
    compensations = [
        s for m in rig.registry.collect() if m.name == "cloudmart_compensations" for s in m.samples
    ]
    assert compensations == []


async def test_a_saga_refused_at_payment_counts_the_failed_step_and_its_compensations() -> None:
    rig = Rig(services(refuse={"payment.process_payment"}))

    assert await rig.run("o-broke") == "FAILED"

    labels = {"workflow": WORKFLOW, "status": "FAILED", "failed_step": "payment.process_payment"}
    assert rig.value("cloudmart_saga_finished_total", **labels) == 1
    assert (
        rig.value(
            "cloudmart_saga_finished_total",
            workflow=WORKFLOW,
            status="COMPLETED",
            failed_step="none",
        )
        == 0
    )
    payment = "payment.process_payment"
    assert rig.value("cloudmart_step_attempts_total", step=payment, outcome="refused") == 1
    assert rig.value("cloudmart_step_attempts_total", step=payment, outcome="completed") == 0
    assert rig.value("cloudmart_step_duration_seconds_count", step="shipping.arrange_shipping") == 0
    for comp in ("inventory.release_stock", "order.cancel_order"):
        assert rig.value("cloudmart_compensations_total", step=comp, outcome="completed") == 1
    # The refused payment never took effect: it is not compensated.
    assert (
        rig.value(
            "cloudmart_compensations_total", step="payment.cancel_payment", outcome="completed"
        )
        == 0
    )


async def test_transport_errors_and_timeouts_count_as_attempts_of_their_step() -> None:
    rig = Rig(services())
    rig.transport.inject("inventory.reserve_stock", Fault("transient"))
    rig.transport.inject("inventory.reserve_stock", Fault("drop_reply"))

    assert await rig.run("o-flaky") == "COMPLETED"

    step = "inventory.reserve_stock"
    assert rig.value("cloudmart_step_attempts_total", step=step, outcome="transport_error") == 1
    assert rig.value("cloudmart_step_attempts_total", step=step, outcome="timed_out") == 1
    assert rig.value("cloudmart_step_attempts_total", step=step, outcome="completed") == 1
    assert rig.value("cloudmart_step_duration_seconds_count", step=step) == 3


async def test_a_compensation_that_keeps_failing_flags_the_saga_for_an_operator() -> None:
    rig = Rig(
        services(refuse={"shipping.arrange_shipping"}, comp_failures={"payment.cancel_payment": 3}),
        compensation_alert_attempts=2,
    )

    assert await rig.run("o-stuck") == "FAILED"

    comp = "payment.cancel_payment"
    assert rig.value("cloudmart_compensations_total", step=comp, outcome="failed") == 3
    assert rig.value("cloudmart_compensations_total", step=comp, outcome="completed") == 1
    assert rig.value("cloudmart_operator_alerts_total", workflow=WORKFLOW) == 1
    labels = {"workflow": WORKFLOW, "status": "FAILED", "failed_step": "shipping.arrange_shipping"}
    assert rig.value("cloudmart_saga_finished_total", **labels) == 1


async def test_a_cancelled_saga_finishes_failed_with_no_failed_step() -> None:
    rig = Rig(services())
    await rig.engine.start(place_order, order("o-cancel"), workflow_id="o-cancel")
    await rig.engine.cancel("o-cancel")
    await run_until_idle(rig.engine)

    labels = {"workflow": WORKFLOW, "status": "FAILED", "failed_step": NO_FAILED_STEP}
    assert rig.value("cloudmart_saga_finished_total", **labels) == 1


async def test_a_resumed_saga_counts_as_resumed_not_started() -> None:
    rig = Rig(services())
    await rig.engine.start(place_order, order("o-resume"), workflow_id="o-resume")
    await rig.engine.stop()  # the process stops before the saga ran: it is left unfinished
    registry = CollectorRegistry()
    engine = Engine(
        rig.engine.store,
        rig.transport,
        clock=rig.engine.clock,
        owner_id="metrics-unit-2",
        workflows=[place_order],
        observer=PrometheusSagaObserver(registry, buckets=LATENCY_BUCKETS),
    )

    await run_until_idle(engine)

    def value(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    assert value("cloudmart_saga_resumed_total", workflow=WORKFLOW) == 1
    assert value("cloudmart_saga_started_total", workflow=WORKFLOW) == 0
    labels = {"workflow": WORKFLOW, "status": "COMPLETED", "failed_step": "none"}
    assert value("cloudmart_saga_finished_total", **labels) == 1


async def test_every_command_and_compensation_carries_the_order_and_saga_ids() -> None:
    seen: list[dict[str, str]] = []
    fake = services(refuse={"shipping.arrange_shipping"})
    rig = Rig(fake)
    for target, handler in list(rig.transport._handlers.items()):

        async def recording(payload: dict[str, Any], _handler: Any = handler) -> dict[str, Any]:
            info = current_request()
            assert info is not None
            seen.append(dict(info.headers))
            result: dict[str, Any] = await _handler(payload)
            return result

        rig.transport._handlers[target] = recording

    await rig.run("o-headers")
    saga_id = (await rig.engine.status("o-headers")).saga_id

    assert len(seen) == 4 + 3  # four forward steps, three compensations
    assert {h["order_id"] for h in seen} == {"o-headers"}
    assert {h["saga_id"] for h in seen} == {saga_id}
    assert [h["step"] for h in seen][-3:] == [
        "payment.cancel_payment",
        "inventory.release_stock",
        "order.cancel_order",
    ]


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """Every log line of the test, as JSON lines (the prod renderer)."""
    kit_logging._configured_as = None
    configure_logging(Settings(_env_file=None, log_json=True))  # type: ignore[call-arg]
    (handler,) = [h for h in logging.getLogger().handlers if getattr(h, "_cloudmart", False)]
    assert isinstance(handler, logging.StreamHandler)
    stream = io.StringIO()
    previous = handler.setStream(stream)
    try:
        yield stream
    finally:
        handler.setStream(previous)
        kit_logging._configured_as = None


async def test_the_log_lines_of_a_saga_and_of_its_handlers_carry_its_order_and_saga_ids(
    json_log: io.StringIO,
) -> None:
    fake = services(refuse={"payment.process_payment"})
    rig = Rig(fake)
    handler = rig.transport._handlers["inventory.reserve_stock"]

    async def logging_handler(payload: dict[str, Any]) -> dict[str, Any]:
        structlog.get_logger("test.service").info("service.reserving")
        result: dict[str, Any] = await handler(payload)
        return result

    rig.transport._handlers["inventory.reserve_stock"] = logging_handler

    await rig.run("o-logged")
    saga_id = (await rig.engine.status("o-logged")).saga_id

    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    ours = [line for line in lines if line.get("logger") in ("engine", "test.service")]
    events = {line["event"] for line in ours}
    assert {"service.reserving", "step.failed", "compensation.completed", "saga.failed"} <= events
    assert all(line.get("order_id") == "o-logged" for line in ours)
    assert all(line.get("saga_id") == saga_id for line in ours)
