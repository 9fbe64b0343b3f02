"""The console's two lanes, drawn from the recorded order-saga histories of the replay corpus
(``tests/unit/durable_engine/corpus``): forward steps in order, compensations in the order they
ran, each in its step's column, and the pivot marked once it was passed."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from engine.replay import read_history_file
from services.orchestrator.console_lanes import Lanes, lanes

CORPUS = Path(__file__).parent / "durable_engine" / "corpus"


def drawn(name: str) -> Lanes:
    _workflow_id, events = read_history_file(json.loads((CORPUS / f"{name}.json").read_text()))
    return lanes(events)


def test_a_completed_saga_has_no_compensation_lane_and_its_pivot_is_marked() -> None:
    saga = drawn("completed")
    assert [b.name for b in saga.forward] == [
        "order.create_order",
        "inventory.reserve_stock",
        "payment.process_payment",
        "shipping.arrange_shipping",
        "order.complete_order",
    ]
    assert {b.state for b in saga.forward} == {"COMPLETED"}
    assert [b.name for b in saga.forward if b.pivot] == ["shipping.arrange_shipping"]
    assert saga.compensations == ()


@pytest.mark.parametrize(
    ("name", "failed", "undone"),
    [
        ("stock_refused", "inventory.reserve_stock", ["order.cancel_order"]),
        (
            "payment_refused",
            "payment.process_payment",
            ["inventory.release_stock", "order.cancel_order"],
        ),
        (
            "shipping_refused",
            "shipping.arrange_shipping",
            ["payment.cancel_payment", "inventory.release_stock", "order.cancel_order"],
        ),
    ],
)
def test_a_refused_step_fails_and_its_predecessors_are_compensated_right_to_left(
    name: str, failed: str, undone: list[str]
) -> None:
    saga = drawn(name)
    last = saga.forward[-1]
    assert (last.name, last.state) == (failed, "FAILED") and last.last_error
    assert [b.name for b in saga.compensations] == undone
    assert {b.state for b in saga.compensations} == {"COMPENSATED"}
    columns = [b.column for b in saga.compensations]
    assert columns == sorted(columns, reverse=True)  # each beneath its step, right to left
    for box in saga.compensations:
        assert saga.forward[box.column - 1].name == box.undoes


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.json")), ids=lambda p: p.stem)
def test_every_recorded_history_draws_one_box_per_step_and_per_compensation_begun(
    path: Path,
) -> None:
    _workflow_id, events = read_history_file(json.loads(path.read_text()))
    saga = lanes(events)
    scheduled = [e.step for e in events if e.type == "StepScheduled"]
    begun = [e.step for e in events if e.type == "CompensationScheduled"]
    assert [b.name for b in saga.forward] == list(dict.fromkeys(scheduled))
    assert [b.name for b in saga.compensations if b.state != "PENDING"] == begun


def test_the_pivot_is_marked_from_its_scheduled_step_even_when_it_is_refused() -> None:
    # A history written now says which step is the pivot; shipping_refused was recorded before.
    _workflow_id, events = read_history_file(
        json.loads((CORPUS / "shipping_refused.json").read_text())
    )
    assert not [b for b in lanes(events).forward if b.pivot]  # nothing passed it: no mark
    marked = [
        dataclasses.replace(e, payload={**e.payload, "pivot": True})
        if e.type == "StepScheduled" and e.step == "shipping.arrange_shipping"
        else e
        for e in events
    ]
    assert [b.name for b in lanes(marked).forward if b.pivot] == ["shipping.arrange_shipping"]
